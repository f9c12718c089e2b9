#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, slow multi-process tests included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. tools/setup.sh
exec python -m pytest -q -ra "$@"

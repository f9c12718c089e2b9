#!/usr/bin/env bash
# Regenerate docs/demo.png: the browser test of `tatk demo` (tests/test_web_demo.py) keeps the screenshot it
# takes after transcribing a clip with the tiny trained fixture model (~2 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. tools/setup.sh
TATK_DEMO_SCREENSHOT="$PWD/docs/demo.png" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
    python -m pytest -q -x tests/test_web_demo.py -k test_demo_in_browser
echo "wrote docs/demo.png"

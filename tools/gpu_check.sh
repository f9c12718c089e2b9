#!/usr/bin/env bash
# The GPU check of issue 11: real-size shard and training throughput, MFU and memory, DeepSpeed ZeRO-2/3 on one
# process; one table. Sized for ~10 minutes on one H200. `--cpu` runs the same checks at tiny sizes (smoke test).
#   bash tools/gpu_check.sh [--cpu] [--clips N] [--steps N] [--out DIR] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
exec python tools/gpu_check.py "$@"

#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with CPU torch (unless a GPU is present) and tatk.
# Sourced by tools/demo.sh and tools/test.sh, so a fresh clone needs nothing else.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
# The browser test of `tatk demo` drives Debian's chromium through Playwright (no browser download).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.tatk-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # uv (Astral's installer) installs what follows torch: the same versions as pip resolves, in less time on this
    # project's 2-core machine (docs/main-job.md). torch itself stays with pip, which reads the machine's pip
    # configuration (a local CPU wheel, a version cap); uv would not. --compile-bytecode, as pip does by default:
    # where PYTHONDONTWRITEBYTECODE is set (this machine class), every process would compile what it imports.
    python -m pip install -q --upgrade pip setuptools uv
    if ! python -c "import torch" 2>/dev/null; then
        # Install torch on its own first: on a machine without a GPU the CPU build keeps the
        # environment small; tatk's own range (torch>=2.4) is then already satisfied and pip
        # will not pull a multi-GB CUDA build. TORCH_SPEC overrides, e.g. on a GPU box.
        if command -v nvidia-smi >/dev/null 2>&1; then
            python -m pip install -q "${TORCH_SPEC:-torch}"
        else
            python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
        fi
    fi
    if ! python -c "import deepspeed" 2>/dev/null; then
        # DeepSpeed ships as an sdist whose setup.py imports torch: build it against the torch installed
        # above (an isolated build would fetch its own, possibly multi-GB CUDA, torch). No CUDA ops are
        # compiled ahead of time; ZeRO on CPU (the tests) and on GPU builds what it needs at run time.
        uv pip install -q --compile-bytecode --no-build-isolation "deepspeed>=0.15"
    fi
    uv pip install -q --compile-bytecode -e ".[dev]"
    touch "$stamp"
fi

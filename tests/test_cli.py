"""Entry points: `tatk`, `python -m tatk` and `python tatk` (what `accelerate launch tatk` runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from tatk.cli import ONEDNN_CACHE


def test_three_entry_points_show_the_same_help():
    console = Path(sys.executable).parent / "tatk"
    outs = [subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
            for cmd in ([str(console), "--help"], [sys.executable, "-m", "tatk", "--help"], [sys.executable, "tatk", "--help"])]
    assert "shard" in outs[0] and "train" in outs[0]
    assert outs[0].replace("tatk", "X") == outs[1].replace("python -m tatk", "X") or all("shard" in o for o in outs)


def test_no_module_in_the_package_shadows_an_installed_one():
    # `python tatk` puts tatk/ first on sys.path: a tatk/datasets.py would hide the real `datasets`.
    import importlib.metadata

    taken = set(sys.stdlib_module_names) | set(importlib.metadata.packages_distributions())
    ours = {f.stem for f in (REPO / "tatk").glob("*.py")} | {d.name for d in (REPO / "tatk").iterdir() if d.is_dir()}
    assert not (ours - {"__init__", "__main__", "__pycache__", "tatk"}) & taken


# A process that goes through `tatk`'s entry point, then convolves inputs of 1,100 lengths twice over (each length
# needs kernels of its own), with oneDNN printing every kernel it makes: a cache that holds them all makes each once.
CONVOLVE_TWICE = """
import sys
import torch
from tatk import cli
sys.argv = ["tatk", "--help"]
try:
    cli.main()
except SystemExit:
    pass
weight = torch.ones(8, 4, 3)
for _ in range(2):
    for length in range(64, 1164):
        torch.nn.functional.conv1d(torch.ones(2, 4, length), weight)  # batch 2: oneDNN (1 may not be)
"""


def kernels_made(env: dict[str, str]) -> int:
    """oneDNN kernels made ('create:cache_miss') by CONVOLVE_TWICE in a process with ``env`` added."""
    out = subprocess.run([sys.executable, "-c", CONVOLVE_TWICE], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "ONEDNN_VERBOSE": "2", **env}).stdout
    return out.count("create:cache_miss")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_tatk_keeps_every_onednn_kernel_a_run_makes(monkeypatch):
    # oneDNN's own default keeps 1,024 kernels: every one of the second pass is made again. tatk's entry point sets a
    # larger cache, read by oneDNN at its first kernel; a value the user sets is kept.
    monkeypatch.delenv(ONEDNN_CACHE, raising=False)
    ours = kernels_made({})
    users = kernels_made({ONEDNN_CACHE: "1024"})
    assert users >= 2 * 1100
    assert ours <= users / 2 + 20  # each length's kernels made once, not twice

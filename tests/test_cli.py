"""Entry points: `tatk`, `python -m tatk` and `python tatk` (what `accelerate launch tatk` runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


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

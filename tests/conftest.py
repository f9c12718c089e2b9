"""Session fixtures built here, never downloaded: tiny random encoders and an espeak-ng corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Nothing may reach the Hub from the tests: a wrong id must fail fast, not wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def run_tatk(*args: str, cwd: Path = REPO, check: bool = True, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m tatk ...`` in a fresh process, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "tatk", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"tatk {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, Path]:
    """Tiny random GLM-ASR, Whisper, HuBERT and wav2vec2 checkpoints saved with ``save_pretrained``."""
    from tatk.tiny import ENCODER_KINDS, build_tiny_encoder

    root = tmp_path_factory.mktemp("encoders")
    return {kind: build_tiny_encoder(kind, root / kind) for kind in ENCODER_KINDS}


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> dict[str, Path]:
    """A small espeak-ng corpus in both layouts: LoquaciousSet parquet (Hub-repo shaped) and a folder."""
    from tatk.synth import make_splits, write_corpus

    root = tmp_path_factory.mktemp("speech")
    splits = make_splits(24, 4, 4, seed=1)
    write_corpus(root / "parquet", splits, layout="parquet", seed=1)
    write_corpus(root / "folder", {"train": splits["train"][:12]}, layout="folder", seed=1)
    return {"parquet": root / "parquet", "folder": root / "folder"}

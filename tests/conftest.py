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
    from tatk.synthetic.tiny import ENCODER_KINDS, build_tiny_encoder

    root = tmp_path_factory.mktemp("encoders")
    return {kind: build_tiny_encoder(kind, root / kind) for kind in ENCODER_KINDS}


@pytest.fixture(scope="session")
def tiny_aligner(tmp_path_factory) -> Path:
    """A tiny character CTC model (wav2vec2-base-960h's vocabulary layout) trained for about two minutes on
    espeak-ng sentences: a forced aligner for word timestamps (``tatk.synthetic.aligner``)."""
    from tatk.synthetic.aligner import build_tiny_aligner

    return build_tiny_aligner(tmp_path_factory.mktemp("aligner") / "ctc")


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> dict[str, Path]:
    """A small espeak-ng corpus in both layouts: LoquaciousSet parquet (Hub-repo shaped) and a folder."""
    from tatk.synthetic.sentences import make_splits
    from tatk.synthetic.speech import write_corpus

    root = tmp_path_factory.mktemp("speech")
    splits = make_splits(24, 4, 4, seed=1)
    write_corpus(root / "parquet", splits, layout="parquet", seed=1)
    write_corpus(root / "folder", {"train": splits["train"][:12]}, layout="folder", seed=1)
    return {"parquet": root / "parquet", "folder": root / "folder"}


@pytest.fixture(scope="session")
def asr_run(tiny_encoders, speech, tmp_path_factory) -> dict[str, Path]:
    """A tiny recognizer trained for a few steps on real shards: espeak-ng speech → tiny GLM-ASR encoder
    → `tatk shard` (train, test) → `tatk train` (projector + full tiny decoder). Transcripts are poor;
    eval and export tests check that every path gives the *same* transcripts, not good ones.

    Keys: corpus (LoquaciousSet-style parquet folder), encoder, llm, shards, run (run folder),
    checkpoint (its newest checkpoint folder).
    """
    import pyarrow.parquet as pq

    from train_fixtures import asr_recipe

    from tatk.synthetic.tinyllm import build_tiny_llm

    root = tmp_path_factory.mktemp("asr")
    corpus, encoder, shards = speech["parquet"], tiny_encoders["glmasr"], root / "shards"
    texts = [t.lower() for f in sorted(corpus.rglob("*train*.parquet")) for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]
    llm = build_tiny_llm(root / "llm", texts=texts)
    for split in ("train", "test"):
        run_tatk("shard", "--dataset", corpus, "--subset", "small", "--split", split, "--encoder", encoder, "--out", shards)
    recipe = root / "recipe.toml"
    recipe.write_text(asr_recipe(root / "runs" / "asr", encoder, llm, shards, steps=6))
    run_tatk("train", recipe)
    run = root / "runs" / "asr"
    return {"corpus": corpus, "encoder": encoder, "llm": llm, "shards": shards, "run": run,
            "checkpoint": run / "checkpoints" / "step-000006"}

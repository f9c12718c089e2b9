"""Test fixtures for training: a synthetic shard set in exactly the format `tatk shard` writes, a tiny LLM,
and small recipes.

The features are learnable on purpose: each character of the transcript becomes ``frames_per_char``
frames of a fixed random vector for that character plus noise, so a projector can learn to read them
and the loss falls within a few dozen steps.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import webdataset as wds

from tatk.shard.format import FORMAT_VERSION, sha256_file
from tatk.synthetic.tinyllm import WORDS, build_tiny_llm

ENCODER_ID = "synthetic:chars"
ROOT = Path(__file__).resolve().parents[1]  # the repository: training subprocesses run `python tatk train` from it
# Environment of a training subprocess: one thread per process (two ranks share 2 cores), no tracker.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
ALPHABET = "abcdefghijklmnopqrstuvwxyz "


def char_table(dim: int) -> np.ndarray:
    """(27, dim) fixed per-character vectors, the same for every shard set (train and val must agree)."""
    return np.random.default_rng(1234).normal(size=(len(ALPHABET), dim)).astype(np.float32)


def write_shards(out: Path, n_samples: int = 96, n_shards: int = 4, split: str = "train", dim: int = 16,
                 seed: int = 0, frames_per_char: int = 2, noise: float = 0.3) -> Path:
    """Write ``n_shards`` tars of ``n_samples`` synthetic utterances plus manifest.json to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    table = char_table(dim)
    shards, total, fsum, fsq = [], 0, np.zeros(dim), np.zeros(dim)
    per = [n_samples // n_shards + (i < n_samples % n_shards) for i in range(n_shards)]
    index = 0
    for s, count in enumerate(per):
        name = f"{split}-{s:06d}.tar"
        frames = 0
        with wds.TarWriter(str(out / name)) as tar:
            for _ in range(count):
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
                codes = np.repeat([ALPHABET.index(c) for c in text], frames_per_char)
                feats = (table[codes] + noise * rng.normal(size=(len(codes), dim))).astype(np.float16)
                buf = io.BytesIO()
                np.save(buf, feats)
                key = f"{split}_{seed}_{index:06d}"
                meta = {"id": key, "duration": len(codes) / 50.0, "n_frames": len(codes), "speaker": "s0", "source": "synthetic"}
                tar.write({"__key__": key, "feats.npy": buf.getvalue(), "txt": text, "json": meta})
                frames += len(codes)
                f = feats.astype(np.float64)
                fsum, fsq = fsum + f.sum(0), fsq + (f * f).sum(0)
                index += 1
        shards.append({"name": name, "samples": count, "hours": frames / 50.0 / 3600, "frames": frames,
                       "bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)})
        total += frames
    mean = fsum / total
    std = np.sqrt(np.maximum(fsq / total - mean**2, 0.0))
    manifest = {
        "format_version": FORMAT_VERSION, "tatk_version": "0.1.0", "command": "tests/train_fixtures.py",
        "encoder": {"kind": "mel", "id": ENCODER_ID, "revision": "", "dim": dim, "frame_rate": 50.0, "dtype": "float16"},
        "feature_extractor": {},
        "splits": {split: {"shards": shards, "samples": n_samples, "hours": total / 50.0 / 3600, "frames": total,
                           "skipped": {}, "stats": {"mean": mean.tolist(), "std": std.tolist()}}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def clip_seconds(folder: Path, split: str = "train") -> dict[str, float]:
    """{sample key: duration in seconds} of a shard folder's split, as its samples record it."""
    from tatk.shard.format import read_split
    from tatk.train.tars import read_range

    return {raw["__key__"]: json.loads(raw["json"])["duration"]
            for t in read_split(folder, split)["shards"] for raw in read_range(str(folder / t["name"]))}


def asr_recipe(run_dir: Path, encoder: Path, llm: Path, shards: Path, steps: int, group_size: int = 8) -> str:
    """TOML of a tiny recognizer (projector + full tiny decoder) trained on real shards of a tiny GLM-ASR-style
    encoder (dim 64), as the `asr_run` fixture and tools/bench_eval.py build it."""
    return f"""
[run]
name = "{run_dir.name}"
out_dir = "{run_dir.parent}"
[features]
encoder = "{encoder}"
dim = 64
[model]
llm = "{llm}"
decoder = "full"
[projector]
stack = 4
hidden = 64
[[data.train]]
path = "{shards}"
[data]
max_tokens = 2048
group_size = {group_size}
shuffle_buffer = {group_size}
round_shards = 1
workers = 0
[optim]
lr = 2e-3
llm_lr = 1e-3
warmup_steps = 2
[train]
steps = {steps}
save_every = {steps}
log_every = 3
[log]
wandb = "off"
"""


def metrics(run: Path) -> dict[int, dict]:
    """A run's metrics.jsonl as {step: {key: value}} (training and validation records merged)."""
    out: dict[int, dict] = {}
    for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


def prepare_tiny(root: Path) -> Path:
    """The training tests' learnable fixtures under ``root``/runs/tiny: a tiny LLM and synthetic shard sets."""
    base = Path(root) / "runs" / "tiny"
    if not (base / "llm" / "config.json").exists():
        build_tiny_llm(base / "llm")
    if not (base / "shards" / "train" / "manifest.json").exists():
        write_shards(base / "shards" / "train", n_samples=256, n_shards=4, seed=0)
    if not (base / "shards" / "val" / "manifest.json").exists():
        write_shards(base / "shards" / "val", n_samples=32, n_shards=1, seed=1)
    return base


def tiny_recipe(base: Path, run_dir: Path, **sections) -> str:
    """A TOML recipe over ``prepare_tiny(...)`` outputs; ``sections`` adds/overrides keys: {"train": {"steps": 5}}."""
    data = {
        "run": {"name": run_dir.name, "out_dir": str(run_dir.parent), "seed": 0},
        "features": {"encoder": ENCODER_ID, "dim": 16, "normalize": "utterance"},
        "model": {"llm": str(base / "llm")},
        "projector": {"kind": "mlp", "stack": 2, "hidden": 64},
        "data": {"max_tokens": 512, "group_size": 16, "shuffle_buffer": 16, "round_shards": 2, "workers": 0},
        "optim": {"lr": 3e-3, "norm_lr": 3e-3, "warmup_steps": 5},
        "train": {"steps": 20, "log_every": 5, "eval_every": 0, "save_every": 10},
        "eval": {"max_samples": 16, "wer_samples": 4, "max_new_tokens": 12},
        "log": {"wandb": "off"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    lines += ["[[data.train]]", f"path = {json.dumps(str(base / 'shards' / 'train'))}",
              "[data.val]", f"path = {json.dumps(str(base / 'shards' / 'val'))}"]
    return "\n".join(lines) + "\n"


def _probe(recipe_path: str, out: str, *args: str) -> None:
    """Run ``tatk train`` in this process (``args``: "--resume", "--set key=value"), recording every step's training batches
    as (step, sample keys, (set, epoch) origins, (worker, round)) and, at each checkpoint, this rank's
    records and final trainable weights to ``out`` (used by the multi-process tests under ``accelerate launch``)."""
    import os
    import time

    import torch

    import tatk.train.loop as T
    from tatk.train.recipe import load_recipe

    records: list[dict] = []
    events, steps = T.Trainer.data_events, []

    def record(self, micro_batches):  # called once per step, before the step's micro-batches train
        step = self.start + 1 + len(steps)
        steps.append(step)
        for b in micro_batches:
            if "keys" in b:
                records.append({"step": step, "keys": b["keys"], "origins": b["origins"], "position": b["position"][:2]})
        return events(self, micro_batches)

    T.Trainer.data_events = record
    save = T.save_checkpoint

    def save_and_dump(accelerator, *args):
        save(accelerator, *args)
        weights = accelerator.unwrap_model(accelerator._models[0]).trainable_state_dict()
        rank = accelerator.process_index
        torch.save(weights, Path(out) / f"weights-{rank}.pt")
        (Path(out) / f"keys-{rank}.json").write_text(json.dumps(records))
        if str(args[3]) == os.environ.get("TATK_PROBE_HOLD_AT"):  # a test kills the run here, after checkpoint N
            time.sleep(3600)

    T.save_checkpoint = save_and_dump
    overrides = [a for prev, a in zip(("",) + args, args) if prev == "--set"]
    T.train(load_recipe(Path(recipe_path), overrides), resume="--resume" in args)


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        _probe(sys.argv[2], sys.argv[3], *sys.argv[4:])
    else:
        print(prepare_tiny(Path(".")))

"""Benchmark (not a test): the six projector kinds trained on one budget. Prints (and with --out writes) a
markdown table: projector parameters, trainable parameters, samples/s, final dev loss and dev WER.

Each kind is one `tatk train` of the demo recipe (recipes/demo.toml: the projector and the whole tiny decoder
train) for the same number of steps on the same shards, one run at a time, with only ``projector.kind``
(and its default ``[projector.<kind>]`` table) changed; the dev set is validated once, at the last step.
Run it after `bash tools/demo.sh` has built the corpus, models and shards (runs/demo, shards/demo-glmasr):

    python tools/compare_projectors.py --steps 600                     # the demo's data, 600 steps each
    python tools/compare_projectors.py --dir runs/cmp --shards runs/cmp/shards --steps 150 --out docs/x.md

``--dir`` holds ``encoder/`` and ``llm/`` (as tools/demo.sh makes them); runs go to ``<dir>/compare/<kind>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ["mlp", "swiglu", "conv", "mosa", "moe", "qformer"]


def train(kind: str, args) -> dict:
    """One `tatk train` of the demo recipe with ``kind``; its numbers from metrics.jsonl and the checkpoint."""
    from safetensors.torch import load_file

    run = Path(args.dir) / "compare" / kind
    sets = {"run.out_dir": str(run.parent), "run.name": kind, "features.encoder": f"{args.dir}/encoder",
            "model.llm": f"{args.dir}/llm", "data.train.0.path": args.shards, "data.val.path": args.shards,
            "projector.kind": kind, "train.steps": args.steps, "train.eval_every": args.steps,
            "train.save_every": args.steps, "train.log_every": max(args.steps // 10, 1),
            "optim.warmup_steps": min(60, args.steps // 5)}
    cmd = [sys.executable, "-m", "tatk", "train", "recipes/demo.toml"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    for item in args.set:
        cmd += ["--set", item]
    if run.exists():
        subprocess.run(["rm", "-rf", str(run)], check=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: {kind}: tatk train failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "samples_per_s" in r]
    last = [r for r in records if "val_loss" in r][-1]
    weights = load_file(str(run / "checkpoints" / f"step-{args.steps:06d}" / "model.safetensors"))
    trainable = int(re.search(r"([\d,]+) trainable parameters", done.stdout).group(1).replace(",", ""))
    # samples/s of every logged window but the first (start-up, the data workers' first shards)
    speeds = [r["samples_per_s"] for r in steps[1:]] or [r["samples_per_s"] for r in steps]
    return {"kind": kind, "projector": sum(v.numel() for k, v in weights.items() if k.startswith("projector.")),
            "trainable": trainable, "samples_per_s": sum(speeds) / len(speeds), "val_loss": last["val_loss"],
            "wer": last["wer"], "wall_s": wall, "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"]}


def table(rows: list[dict], steps: int) -> str:
    lines = [f"| projector | projector params | trainable params | samples/s | train loss (first → step {steps}) "
             f"| dev loss | dev WER | wall |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['kind']}` | {r['projector']:,} | {r['trainable']:,} | {r['samples_per_s']:.1f} | "
                     f"{r['first_loss']:.3f} → {r['last_loss']:.3f} | {r['val_loss']:.3f} | {100 * r['wer']:.1f} % | "
                     f"{r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="runs/demo", help="folder with encoder/ and llm/ (tools/demo.sh's DEMO_DIR)")
    ap.add_argument("--shards", default="shards/demo-glmasr", help="shards with train and dev splits")
    ap.add_argument("--steps", type=int, default=600, help="training steps per kind")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated projector kinds")
    ap.add_argument("--set", action="append", default=[], help="extra recipe override for every run (section.key=value)")
    ap.add_argument("--out", help="also write the table (and each run's numbers as JSON beside it) here")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        sys.exit(f"error: --kinds: {unknown[0]!r} is not one of {', '.join(KINDS)}")
    for need in (Path(args.dir) / "encoder" / "config.json", Path(args.dir) / "llm" / "config.json",
                 Path(args.shards) / "manifest.json"):
        if not need.is_file():
            sys.exit(f"error: {need} not found (run `bash tools/demo.sh` first, or pass --dir / --shards)")
    rows = []
    for kind in kinds:
        rows.append(train(kind, args))
        print(f"{kind}: dev loss {rows[-1]['val_loss']:.3f}, WER {100 * rows[-1]['wer']:.1f} %", flush=True)
    text = table(rows, args.steps)
    print(text)
    if args.out:
        from tatk.files import atomic_write_text

        atomic_write_text(Path(args.out), text)
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

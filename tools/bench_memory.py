"""Benchmark (not a test): peak memory per process of training stages under DDP, ZeRO-2 and ZeRO-3.

Each configuration is one ``accelerate launch`` of ``--processes`` processes (CPU processes over gloo
when no GPU is present) running ``tatk train`` in-process through this script's ``--worker`` mode, which
records its own peak when training ends: torch.cuda.max_memory_allocated on GPU, else the peak resident
set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which includes Python, torch and the libraries).

Stages, on a tiny random Qwen3-style LLM (``--hidden`` × ``--layers``) and synthetic shards:
stage 1 (projector, frozen LLM), stage 2 (LoRA r 64 on q/v + projector) and the full decoder.

    python tools/bench_memory.py [--hidden 1024 --layers 4 --steps 4 --processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CONFIGS = {"DDP": ["--multi_gpu"], "ZeRO-2": ["--config_file", "accelerate/zero2.yaml"],
           "ZeRO-3": ["--config_file", "accelerate/zero3.yaml"]}
STAGES = {"stage 1 (projector)": {},
          "stage 2 (LoRA r 64 + projector)": {"model": {"decoder": "lora"}, "lora": {"r": 64, "alpha": 32}},
          "full decoder + projector": {"model": {"decoder": "full"}}}


def worker(recipe: str, out: str) -> None:
    """Train ``recipe`` in this process, then write this rank's peak memory to ``out``/rank-N.json."""
    import torch

    from tatk.train.recipe import load_recipe
    from tatk.train.loop import train

    train(load_recipe(Path(recipe), []), resume=False)
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        peak, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated_mib"
    else:  # ru_maxrss is in KiB on Linux
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss_mib"
    (Path(out) / f"rank-{rank}.json").write_text(json.dumps({kind: peak}))


def main() -> None:
    import torch
    from train_fixtures import tiny_recipe, write_shards
    from transformers import AutoModelForCausalLM

    from tatk.synthetic.tinyllm import build_tiny_llm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    llm = build_tiny_llm(tmp / "llm", hidden=args.hidden, layers=args.layers)
    n_llm = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(llm).parameters())
    write_shards(tmp / "shards" / "train", n_samples=256, n_shards=4)
    write_shards(tmp / "shards" / "val", n_samples=16, n_shards=1, seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    rows, port = [], 29720
    for stage, sections in STAGES.items():
        for config, flags in CONFIGS.items():
            name = f"run{port}"
            recipe = tmp / f"{name}.toml"
            overrides = {"data": {"workers": 0}, "eval": {"max_samples": 8, "wer_samples": 2, "max_new_tokens": 4},
                         "train": {"steps": args.steps, "save_every": args.steps, "log_every": 1, "eval_every": 0},
                         **sections}
            recipe.write_text(tiny_recipe(tmp, tmp / "runs" / name, **overrides))  # tmp/llm, tmp/shards/{train,val}
            out = tmp / name
            out.mkdir()
            launch_env = {**env, "ACCELERATE_USE_CPU": "true"} if config == "DDP" and not cuda else env
            cmd = ["accelerate", "launch", *flags, "--num_processes", str(args.processes), "--num_machines", "1",
                   "--main_process_port", str(port), str(Path(__file__).resolve()), "--worker", str(recipe), str(out)]
            done = subprocess.run(cmd, cwd=ROOT, env=launch_env, capture_output=True, text=True)
            port += 1
            if done.returncode != 0:
                sys.exit(f"{stage} / {config} failed:\n{done.stderr[-3000:]}")
            peaks = [next(iter(json.loads(f.read_text()).values())) for f in sorted(out.glob("rank-*.json"))]
            rows.append((stage, config, max(peaks), min(peaks)))
            print(f"{stage:34s} {config:7s} peak {max(peaks):8.0f} MiB", file=sys.stderr)
    what = "torch.cuda.max_memory_allocated" if cuda else "peak RSS"
    device = torch.cuda.get_device_name() if cuda else f"{os.cpu_count()} CPU cores ({platform.machine()})"
    print(f"Tiny Qwen3-style LLM {args.hidden} × {args.layers} layers ({n_llm / 1e6:.1f}M parameters), "
          f"{args.processes} processes, {args.steps} steps, {device}, torch {torch.__version__}\n")
    print(f"| stage | backend | {what} per process, MiB (max / min over ranks) |")
    print("|---|---|---|")
    for stage, config, hi, lo in rows:
        print(f"| {stage} | {config} | {hi:.0f} / {lo:.0f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()

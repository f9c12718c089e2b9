"""Benchmark (not a test): whole training runs of recipe variants, side by side.

Where tools/bench_step.py times the step alone, this times what `tatk train` pays: start-up, compiling, the data
stream, the step, the optimizer, logging. Each variant is a set of `--set` overrides on the recipe
(`section.key=value`) and of environment variables for its process (`NAME=value`, a name in capitals: an allocator
through `LD_PRELOAD`, OpenMP or inductor settings); every variant trains `--steps` steps from scratch as its own
`accelerate launch tatk train`, the variants alternating, `--rounds` times, each with an empty inductor cache (as a
fresh clone compiles). Run after `bash tools/demo.sh`. Prints a markdown table: wall time of each run, and
utterances/s over the logged windows after `--skip` steps (compiling and warm-up), from each run's metrics.jsonl.

    python tools/bench_loop.py --variant "chat=" --variant "plain=model.llm=runs/demo/llm-plain data.max_tokens=1664"
    python tools/bench_loop.py --variant "glibc=" --variant "jemalloc=LD_PRELOAD=libjemalloc.so.2"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the recipe's relative paths are the repository's (as for tatk train)


def parse_variant(text: str) -> tuple[str, list[str], dict[str, str]]:
    """``name=key=value NAME=value ...`` → (name, recipe overrides ["key=value", ...], environment {NAME: value});
    ``name=`` is the recipe as it is. A recipe key has a section (``data.max_tokens``); an environment name is in
    capitals (``LD_PRELOAD``)."""
    name, _, rest = text.partition("=")
    if not name:
        raise SystemExit(f"--variant {text!r}: give it a name, e.g. 'plain=data.max_tokens=1664'")
    overrides, env = [], {}
    for item in rest.split():
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text!r}: {item!r} is not key=value")
        if key.isupper():
            env[key] = value
        else:
            overrides.append(item)
    return name, overrides, env


def train(recipe: str, name: str, overrides: list[str], env: dict[str, str], steps: int, out: Path) -> float:
    """Wall seconds of one `accelerate launch tatk train` of ``steps`` steps into ``out/name``."""
    sets = [f"run.out_dir={out}", f"run.name={name}", f"train.steps={steps}", "train.eval_every=0",
            f"train.save_every={steps}", *overrides]
    cmd = ["accelerate", "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "tatk", "train", recipe] + [a for s in sets for a in ("--set", s)]
    with tempfile.TemporaryDirectory() as cache:  # every run compiles from scratch, as a fresh clone does
        environment = {**os.environ, **env, "TORCHINDUCTOR_CACHE_DIR": cache}
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{name}: tatk train failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall


def rate(metrics: Path, skip: int) -> float:
    """Utterances/s over the logged windows after step ``skip``: their harmonic mean, which is total utterances over
    total time when the windows hold about as many utterances each (as they do: the same steps, a token budget)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return statistics.harmonic_mean([r["samples_per_s"] for r in rows if "samples_per_s" in r and r["step"] > skip])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/demo.toml")
    ap.add_argument("--variant", action="append", required=True,
                    help="name=key=value NAME=value ... (recipe overrides, environment)")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--skip", type=int, default=200, help="steps left out of utterances/s (compiling, warm-up)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    variants = {name: (overrides, env) for name, overrides, env in map(parse_variant, args.variant)}
    if len(variants) < len(args.variant):
        raise SystemExit("--variant: two variants share a name; give each its own")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.rounds):
            for name, (overrides, env) in variants.items():
                run = f"{name}-{r}"
                wall = train(args.recipe, run, overrides, env, args.steps, Path(out))
                results[name].append((wall, rate(Path(out) / run / "metrics.jsonl", args.skip)))
                print(f"round {r + 1}, {name}: {wall:.0f} s, {results[name][-1][1]:.0f} utterances/s", flush=True)
    first = next(iter(results))
    base = statistics.mean(u for _, u in results[first])
    print(f"\n{args.recipe}: {args.steps} steps a run, {args.rounds} rounds, variants alternating; utterances/s after "
          f"step {args.skip}\n")
    print(f"| variant | overrides, environment | wall s (each run) | utterances/s (each run) | utterances/s vs {first} |\n|---|---|---|---|---|")
    for name, runs in results.items():
        walls = " / ".join(f"{w:.0f}" for w, _ in runs)
        rates = " / ".join(f"{u:.0f}" for _, u in runs)
        ratio = statistics.mean(u for _, u in runs) / base
        overrides, env = variants[name]
        setting = " ".join([*overrides, *(f"{k}={v}" for k, v in env.items())])
        print(f"| {name} | {setting or '(the recipe)'} | {walls} | {rates} | {ratio:.2f} |")


if __name__ == "__main__":
    main()

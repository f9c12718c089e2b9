"""Benchmark (not a test): the main job's training step under each precision and attention, side by side.

Run after `bash tools/demo.sh` (it reads recipes/demo.toml, the demo's shards and decoder). Every variant
(fp32 or bf16 autocast × the LLM's attention as sdpa or eager, `train.attention`; and bf16 + eager with the
decoder layers compiled, `train.compile`) trains the same model from the same weights on the same batches;
the variants alternate, and each one's best pass is reported, so a machine's drift touches all alike (the
compiled variant's first pass also compiles: its time is printed). The batches are the stream's first, read
without the recipe's short-clips-first curriculum (clips of every length, as most of a run sees). Prints a
markdown table.

    python tools/bench_step.py [--steps 40] [--set key=value ...] [--profile]

``--profile`` adds one more pass of bf16 + eager compiled (the demo recipe's step) under torch.profiler and prints
its operators by their own CPU time: where a step's time goes.
"""

from __future__ import annotations

import argparse
import copy
import time
from contextlib import nullcontext

import torch

from tatk.shard.format import read_split
from tatk.train.collate import Codec
from tatk.train.loop import aux_loss_weights
from tatk.train.position import DataPosition
from tatk.train.recipe import load_recipe
from tatk.train.speechlm import build_model
from tatk.train.stream import shard_sets, train_loader

ATTENTIONS = ("sdpa", "eager")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/demo.toml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], help="recipe override, as for tatk train")
    ap.add_argument("--profile", action="store_true", help="profile one more pass of bf16 + eager compiled")
    args = ap.parse_args()
    overrides = ["data.short_first_epochs=0", "data.short_first_seconds=0", *args.set]
    recipes = {a: load_recipe(args.recipe, [*overrides, f"train.attention={a}"]) for a in ATTENTIONS}
    recipe = recipes["sdpa"]
    train = recipe.data.train[0]
    stats = read_split(train.path, train.split).get("stats")
    models = {a: build_model(r, stats, torch.float32) for a, r in recipes.items()}  # same seed: same weights
    model = models["sdpa"]
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length)
    start = DataPosition(0, 1, 0, recipe.run.seed, [c for _, c, _ in shard_sets(recipe)])
    stream = iter(train_loader(recipe, codec, start, False))
    raw = [next(stream) for _ in range(args.steps)]
    samples = sum(b["n_samples"] for b in raw) / len(raw)
    batches = [{k: v for k, v in b.items() if torch.is_tensor(v)} for b in raw]
    initial = copy.deepcopy(model.state_dict())
    weights = aux_loss_weights(recipe)

    def run(attention: str, bf16: bool, compiled: bool = False) -> float:
        """Seconds per step over the batches, from the same initial weights and a fresh optimizer."""
        model = models[attention]
        if compiled and attention not in bodies:
            model.compile_decoder()  # compiles lazily, in the first pass's first steps
            bodies[attention] = model.compiled_body
        model.compiled_body = bodies[attention] if compiled else None
        model.load_state_dict(initial)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.optim.lr)
        t = time.perf_counter()
        for b in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = model(b)
                loss = loss + sum(w * model.aux_losses[k] for k, w in weights.items())  # as the loop's loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - t) / len(batches)

    variants = [(p, a, False) for p in ("fp32", "bf16") for a in ATTENTIONS] + [("bf16", "eager", True)]
    best, bodies, first = {v: float("inf") for v in variants}, {}, {}
    for _ in range(3):  # alternating passes, best of each: the first also warms allocators and caches (and compiles)
        for p, a, c in variants:
            t = run(a, p == "bf16", c)
            first.setdefault((p, a, c), t)
            best[p, a, c] = min(best[p, a, c], t)
    base = best["fp32", "sdpa", False]
    print(f"\n{args.recipe}: {args.steps} steps, {samples:.1f} utterances/batch, {torch.get_num_threads()} threads\n")
    print("| precision | attention | ms/step | utterances/s | step time vs fp32 + sdpa |\n|---|---|---|---|---|")
    for (p, a, c), t in best.items():
        print(f"| {p} | {a}{', compiled' if c else ''} | {1000 * t:.0f} | {samples / t:.0f} | {t / base:.2f} |")
    compiled = ("bf16", "eager", True)
    print(f"\ncompiled: the first pass took {args.steps * (first[compiled] - best[compiled]):.0f} s more than the best "
          f"(compiling); step time vs bf16 + eager: {best[compiled] / best['bf16', 'eager', False]:.2f}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = run("eager", True, True)
        print(f"\nbf16 + eager compiled, profiled: {1000 * t:.0f} ms/step (the profiler's own cost included)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()

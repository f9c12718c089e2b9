"""Benchmark (not a test): the main job's training step in fp32 vs under bf16 autocast, side by side.

Run after `bash tools/demo.sh` (it reads recipes/demo.toml, the demo's shards and decoder). Both precisions
train the same model on the same batches; the variants alternate, and each one's best pass is reported, so
a machine's drift touches both alike. Prints a markdown table.

    python tools/bench_precision.py [--steps 40] [--set key=value ...]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/demo.toml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], help="recipe override, as for tatk train")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.set)
    train = recipe.data.train[0]
    model = build_model(recipe, read_split(train.path, train.split).get("stats"), torch.float32)
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length)
    start = DataPosition(0, 1, 0, recipe.run.seed, [c for _, c, _ in shard_sets(recipe)])
    stream = iter(train_loader(recipe, codec, start, False))
    raw = [next(stream) for _ in range(args.steps)]
    samples = sum(b["n_samples"] for b in raw) / len(raw)
    batches = [{k: v for k, v in b.items() if torch.is_tensor(v)} for b in raw]
    initial = copy.deepcopy(model.state_dict())
    weights = aux_loss_weights(recipe)

    def run(bf16: bool) -> float:
        """Seconds per step over the batches, from the same initial weights and a fresh optimizer."""
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

    best = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(3):  # alternating passes, best of each: the first also warms allocators and caches
        for name in best:
            best[name] = min(best[name], run(name == "bf16"))
    print(f"\n{args.recipe}: {args.steps} steps, {samples:.1f} utterances/batch, {torch.get_num_threads()} threads\n")
    print("| precision | ms/step | utterances/s |\n|---|---|---|")
    for name, t in best.items():
        print(f"| {name} | {1000 * t:.0f} | {samples / t:.0f} |")
    print(f"\nbf16 autocast: {best['fp32'] / best['bf16']:.2f}x the fp32 step rate")


if __name__ == "__main__":
    main()

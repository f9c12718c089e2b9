"""Benchmark (not a test): what training from pre-computed shards buys. Prints a markdown table.

In one run, on whatever device is present (CPU here; a GPU if available):

1. samples/s of a stage-1 training step (projector + frozen LLM) on features read from shards, vs the
   same step preceded by a frozen tiny transformer encoder run on mel frames of the same batch (what
   training without shards does at every step);
2. the real-token fraction of the length-grouped token-budget batcher, vs the same budget filled in
   stream order without grouping;
3. step time with logits at label positions only vs logits everywhere, with a Qwen3-sized vocabulary.

    python tools/bench_train.py [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from train_fixtures import tiny_recipe, write_shards  # noqa: E402

from tatk.train.collate import Codec  # noqa: E402
from tatk.train.position import DataPosition  # noqa: E402
from tatk.train.stream import shard_sets, train_loader  # noqa: E402
from tatk.train.speechlm import build_model  # noqa: E402
from tatk.train.recipe import load_recipe  # noqa: E402
from tatk.synthetic.tinyllm import build_tiny_llm  # noqa: E402


class TinyMelEncoder(nn.Module):
    """A frozen Whisper-like encoder: (B, 2T, 80) mel → stride-2 conv → transformer → (B, T, dim)."""

    def __init__(self, dim: int, width: int = 384, layers: int = 4):
        super().__init__()
        self.conv = nn.Conv1d(80, width, 3, stride=2, padding=1)
        layer = nn.TransformerEncoderLayer(width, 6, 4 * width, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.out = nn.Linear(width, dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.out(self.encoder(nn.functional.gelu(self.conv(mel.transpose(1, 2))).transpose(1, 2)))


def timed(fn, batches: list[dict], device) -> float:
    """Mean seconds per call of fn(batch) after one warm-up call."""
    fn(batches[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for b in batches:
        fn(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="tatk-bench-"))
    write_shards(tmp / "shards" / "train", n_samples=512, n_shards=4)
    write_shards(tmp / "shards" / "val", n_samples=8, n_shards=1, seed=1)
    build_tiny_llm(tmp / "llm", hidden=256, layers=4, vocab_size=151936)  # Qwen3-sized LM head
    (tmp / "r.toml").write_text(tiny_recipe(tmp, tmp / "run", projector={"hidden": 256},
                                            data={"max_tokens": 1024, "group_size": 64, "shuffle_buffer": 64}))
    recipe = load_recipe(tmp / "r.toml", [])
    model = build_model(recipe, None, torch.float32).to(device)
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length)
    start = DataPosition(0, 1, 0, recipe.run.seed, [c for _, c, _ in shard_sets(recipe)])
    stream = iter(train_loader(recipe, codec, start, False))
    raw = [next(stream) for _ in range(args.steps)]
    batches = [{k: v.to(device) for k, v in b.items() if torch.is_tensor(v)} for b in raw]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    samples = sum(b["n_samples"] for b in raw) / len(raw)

    def step(batch, label_logits_only=True):
        model(batch, label_logits_only=label_logits_only).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    encoder = TinyMelEncoder(recipe.features.dim).to(device).eval().requires_grad_(False)
    for b in batches:  # mel frames at twice the feature rate, as a Whisper-style encoder would see
        b["mel"] = torch.randn(b["feats"].shape[0], 2 * b["feats"].shape[1], 80, device=device)

    def step_with_encoder(batch):
        with torch.no_grad():
            feats = encoder(batch["mel"])
        step({**batch, "feats": feats[:, : batch["feats"].shape[1]]})

    variants = {"shards": step, "encoder": step_with_encoder, "full": lambda b: step(b, label_logits_only=False)}
    best = {k: float("inf") for k in variants}
    for _ in range(2):  # interleaved repeats, best of each: the first pass also warms allocators and caches
        for name, fn in variants.items():
            best[name] = min(best[name], timed(fn, batches, device))
    t_shards, t_encoder, t_full = best["shards"], best["encoder"], best["full"]

    # batcher: real-token fraction with length grouping vs the same budget in stream order
    real = sum(b["real_tokens"] for b in raw) / sum(b["padded_tokens"] for b in raw)
    ungrouped = load_recipe(tmp / "r.toml", ["data.group_size=1"])
    plain = iter(train_loader(ungrouped, codec, DataPosition(0, 1, 0, recipe.run.seed, [c for _, c, _ in shard_sets(recipe)]), False))
    rows, width, fill = [], 0, []
    for _ in range(600):  # group_size=1 gives single samples: pack them greedily in arrival order
        b = next(plain)
        n = b["real_tokens"]
        if rows and (len(rows) + 1) * max(width, n) > recipe.data.max_tokens:
            fill.append(sum(rows) / (len(rows) * width))
            rows, width = [], 0
        rows.append(n)
        width = max(width, n)
    plain_real = sum(fill) / len(fill)

    print(f"\nDevice: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}; "
          f"{args.steps} steps, {samples:.1f} utterances/batch, LLM hidden 256 × 4 layers, vocab 151,936\n")
    print("| measurement | value |\n|---|---|")
    print(f"| train step from shards | {samples / t_shards:.1f} samples/s ({1000 * t_shards:.0f} ms/step) |")
    print(f"| same step + frozen tiny mel encoder (4×384) | {samples / t_encoder:.1f} samples/s ({1000 * t_encoder:.0f} ms/step) |")
    print(f"| speed-up from shards | {t_encoder / t_shards:.2f}× |")
    print(f"| real-token fraction, length-grouped batches | {real:.3f} |")
    print(f"| real-token fraction, same budget, arrival order | {plain_real:.3f} |")
    print(f"| step with logits at every position | {1000 * t_full:.0f} ms |")
    print(f"| step with logits at label positions only | {1000 * t_shards:.0f} ms ({100 * (1 - t_shards / t_full):.0f}% saved) |")


if __name__ == "__main__":
    main()

"""Benchmark (not a test): what epochs and sample ranges buy the training stream. Prints markdown tables.

1. Coverage over one pass' worth of rounds: a 1,024-tar set read by 2 processes × 4 workers with
   ``round_shards = 4``, drawn by the training stream's own code (``TrainStream._draw``), with
   ``data.resample = true`` (the old rounds, with replacement) and with epochs (the default).
2. Read amplification of a small set (2 tars, 4 streams = 2 processes × 2 workers): bytes read from disk
   per byte of the samples used, by the stream (sample ranges), and by the old scheme (every stream
   reads every tar and keeps every 4th sample), for small and for realistic (1280-dim) features.

    python tools/bench_data.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from train_fixtures import ENCODER_ID, write_shards  # noqa: E402

from tatk.shard.format import read_split  # noqa: E402
from tatk.synthetic.tinyllm import build_tiny_llm  # noqa: E402
from tatk.train.collate import Codec  # noqa: E402
from tatk.train.position import DataPosition  # noqa: E402
from tatk.train.recipe import DataConfig, FeaturesConfig, ModelConfig, Recipe, ShardSet  # noqa: E402
from tatk.train.speechlm import build_model  # noqa: E402
from tatk.train.stream import TrainStream, shard_sets  # noqa: E402
from tatk.train.tars import read_range  # noqa: E402


def coverage(tmp: Path, resample: bool, tars: int = 1024, world: int = 2, workers: int = 4, per_round: int = 4) -> tuple[float, int]:
    """(fraction of tars never read, most reads of one tar) over rounds adding up to one pass of the set."""
    folder = tmp / "big"
    folder.mkdir(exist_ok=True)
    shards = [{"name": f"train-{i:06d}.tar", "samples": 100} for i in range(tars)]  # _draw opens no tar
    (folder / "manifest.json").write_text(json.dumps({"splits": {"train": {"shards": shards}}}))
    recipe = Recipe(data=DataConfig(train=[ShardSet(path=str(folder))], round_shards=per_round, workers=workers,
                                    resample=resample))
    counts = [c for _, c, _ in shard_sets(recipe)]
    reads: Counter = Counter()
    for rank in range(world):
        stream = TrainStream(recipe, None, DataPosition(rank, world, workers, 0, counts))
        for w in range(workers):
            g, cursors = rank * workers + w, stream.schedule.start()
            for r in range(tars // (world * workers * per_round)):
                drawn, cursors = stream._draw(g, np.random.default_rng([0, 0, g, r]), cursors)
                reads.update(u for _, u, _ in drawn)
    return 1 - len(reads) / tars, max(reads.values())


def amplification(tmp: Path, dim: int, frames_per_char: int) -> tuple[float, float, float]:
    """(bytes read per byte used by the stream, by the old every-stream-reads-every-tar scheme, KiB per sample)."""
    shards = write_shards(tmp / f"small{dim}", n_samples=48, n_shards=2, dim=dim, seed=3, frames_per_char=frames_per_char)
    if not (tmp / "llm" / "config.json").exists():
        build_tiny_llm(tmp / "llm")
    recipe = Recipe(features=FeaturesConfig(encoder=ENCODER_ID, dim=dim), model=ModelConfig(llm=str(tmp / "llm")),
                    data=DataConfig(train=[ShardSet(path=str(shards))], round_shards=1, workers=2, max_tokens=100_000,
                                    group_size=8, shuffle_buffer=8))
    recipe.projector.stack, recipe.projector.hidden = 2, 16
    model = build_model(recipe, None, torch.float32)
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length)
    split = read_split(shards, "train")
    paths = [str(shards / t["name"]) for t in split["shards"]]
    per_sample = sum(Path(p).stat().st_size for p in paths) / split["samples"]
    read, used, counts = 0, 0, [c for _, c, _ in shard_sets(recipe)]
    for rank in range(2):
        loader = DataLoader(TrainStream(recipe, codec, DataPosition(rank, 2, 2, 0, counts)), batch_size=None, num_workers=2)
        batches = [b for _, b in zip(range(60), loader)]
        for w in (0, 1):  # whole rounds only (a round's reads come with its own batches)
            mine = [b for b in batches if b["position"][0] == w]
            last = max(b["position"][1] for b in mine)
            read += sum(b["events"]["bytes"] for b in mine if b["position"][1] < last)
            used += sum(b["n_samples"] for b in mine if b["position"][1] < last)
    old_read = 0
    for g in range(4):  # the old scheme: each of the 4 streams reads both tars whole, keeping samples i % 4 == g
        counter = [0]
        for p in paths:
            for _ in read_range(p, counter=counter):
                pass
        old_read += counter[0]
    return read / used / per_sample, old_read / split["samples"] / per_sample, per_sample / 1024


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tatk-bench-data-"))
    print("| 1,024 tars, 8 streams, one pass' worth of rounds | tars never read | most reads of one tar |")
    print("|---|---|---|")
    for resample in (True, False):
        never, most = coverage(tmp, resample)
        print(f"| {'data.resample = true (with replacement)' if resample else 'epochs (default)'} | {never:.1%} | {most} |")
    print()
    print("| small set: 2 tars, 4 streams | KiB per sample | bytes read / bytes used: sample ranges | every stream reads every tar |")
    print("|---|---|---|---|")
    for dim, fpc in ((16, 2), (1280, 20)):
        ours, old, kib = amplification(tmp, dim, fpc)
        print(f"| {dim}-dim features | {kib:.1f} | {ours:.3f} | {old:.2f} |")


if __name__ == "__main__":
    main()

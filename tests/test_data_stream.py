"""The training stream at scale, in one process: every (rank, worker) stream of a 2-process × 2-worker run is
built exactly as a rank builds it (a DataLoader with 2 worker processes per rank), without a model step.

Epochs cover every sample once, a small set is shared by sample ranges without reading whole tars, a set
that can never make a batch fails with one line, a truncated tar is skipped and reported, and the data
position maps onto another number of streams without repeating or skipping a unit."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from train_fixtures import clip_seconds, prepare_tiny, tiny_recipe, write_shards

from tatk.shard.format import read_split
from tatk.train.collate import Codec
from tatk.train.position import DataPosition
from tatk.train.recipe import load_recipe
from tatk.train.speechlm import build_model
from tatk.train.stream import TrainStream, shard_sets
from tatk.train.tars import read_range


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("stream"))


def recipe_for(base: Path, tmp: Path, train: Path | None = None, dim: int = 16, **data):
    text = tiny_recipe(base, tmp / "run", data={"workers": 2, **data}, features={"dim": dim})
    if train is not None:
        text = text.replace(str(base / "shards" / "train"), str(train))
    if dim != 16:
        text = text.replace(str(base / "shards" / "val"), str(train))
    (tmp / "r.toml").write_text(text)
    return load_recipe(tmp / "r.toml", [])


def codec_for(recipe) -> Codec:
    model = build_model(recipe, None, torch.float32, allow_missing_stats=True)
    return Codec(model.tokenizer, model.layout, model.projector.output_length)


def all_keys(folder: Path) -> list[str]:
    return [raw["__key__"] for t in read_split(folder, "train")["shards"] for raw in read_range(str(folder / t["name"]))]


KEEP = ("keys", "origins", "position", "events", "n_samples")  # what the tests read of a batch (no tensors)


def run_streams(recipe, codec, world: int, until_epoch: int = 1, positions=None, limit: int = 300) -> dict[int, list[dict]]:
    """Batches of every rank's DataLoader until each of its workers has started a round at ``until_epoch``
    (so all its earlier rounds, which hold every unit it was dealt before that epoch, were yielded); at
    most ``limit`` batches per rank."""
    out = {}
    for rank in range(world):
        position = positions[rank] if positions else DataPosition(rank, world, 2, recipe.run.seed,
                                                                   [c for _, c, _ in shard_sets(recipe)])
        loader = DataLoader(TrainStream(recipe, codec, position), batch_size=None, num_workers=2)
        batches, done = [], set()
        for _, batch in zip(range(limit), loader):
            assert "error" not in batch, batch["error"]
            batches.append({k: batch[k] for k in KEEP})
            worker, _, _, start, _ = batch["position"]
            if start[0][0] >= until_epoch:
                done.add(worker)
            if done == {0, 1}:
                break
        out[rank] = batches
    return out


def epoch_keys(runs: dict[int, list[dict]], epoch: int) -> Counter:
    return Counter(k for batches in runs.values() for b in batches for k, o in zip(b["keys"], b["origins"]) if o[1] == epoch)


def test_one_epoch_yields_every_sample_exactly_once(base, tmp_path):
    recipe = recipe_for(base, tmp_path)
    runs = run_streams(recipe, codec_for(recipe), world=2, until_epoch=2)
    want = all_keys(base / "shards" / "train")
    for epoch in (0, 1):
        seen = epoch_keys(runs, epoch)
        assert sorted(seen) == sorted(want) and set(seen.values()) == {1}, epoch


def test_short_clips_first(base, tmp_path):
    """data.short_first_epochs: within the first epoch every stream yields exactly the clips of at most
    short_first_seconds, each once, and counts the others as skipped; the next epoch yields every clip. At 0.5
    epochs, streams 0-1 (dealt the first half of each epoch's 4 tars) yield short clips only, streams 2-3 all."""
    seconds = clip_seconds(base / "shards" / "train")
    limit = float(np.median(list(seconds.values())))
    short = sorted(k for k, s in seconds.items() if s <= limit)
    assert 0 < len(short) < len(seconds)
    recipe = recipe_for(base, tmp_path, short_first_epochs=1.0, short_first_seconds=limit)
    runs = run_streams(recipe, codec_for(recipe), world=2, until_epoch=2)
    assert sorted(epoch_keys(runs, 0)) == short and set(epoch_keys(runs, 0).values()) == {1}
    assert sorted(epoch_keys(runs, 1)) == sorted(seconds) and set(epoch_keys(runs, 1).values()) == {1}
    assert sum(b["events"]["short_skipped"] for batches in runs.values() for b in batches) == len(seconds) - len(short)

    recipe = recipe_for(base, tmp_path, short_first_epochs=0.5, short_first_seconds=limit)
    runs = run_streams(recipe, codec_for(recipe), world=2, until_epoch=1)
    longest = {g: max(seconds[k] for rank, batches in runs.items() for b in batches if 2 * rank + b["position"][0] == g
                      for k, o in zip(b["keys"], b["origins"]) if o[1] == 0) for g in range(4)}
    assert longest[0] <= limit and longest[1] <= limit and longest[2] > limit and longest[3] > limit


def test_resampling_keeps_the_with_replacement_rounds(base, tmp_path):
    recipe = recipe_for(base, tmp_path, resample=True, round_shards=4)
    codec = codec_for(recipe)
    position = DataPosition(0, 1, 2, recipe.run.seed, [c for _, c, _ in shard_sets(recipe)])
    loader = DataLoader(TrainStream(recipe, codec, position), batch_size=None, num_workers=0)
    keys = Counter()
    for i, b in zip(range(40), loader):
        keys.update(b["keys"])
    assert max(keys.values()) > 1  # 4 draws with replacement from a stream's 2 tars: some tar read twice


def test_small_set_is_shared_by_ranges_without_read_amplification(base, tmp_path):
    """2 tars read by 4 streams: each stream reads a range, every sample once per epoch, and the bytes read
    per sample yielded stay within 1.1× the set's bytes per sample (features of realistic size: 256-dim)."""
    small = write_shards(tmp_path / "small", n_samples=48, n_shards=2, dim=256, seed=5, frames_per_char=4)
    recipe = recipe_for(base, tmp_path, small, dim=256)
    runs = run_streams(recipe, codec_for(recipe), world=2, until_epoch=2)
    want = all_keys(small)
    for epoch in (0, 1):
        seen = epoch_keys(runs, epoch)
        assert sorted(seen) == sorted(want) and set(seen.values()) == {1}, epoch
    set_bytes = sum((small / t["name"]).stat().st_size for t in read_split(small, "train")["shards"])
    read, used = 0, 0
    for batches in runs.values():
        for w in (0, 1):  # whole rounds only: a round's reads are reported with its own batches
            mine = [b for b in batches if b["position"][0] == w]
            last = max(b["position"][1] for b in mine)
            read += sum(b["events"]["bytes"] for b in mine if b["position"][1] < last)
            used += sum(b["n_samples"] for b in mine if b["position"][1] < last)
    ratio = (read / used) / (set_bytes / len(want))
    print(f"bytes read per sample used / set bytes per sample: {ratio:.3f}")
    assert used and 0.9 < ratio <= 1.1


def test_a_set_that_cannot_make_a_batch_is_an_error(base, tmp_path):
    recipe = recipe_for(base, tmp_path, max_tokens=8)  # every row is longer than 8 positions
    position = DataPosition(0, 1, 2, recipe.run.seed, [c for _, c, _ in shard_sets(recipe)])
    batch = next(iter(DataLoader(TrainStream(recipe, codec_for(recipe), position), batch_size=None, num_workers=2)))
    assert batch["error"].startswith("data.train[0]: ") and "above data.max_tokens = 8" in batch["error"]


def test_a_truncated_tar_is_skipped_and_reported(base, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(base / "shards" / "train", damaged)
    tar = damaged / "train-000002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
    recipe = recipe_for(base, tmp_path, damaged)
    runs = run_streams(recipe, codec_for(recipe), world=1)
    bad = {p: why for b in runs[0] for p, why in b["events"]["bad"].items()}
    assert list(bad) == [str(tar)] and "train-000002.tar" in bad[str(tar)]
    seen = epoch_keys(runs, 0)
    assert set(seen.values()) == {1} and len(seen) >= 3 * 64  # the other tars whole, the damaged one in part


def test_an_empty_set_is_refused_before_training(base, tmp_path):
    import numpy as np

    from tatk.errors import UserError

    with np.errstate(all="ignore"):  # the fixture's feature statistics of nothing are NaN
        empty = write_shards(tmp_path / "empty", n_samples=0, n_shards=1)
    with pytest.raises(UserError, match=r"^data.train\[0\].path: split 'train' of .* holds no samples$"):
        recipe_for(base, tmp_path, empty)

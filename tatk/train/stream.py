"""Batches from WebDataset shards: split by rank and worker, resampled, shuffled, mixed, length-grouped.

Each rank runs its own DataLoader (never ``accelerator.prepare``d: that would dispatch from rank 0 or
drop data). With R ranks and W workers there are G = R·W *streams*; stream g owns shards g, g+G, ...
of every set (or, when a set has fewer than G shards, samples g, g+G, ... of every shard), so no two
streams ever share a sample.

A stream is an endless series of *rounds*. Round r of stream g draws ``round_shards`` of its shards at
random (with replacement; sets weighted so their share of *samples* follows ``weight``), reads them
interleaved through a shuffle buffer, sorts groups of ``group_size`` samples by length and cuts each
group into batches of at most ``max_tokens`` LLM positions. Everything is seeded by (seed, rank,
worker, round), so a batch is named by (worker, round, index) and a checkpoint only stores, per worker,
where to go on: resuming re-reads at most one round per worker and replays the exact same batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tatk.shard.format import read_shard, read_split
from tatk.train import augment
from tatk.train.collate import Codec, Sample, length_batches

_AUGMENT_STREAM = 1  # extra seed word: mask draws never coincide with the round's shuffling draws


def shard_sets(recipe) -> list[tuple[list[str], list[int], float]]:
    """(tar paths, samples per tar, weight) for each [[data.train]] set, from the manifests."""
    out = []
    for s in recipe.data.train:
        split = read_split(s.path, s.split)
        out.append(([str(Path(s.path) / t["name"]) for t in split["shards"]], [t["samples"] for t in split["shards"]], s.weight))
    return out


class TrainStream(IterableDataset):
    """Endless, resumable training batches for one rank; yields collated batches tagged with "position"."""

    def __init__(self, recipe, codec: Codec, rank: int, world: int, start: dict[int, list[int]], offset: int):
        self.sets, self.codec, self.rank, self.world = shard_sets(recipe), codec, rank, world
        self.data, self.seed, self.augment = recipe.data, recipe.run.seed, recipe.augment
        self.n_workers = max(recipe.data.workers, 1)
        self.start, self.offset = start, offset  # start: worker → [round, batch index]; offset: see DataPosition

    def _plan(self, g: int, streams: int):
        """This stream's shards per set, its sample filter per set, and the set sampling probabilities."""
        owned, keeps, probs = [], [], []
        for paths, counts, weight in self.sets:
            if len(paths) >= streams:
                idx, keep, share = list(range(g, len(paths), streams)), None, 1.0
            else:
                idx, keep, share = list(range(len(paths))), g, 1.0 / streams
            owned.append([paths[i] for i in idx])
            keeps.append(keep)
            probs.append(weight / (np.mean([counts[i] for i in idx]) * share))  # per-sample share ∝ weight
        return owned, keeps, np.array(probs) / sum(probs)

    def _round(self, worker: int, r: int) -> Iterator[list[Sample]]:
        d, streams = self.data, self.world * self.n_workers
        owned, keeps, probs = self._plan(self.rank * self.n_workers + worker, streams)
        rng = np.random.default_rng([self.seed, self.rank, worker, r])
        sources = []
        for s in rng.choice(len(owned), size=d.round_shards, p=probs):
            keep = (lambda i: True) if keeps[s] is None else (lambda i, g=keeps[s]: i % streams == g)
            sources.append(read_shard(owned[s][rng.integers(len(owned[s]))], keep))
        buffer: list[Sample] = []
        group: list[Sample] = []

        def grouped(sample: Sample | None) -> Iterator[list[Sample]]:
            if sample is not None:
                group.append(sample)
            if group and (sample is None or len(group) == d.group_size):
                batches = length_batches(group, d.max_tokens)
                group.clear()
                for i in rng.permutation(len(batches)):
                    yield batches[i]

        while sources:  # interleave the round's tars, one sample at a time, through the shuffle buffer
            i = int(rng.integers(len(sources)))
            raw = next(sources[i], None)
            if raw is None:
                sources.pop(i)
                continue
            sample = self.codec.decode(raw)
            if sample.n_audio < 1 or sample.n_tokens > d.max_tokens:
                continue  # too short to project, or can never fit a batch
            if len(buffer) < d.shuffle_buffer:
                buffer.append(sample)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], sample = sample, buffer[j]
            yield from grouped(sample)
        for j in rng.permutation(len(buffer)):
            yield from grouped(buffer[j])
        yield from grouped(None)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = ((info.id if info else 0) + self.offset) % self.n_workers
        r, skip = self.start.get(worker, [0, 0])
        while True:
            for i, batch in enumerate(self._round(worker, r)):
                if i >= skip:
                    if augment.enabled(self.augment):  # masks seeded by the batch's name: resume replays them
                        rng = np.random.default_rng([self.seed, self.rank, worker, r, i, _AUGMENT_STREAM])
                        batch = augment.augment_batch(batch, self.augment, rng)
                    yield {**self.codec.collate(batch), "position": (worker, r, i)}
            r, skip = r + 1, 0


class DataPosition:
    """Where each worker's stream goes on, for every rank; registered with Accelerate's save/load_state.

    The DataLoader takes batches from its workers round-robin, so after ``consumed`` batches the next
    one comes from worker ``consumed % W``; a resumed loader is rotated by that much to keep the order.
    """

    def __init__(self, rank: int, world: int, workers: int):
        self.rank, self.world, self.workers = rank, world, max(workers, 1)
        self.consumed, self.next = 0, {}
        self.table: dict[int, dict] = {}

    def advance(self, position: tuple[int, int, int]) -> None:
        worker, r, i = position
        self.next[worker] = [r, i + 1]
        self.consumed += 1

    def gather(self, accelerator) -> None:
        """Collect every rank's position (collective: call on all ranks before save_state)."""
        from accelerate.utils import gather_object

        mine = {"rank": self.rank, "consumed": self.consumed, "next": self.next}
        self.table = {e["rank"]: e for e in gather_object([mine])}

    def state_dict(self) -> dict:
        return {"world": self.world, "workers": self.workers, "ranks": self.table}

    def load_state_dict(self, state: dict) -> None:
        from tatk.errors import UserError

        if (state["world"], state["workers"]) != (self.world, self.workers):
            raise UserError(f"data.workers: the checkpoint was written with {state['world']} processes × "
                            f"{state['workers']} workers; resume with the same numbers")
        mine = state["ranks"][self.rank]
        self.consumed, self.next = mine["consumed"], {int(k): v for k, v in mine["next"].items()}


def train_loader(recipe, codec: Codec, position: DataPosition, pin_memory: bool) -> DataLoader:
    """This rank's endless training DataLoader, starting where ``position`` says."""
    stream = TrainStream(recipe, codec, position.rank, position.world, position.next, position.consumed % position.workers)
    return DataLoader(stream, batch_size=None, num_workers=recipe.data.workers, pin_memory=pin_memory,
                      persistent_workers=False)


def val_batches(recipe, codec: Codec, rank: int, world: int) -> Iterator[dict]:
    """The held-out set in a fixed order, sample i going to rank i % world; batches sorted by length."""
    v = recipe.data.val
    split = read_split(v.path, v.split)
    n, group = 0, []
    for t in split["shards"]:
        for raw in read_shard(str(Path(v.path) / t["name"])):
            n += 1
            if (n - 1) % world == rank:
                s = codec.decode(raw)
                if s.n_audio >= 1 and s.n_tokens <= recipe.data.max_tokens:
                    group.append(s)
            if len(group) == recipe.data.group_size:
                yield from (codec.collate(b) for b in length_batches(group, recipe.data.max_tokens))
                group = []
    yield from (codec.collate(b) for b in length_batches(group, recipe.data.max_tokens))

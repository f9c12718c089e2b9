"""Training batches from WebDataset shards: epochs dealt to streams, shuffled, mixed by weight, length-grouped.

Each rank runs its own DataLoader (never ``accelerator.prepare``d: that would dispatch from rank 0 or
drop data). With R ranks and W workers there are G = R·W *streams*; which units (tars or tar sample
ranges) stream g reads, epoch after epoch, is schedule.py's dealing, so no two streams share a unit within
an epoch.

A stream is an endless series of *rounds*. Round r draws ``round_shards`` units, choosing each one's set
at random (weighted so the sets' shares of *samples* follow ``weight``) and taking that set's next unit
for this stream; it reads them interleaved through a shuffle buffer, sorts groups of ``group_size``
samples by length and cuts each group into batches of at most ``max_tokens`` LLM positions. While a unit
lies in its set's first ``data.short_first_epochs`` epochs, only its clips of at most ``short_first_seconds``
are used (a curriculum: short clips first; the others are counted as skipped). Everything is
seeded by (seed, segment, stream, round), so a batch is named by (worker, round, index, cursors) and a
checkpoint only stores, per worker, where to go on (position.py).

Problems reach the training loop inside the batches: ``"events"`` (unreadable tars skipped, samples
dropped, long clips skipped by the curriculum, and bytes read, since the stream's previous batch) and, when a stream can never make a batch, ``{"error": one line}``; the loop turns either into
the same outcome on every rank (loop.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tatk.shard.format import read_split, tar_size_problem
from tatk.train import augment
from tatk.train.collate import Codec, Sample, length_batches
from tatk.train.position import DataPosition
from tatk.train.tars import BadTar, read_range, units

_AUGMENT_STREAM = 1  # extra seed word: mask draws never coincide with the round's shuffling draws
STUCK_UNITS = 8  # units of a set read in a row without one usable sample before the stream gives up on it


def _no_events() -> dict:
    return {"bad": {}, "dropped": 0, "short_skipped": 0, "bytes": 0}


class _NoUnits(Exception):
    """This stream can never get a unit (its message is the training error line)."""


def shard_sets(recipe) -> list[tuple[list[str], list[int], float]]:
    """(tar paths, samples per tar, weight) for each [[data.train]] set, from the manifests."""
    out = []
    for s in recipe.data.train:
        split = read_split(s.path, s.split)
        out.append(([str(Path(s.path) / t["name"]) for t in split["shards"]], [t["samples"] for t in split["shards"]], s.weight))
    return out


def wrong_size_tars(recipe) -> list[str]:
    """The [[data.train]] tars that are missing or not the size their manifest records, each as "path: why".
    Training checks this before it starts, so a truncated copy is named now, not when a step first reaches it."""
    problems = (tar_size_problem(Path(s.path) / t["name"], t["bytes"])
                for s in recipe.data.train for t in read_split(s.path, s.split)["shards"])
    return [p for p in problems if p]


class TrainStream(IterableDataset):
    """Endless, resumable training batches for one rank; yields collated batches tagged with "position"."""

    def __init__(self, recipe, codec: Codec, position: DataPosition):
        self.sets, self.codec, self.rank = shard_sets(recipe), codec, position.rank
        self.data, self.seed, self.augment = recipe.data, recipe.run.seed, recipe.augment
        self.n_workers, self.streams = position.workers, position.streams
        self.segment, self.schedule = position.segment, position.schedule()
        self.units = [units(counts, b["pieces"]) for (_, counts, _), b in zip(self.sets, position.basis)]
        self.start, self.offset = position.next, position.consumed % position.workers
        self.known_bad: set[str] = set()  # found by this stream (a resumed one finds them again: exact replay)

    def _probs(self, g: int) -> np.ndarray:
        """Set sampling probabilities: a set's share of samples ∝ weight, so draws ∝ weight / samples per unit."""
        p = np.array([weight / (sum(counts) / len(u)) if self.schedule.reaches(s, g) else 0.0
                      for s, ((_, counts, weight), u) in enumerate(zip(self.sets, self.units))])
        if not p.sum():  # only after a resume on more streams than a small set was cut for
            raise _NoUnits(f"data.workers: stream {g} of {self.streams} gets no unit of any set (the sets were cut "
                           f"into {min(self.schedule.n_units)} units for the first run); resume with fewer processes × workers")
        return p / p.sum()

    def _draw(self, g: int, rng, cursors: list[list[int]]) -> tuple[list[tuple[int, int, int, bool]], list[list[int]]]:
        """The round's units as (set, unit, epoch, short: within the curriculum's epochs), and the cursors after them."""
        cursors, drawn = [list(c) for c in cursors], []
        for s in rng.choice(len(self.sets), size=self.data.round_shards, p=self._probs(g)):
            if self.data.resample:  # with replacement from this stream's fixed share
                share = range(g % self.schedule.n_units[s], self.schedule.n_units[s], self.streams)
                drawn.append((int(s), int(share[rng.integers(len(share))]), -1, False))
            else:
                u, cursors[s] = self.schedule.next(int(s), g, cursors[s])
                short = self.schedule.place(int(s), g, cursors[s]) < self.data.short_first_epochs
                drawn.append((int(s), u, cursors[s][0], short))
        return drawn, cursors

    def _read(self, s: int, u: int, epoch: int) -> Iterator[dict]:
        """One unit's raw samples; an unreadable tar is recorded in ``events`` (once) and skipped."""
        paths = self.sets[s][0]
        t, first, end = self.units[s][u]
        if paths[t] in self.known_bad:
            return
        counter = [0]
        try:
            for raw in read_range(paths[t], first, end, counter):
                yield {**raw, "__origin__": (s, epoch)}
        except BadTar as e:
            self.known_bad.add(paths[t])
            self.events["bad"][paths[t]] = str(e)
        finally:
            self.events["bytes"] += counter[0]

    def _samples(self, s: int, u: int, epoch: int, short: bool) -> Iterator[Sample]:
        """A unit's usable samples (``short``: those of at most ``short_first_seconds``); dropped and skipped
        ones are counted, and a set giving none for too long is an error."""
        usable, skipped, shortest = 0, 0, None  # shortest row among the samples too long for a batch
        for raw in self._read(s, u, epoch):
            if short and json.loads(raw["json"])["duration"] > self.data.short_first_seconds:
                self.events["short_skipped"] += 1
                skipped += 1
                continue
            sample = self.codec.decode(raw)
            sample.origin = raw["__origin__"]
            if sample.n_audio < 1 or sample.n_tokens > self.data.max_tokens:  # too short to project / never fits
                self.events["dropped"] += 1
                if sample.n_audio >= 1:
                    shortest = min(shortest or sample.n_tokens, sample.n_tokens)
                continue
            usable += 1
            yield sample
        t = self.units[s][u][0]
        if usable or skipped:  # clips left for a later epoch are not a set that cannot make a batch
            self.stuck[s] = 0
        elif self.sets[s][0][t] not in self.known_bad:
            self.stuck[s] += 1
        if self.stuck[s] >= min(STUCK_UNITS, self.schedule.n_units[s]):
            why = (f"the shortest needs {shortest} LLM positions, above data.max_tokens = {self.data.max_tokens}"
                   if shortest else "its clips are too short to project, or it is empty")
            self.error = (f"data.train[{s}]: {self.stuck[s]} units of {Path(self.sets[s][0][t]).parent} in a row "
                          f"gave no usable sample ({why})")

    def _round(self, g: int, rng, drawn: list[tuple[int, int, int]]) -> Iterator[list[Sample]]:
        d = self.data
        sources = [self._samples(*unit) for unit in drawn]
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

        while sources:  # interleave the round's units, one sample at a time, through the shuffle buffer
            i = int(rng.integers(len(sources)))
            sample = next(sources[i], None)
            if sample is None:
                sources.pop(i)
                continue
            if len(buffer) < d.shuffle_buffer:
                buffer.append(sample)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], sample = sample, buffer[j]
            yield from grouped(sample)
        for j in rng.permutation(len(buffer)):
            yield from grouped(buffer[j])
        yield from grouped(None)

    def _fresh_events(self) -> dict:
        events, self.events = self.events, _no_events()
        return events

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = ((info.id if info else 0) + self.offset) % self.n_workers
        g = self.rank * self.n_workers + worker
        at = self.start.get(worker)
        r, skip, cursors = (at["round"], at["batch"], at["start"]) if at else (0, 0, self.schedule.start())
        self.events, self.error, self.stuck = _no_events(), None, [0] * len(self.sets)
        while True:
            rng = np.random.default_rng([self.seed, self.segment, g, r])
            try:
                drawn, end = self._draw(g, rng, cursors)
            except _NoUnits as e:
                yield {"error": str(e), "events": self._fresh_events()}
                return
            for i, batch in enumerate(self._round(g, rng, drawn)):
                if i >= skip:
                    # Augmentation draws are seeded by the batch's name: a resumed run replays them.
                    aug_rng = np.random.default_rng([self.seed, self.segment, g, r, i, _AUGMENT_STREAM])
                    if augment.masks(self.augment):
                        batch = augment.augment_batch(batch, self.augment, aug_rng)
                    collated = self.codec.collate(batch)
                    if self.augment.token_swap:
                        collated = augment.swap_tokens(collated, self.augment.token_swap, aug_rng)
                    yield {**collated, "position": (worker, r, i, cursors, end), "events": self._fresh_events()}
            dead = [i for i, (paths, _, _) in enumerate(self.sets) if set(paths) <= self.known_bad]
            if self.error or dead:
                error = self.error or f"data.train[{dead[0]}]: every tar of {Path(self.sets[dead[0]][0][0]).parent} is unreadable"
                yield {"error": error, "events": self._fresh_events()}
                return
            r, skip, cursors = r + 1, 0, end


def train_loader(recipe, codec: Codec, position: DataPosition, pin_memory: bool) -> DataLoader:
    """This rank's endless training DataLoader, starting where ``position`` says."""
    return DataLoader(TrainStream(recipe, codec, position), batch_size=None, num_workers=recipe.data.workers,
                      pin_memory=pin_memory, persistent_workers=False)

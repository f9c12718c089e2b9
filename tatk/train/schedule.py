"""Which units of each training set a data stream reads, and in what order: epochs without replacement.

There are G = processes × workers *streams*. Every set is read as a sequence of epochs; epoch e is a
permutation of the set's units (tars, or sample ranges of tars for a set smaller than G; see tars.py)
seeded by (seed, set, e), and stream g reads every G-th unit of it starting at g. So within an epoch every
unit is read once, by one stream, whatever the weights. Streams go at their own pace: one may start epoch
e+1 of a set while another is finishing epoch e.

A *basis* says what was read before this run segment began, per set: ``{"epoch": e0, "done": {e: [unit,
...]}, "pieces": p}``: epochs below e0 are finished and ``done`` lists units of later epochs already read. Epoch e is
dealt from its permutation minus ``done[e]``. A fresh run has the empty basis; a run resumed on another
number of streams gets a new one from where the old streams were (``rebase``), so no unit is read twice
in an epoch and none is skipped (``pieces``, the sample ranges per tar, stays what the first segment chose,
so unit numbers keep their meaning). A stream's place in a set is a *cursor* ``[epoch, index into its share]``.

``data.resample = true`` keeps the old behaviour: each draw is a random unit of the stream's fixed share,
with replacement (no epochs, no cursors).
"""

from __future__ import annotations

import numpy as np

_PERMUTATION_WORD = 7  # extra seed word: epoch permutations never share draws with the streams' RNGs


class Schedule:
    """The dealing of every set's epochs to ``streams`` streams, given a basis."""

    def __init__(self, n_units: list[int], seed: int, streams: int, basis: list[dict]):
        self.n_units, self.seed, self.streams, self.basis = n_units, seed, streams, basis
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def order(self, s: int, e: int) -> np.ndarray:
        """Epoch ``e`` of set ``s``: its permutation of units without those the basis says were read."""
        if (s, e) not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            perm = np.random.default_rng([self.seed, s, e, _PERMUTATION_WORD]).permutation(self.n_units[s])
            done = self.basis[s]["done"].get(str(e))
            self._cache[s, e] = perm[~np.isin(perm, done)] if done else perm
        return self._cache[s, e]

    def share_size(self, s: int, e: int, g: int) -> int:
        done = len(self.basis[s]["done"].get(str(e), ()))
        return len(range(g, self.n_units[s] - done, self.streams))

    def reaches(self, s: int, g: int) -> bool:
        """Whether stream ``g`` gets units of set ``s`` at all (not when a resume added streams beyond a small
        set's units)."""
        return g < self.n_units[s]

    def start(self) -> list[list[int]]:
        """A stream's cursors at the start of this segment: the first unfinished epoch of every set."""
        return [[b["epoch"], 0] for b in self.basis]

    def next(self, s: int, g: int, cursor: list[int]) -> tuple[int, list[int]]:
        """Stream ``g``'s next unit of set ``s`` after ``cursor``, and the cursor after it."""
        e, i = cursor
        while i >= self.share_size(s, e, g):  # a rebased epoch may leave this stream nothing
            e, i = e + 1, 0
        return int(self.order(s, e)[g + i * self.streams]), [e, i + 1]

    def place(self, s: int, g: int, cursor: list[int]) -> float:
        """Where the unit stream ``g`` was dealt last (``cursor`` is the cursor after it) stands in set ``s``'s
        epochs: its epoch plus the share of that epoch's units dealt before it (so 1.5 is halfway through epoch 1)."""
        e, i = cursor
        before = len(self.basis[s]["done"].get(str(e), ())) + g + (i - 1) * self.streams
        return e + before / self.n_units[s]

    def consumed(self, s: int, g: int, cursor: list[int]) -> dict[int, list[int]]:
        """Units of set ``s`` stream ``g`` has started by ``cursor``, per epoch."""
        e0, (e, i) = self.basis[s]["epoch"], cursor
        out = {}
        for ep in range(e0, e + 1):
            share = self.order(s, ep)[g::self.streams]
            out[ep] = share[: i if ep == e else len(share)].tolist()
        return out

    def epochs(self, s: int, cursors: dict[int, list[int]]) -> float:
        """Epochs of set ``s`` read so far (fractional), from every stream's cursor ``{g: cursor}``; a stream
        not in ``cursors`` has read nothing in this segment."""
        b, n = self.basis[s], self.n_units[s]
        units = b["epoch"] * n + sum(len(v) for v in b["done"].values())
        for g, (e, i) in cursors.items():
            units += sum(self.share_size(s, ep, g) for ep in range(b["epoch"], e)) + i
        return units / n

    def rebase(self, cursors: dict[int, list[list[int]]]) -> list[dict]:
        """The basis for a new segment from every stream's cursors ``{g: [cursor per set]}``."""
        out = []
        for s, n in enumerate(self.n_units):
            read: dict[int, set[int]] = {int(e): set(u) for e, u in self.basis[s]["done"].items()}
            for g, per_set in cursors.items():
                for e, us in self.consumed(s, g, per_set[s]).items():
                    read.setdefault(e, set()).update(us)
            e0 = self.basis[s]["epoch"]
            while len(read.get(e0, ())) >= n:
                e0 += 1
            done = {str(e): sorted(u) for e, u in sorted(read.items()) if e >= e0 and u}
            out.append({"epoch": e0, "done": done, "pieces": self.basis[s]["pieces"]})
        return out

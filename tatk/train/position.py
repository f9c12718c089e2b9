"""Where the training data goes on after a checkpoint; registered with Accelerate's save/load_state.

Every batch is named ``(worker, round, index, start cursors, end cursors)`` by its stream (stream.py): a
round is replayed exactly from its start cursors, and its end cursors say which units it started. Resumed
with the same processes × workers, each worker replays its interrupted round from the start and skips the
batches already trained on, so the resumed run sees exactly the batches of an uninterrupted one.

Resumed on another number of streams (other processes or workers), the old streams' end cursors become
a new schedule basis (schedule.py ``rebase``): every unit any old stream had started counts as read, so per
epoch no unit is read twice and none is skipped beyond the units of the interrupted rounds (their
shuffle windows). The new streams start a new *segment* (fresh round seeds).
"""

from __future__ import annotations

import math

from tatk.train.schedule import Schedule
from tatk.train.tars import pieces_for, units


class DataPosition:
    """This rank's data position plus the run-wide parts (basis, segment, unreadable tars) every rank shares.

    The DataLoader takes batches from its workers round-robin, so after ``consumed`` batches the next one
    comes from worker ``consumed % W``; a resumed loader is rotated by that much to keep the order."""

    def __init__(self, rank: int, world: int, workers: int, seed: int, counts: list[list[int]]):
        self.rank, self.world, self.workers, self.seed, self.counts = rank, world, max(workers, 1), seed, counts
        self.streams = self.world * self.workers
        self.basis = [{"epoch": 0, "done": {}, "pieces": pieces_for(len(c), self.streams)} for c in counts]
        self.segment, self.consumed, self.next = 0, 0, {}
        self.bad: dict[str, str] = {}  # unreadable tar → reason, over all ranks and the whole run
        self.table: dict[int, dict] = {}

    def schedule(self) -> Schedule:
        return Schedule([len(units(c, b["pieces"])) for c, b in zip(self.counts, self.basis)], self.seed, self.streams,
                        self.basis)

    def advance(self, position: tuple) -> None:
        worker, r, i, start, end = position
        self.next[worker] = {"round": r, "batch": i + 1, "start": start, "end": end}
        self.consumed += 1

    def cursors(self) -> dict[int, list[list[int]]]:
        """This rank's streams' end cursors {stream: [cursor per set]} (streams with no batch yet left out)."""
        return {self.rank * self.workers + w: n["end"] for w, n in self.next.items()}

    def epochs(self, accelerator) -> list[float]:
        """Epochs read of every set, over all ranks (collective)."""
        from accelerate.utils import gather_object

        cursors = {g: c for part in gather_object([self.cursors()]) for g, c in part.items()}
        schedule = self.schedule()
        return [schedule.epochs(s, {g: c[s] for g, c in cursors.items()}) for s in range(len(self.counts))]

    def gather(self, accelerator) -> None:
        """Collect every rank's position (collective: call on all ranks before save_state)."""
        from accelerate.utils import gather_object

        mine = {"rank": self.rank, "consumed": self.consumed, "next": self.next}
        self.table = {e["rank"]: e for e in gather_object([mine])}

    def state_dict(self) -> dict:
        return {"world": self.world, "workers": self.workers, "segment": self.segment, "basis": self.basis,
                "bad": self.bad, "ranks": self.table}

    def load_state_dict(self, state: dict) -> None:
        self.bad = dict(state.get("bad", {}))
        if (state["world"], state["workers"]) == (self.world, self.workers):
            self.segment, self.basis = state["segment"], state["basis"]
            mine = state["ranks"][self.rank]
            self.consumed, self.next = mine["consumed"], {int(k): v for k, v in mine["next"].items()}
            return
        old = DataPosition(0, state["world"], state["workers"], self.seed, self.counts)
        old.basis = state["basis"]
        cursors = {int(r) * old.workers + int(w): n["end"] for r, e in state["ranks"].items() for w, n in e["next"].items()}
        self.basis, self.segment = old.schedule().rebase(cursors), state["segment"] + 1
        self.consumed, self.next = 0, {}


def max_bad(setting: int, counts: list[list[int]]) -> int:
    """``data.max_bad_tars`` resolved: -1 means 1 % of all training tars, rounded up."""
    return setting if setting >= 0 else math.ceil(0.01 * sum(len(c) for c in counts))

"""The skip-rate guard: a corpus that is mostly unusable stops the run with one line, instead of
finishing with exit 0 and nothing in the shards.

Single bad rows are skipped and counted as always; what stops the run is one reason covering more
than ``max_fraction`` of the first ``FIRST_ROWS`` rows a process sees, or of any one unit. The line
names the reason, the count, and the first such row with what was wrong with it.
"""

from __future__ import annotations

from tatk.errors import UserError

FIRST_ROWS = 1000


class SkipGuard:
    """Watches skips as rows are written; ``row`` for every row, ``unit_done`` at the end of each unit."""

    def __init__(self, max_fraction: float):
        self.max_fraction = max_fraction
        self.seen, self.counts, self.first = 0, {}, {}  # over this process's first rows
        self.examples: dict[tuple[str, str], str] = {}  # (unit, reason) → first example row

    def row(self, unit: str, reason: str | None, example: str) -> None:
        """Count one row (``reason`` None when kept); ``example`` names the row and what was wrong."""
        if reason:
            self.examples.setdefault((unit, reason), example)
        if self.seen >= FIRST_ROWS:
            return
        self.seen += 1
        if reason:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            self.first.setdefault(reason, example)
        if self.seen == FIRST_ROWS:
            self._check(self.counts, self.seen, self.first, f"the first {FIRST_ROWS} rows")

    def unit_done(self, unit: str, rows: int, skipped: dict[str, int]) -> None:
        first = {reason: self.examples.pop((unit, reason), "") for reason in skipped}
        self._check(skipped, rows, first, f"unit {unit}")

    def finish(self) -> None:
        """At the end of a process's work: judge the first rows even when there were fewer than FIRST_ROWS."""
        if self.seen < FIRST_ROWS:
            self._check(self.counts, self.seen, self.first, f"all {self.seen} rows")

    def _check(self, counts: dict[str, int], total: int, first: dict[str, str], where: str) -> None:
        for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            if total and n / total > self.max_fraction:
                raise UserError(f"{reason}: {n} of {total} rows of {where} skipped (over --max-skip-fraction "
                                f"{self.max_fraction:g}); first: {first.get(reason, '?')}")

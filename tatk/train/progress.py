"""Training progress for people: on a terminal, a live rich bar (step / total, steps/s, samples/s, loss,
elapsed, ETA) under the log lines; otherwise (a log file, a job scheduler) the log lines themselves carry
step / total, elapsed and ETA. Only the main process shows anything (its console is the only non-quiet one).

The bar is fed from numbers the loop already has on the CPU: no per-step device sync for it (the loss
shown is the one of the latest log line)."""

from __future__ import annotations

import time
from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def figure(value) -> str:
    """A log-line number: 4 significant digits, whole from 10,000 up (10980, not 1.098e+04); counts as they are."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


class StepProgress:
    """Progress of steps ``start + 1 .. total`` of this run segment (a resumed run counts from its checkpoint)."""

    def __init__(self, console: Console, start: int, total: int):
        self.start, self.total, self.t0 = start, total, time.perf_counter()
        self.step, self.bar = start, None
        if console.is_terminal and not console.quiet:
            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[speed]}"),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
            self.task = self.bar.add_task("train", total=total, completed=start, speed="")
            self.bar.start()
        self.samples_per_s, self.loss = None, None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self) -> float | None:
        """Seconds left at this segment's mean pace so far (validation and checkpoint time included)."""
        done = self.step - self.start
        return self.elapsed() / done * (self.total - self.step) if done else None

    def advance(self, step: int) -> None:
        self.step = step
        if self.bar is not None:
            rate = (step - self.start) / max(self.elapsed(), 1e-9)
            parts = [f"{rate:.2f} steps/s"]
            if self.samples_per_s is not None:
                parts.append(f"{self.samples_per_s:.1f} samples/s")
            if self.loss is not None:
                parts.append(f"loss {self.loss:.4g}")
            self.bar.update(self.task, completed=step, speed="  ".join(parts))

    def logged(self, stats: dict) -> str:
        """Note a log line's numbers; returns the timing text the line ends with."""
        self.samples_per_s = stats.get("samples_per_s", self.samples_per_s)
        self.loss = stats.get("loss", self.loss)
        self.advance(self.step)  # show them on the bar now
        eta = self.eta()
        return f"elapsed {clock(self.elapsed())}  eta {clock(eta) if eta is not None else '?'}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

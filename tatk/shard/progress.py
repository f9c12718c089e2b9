"""Console feedback for long commands: a rich progress bar while sharding and a summary table after."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class ShardProgress:
    """Utterances done (of ``total`` when the corpus says how many rows this process has; then an ETA),
    audio hours and audio-hours per second (the rate that matters for sharding)."""

    def __init__(self, console: Console, enabled: bool = True, total: int | None = None):
        self.enabled, self.audio_seconds, self.done, self.skipped, self.total = enabled, 0.0, 0, 0, total
        done = "[bold]{task.completed:,.0f}[/]" + (" / {task.total:,.0f}" if total is not None else "") + " utt"
        self.bar = Progress(
            SpinnerColumn(), TextColumn(done), BarColumn(bar_width=None),
            TextColumn("{task.fields[hours]:.3f} h audio"), TextColumn("{task.fields[rate]:.4f} audio-h/s"),
            TextColumn("{task.fields[skipped]} skipped"), TimeElapsedColumn(),
            *([TextColumn("eta"), TimeRemainingColumn()] if total is not None else []),
            console=console, disable=not enabled, transient=False,
        )

    def __enter__(self) -> "ShardProgress":
        self.bar.__enter__()
        self.task = self.bar.add_task("shard", total=self.total, hours=0.0, rate=0.0, skipped=0)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def advance(self, seconds: float, skipped: bool = False) -> None:
        self.audio_seconds += seconds
        self.done += 1
        self.skipped += skipped
        rate = self.audio_seconds / 3600 / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, advance=1, hours=self.audio_seconds / 3600, rate=rate, skipped=self.skipped)


def print_summary(console: Console, out: Path, split: str, manifest: dict, wall_s: float) -> None:
    """One table: what was written, what was skipped and why, and how fast."""
    info = manifest["splits"][split]
    enc = manifest["encoder"]
    table = Table(title=f"tatk shard → {out}", show_header=False)
    table.add_row("split", split)
    stored = enc.get("dtype") or f"audio: {manifest['audio']['format']} {manifest['audio']['sample_rate']} Hz"
    table.add_row("encoder", f"{enc['id']} ({enc['kind']}, dim {enc['dim']}, {enc['frame_rate']:g} frames/s, {stored})")
    table.add_row("units done", f"{len(info['units'])} / {len(info['units'])}")
    skipped_n = sum(info["skipped"].values())
    table.add_row("rows", f"{info['samples']:,} kept, {skipped_n:,} skipped, {info['rows']:,} total")
    table.add_row("shards", str(len(info["shards"])))
    table.add_row("audio", f"{info['hours']:.3f} h")
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(info["skipped"].items())) or "none"
    table.add_row("skipped", f"{skipped_n} ({skipped})")
    table.add_row("wall time", f"{wall_s:.1f} s")
    console.print(table)


def print_verified(console: Console, out: Path, found: dict[str, dict]) -> None:
    """The result of ``tatk shard --verify``: per split, units done / total and rows kept / skipped / total."""
    table = Table(title=f"tatk shard --verify {out}: complete")
    for column in ("split", "units done", "rows kept", "skipped", "total"):
        table.add_column(column)
    for split, f in found.items():
        table.add_row(split, f"{f['units']} / {f['units']}", f"{f['kept']:,}", f"{f['skipped']:,}", f"{f['rows']:,}")
    console.print(table)

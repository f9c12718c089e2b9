"""Units of work: a corpus listed as source files (or fixed blocks of a listing) before any row is read.

A *unit* is what one worker reads, whole, exactly once:

- one parquet data file of a Hub dataset (resolved from the dataset's data files by ``datasets``, never
  by iterating a stream; a local folder laid out like a Hub repo goes the same way) or of a local folder;
- a block of ``BLOCK_ROWS`` rows of a ``metadata.csv`` or ``*.jsonl`` listing (byte offsets found by one
  pass over the listing, so a worker seeks straight to its block).

``read_unit`` yields a unit's records as plain dicts and counts the source bytes it read, so a run can
say how much of the corpus each process touched. A record that a listing cannot parse comes back as
``{"_bad": "what is wrong"}``, to be skipped and counted, never a crash in a worker.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from tatk.errors import UserError, first_line
from tatk.files import CountingFile

BLOCK_ROWS = 1000  # rows per unit of a metadata.csv / JSONL listing
PARQUET_BATCH = 100  # rows per Arrow batch read from a parquet unit (LoquaciousSet writes 100-row groups)


@dataclass
class Unit:
    """One unit of work; ``index`` is its place in the listing and names its tars (``u00042``)."""

    index: int
    kind: str  # parquet | csv | jsonl
    path: str  # local path or fsspec URL (hf://datasets/...@revision/...)
    first: int = 0  # listing blocks: first row of the block within the listing
    rows: int | None = None  # rows in the unit when known before reading (listing blocks, --max-samples)
    start: int = 0  # listing blocks: byte range of the block
    stop: int = 0
    header: str = ""  # csv: the header line, to parse a block on its own
    size: int | None = None  # local files: size and mtime say whether the source changed
    mtime: float | None = None
    revision: str | None = None  # Hub files: the commit the URL points at

    @property
    def name(self) -> str:
        return f"u{self.index:05d}"

    def source(self) -> dict:
        """What identifies this unit's input: a done unit whose source differs is redone."""
        return {k: v for k, v in asdict(self).items() if k not in ("index", "header") and v is not None}


def url_revision(path: str) -> str | None:
    """The commit an hf:// data-file URL is pinned to (``hf://datasets/owner/name@<sha>/...``)."""
    m = re.search(r"@([0-9a-f]{40})/", path)
    return m.group(1) if m else None


def _stat(path: str) -> dict:
    if "://" in path:
        revision = url_revision(path)
        return {"revision": revision} if revision else {}
    st = os.stat(path)
    return {"size": st.st_size, "mtime": st.st_mtime}


def hub_data_files(dataset: str, subset: str | None, split: str, revision: str | None = None) -> tuple[list[str], object]:
    """The split's data files (local paths or hf:// URLs pinned to a commit) and the features its card
    declares (or None), resolved by ``datasets`` from the repo's file listing: no row is read.
    ``revision`` pins the commit (a resumed job finishes on the commit it started on)."""
    from datasets import load_dataset_builder

    looks_local = dataset.startswith((".", "/", "~")) or Path(dataset).exists()
    if looks_local and not Path(dataset).expanduser().exists():
        raise UserError(f"--dataset {dataset!r}: no such folder")
    try:
        builder = load_dataset_builder(dataset, subset, revision=revision)
    except Exception as e:
        raise UserError(f"dataset {dataset!r} (config {subset!r}) cannot be opened: {first_line(e, 300)}") from None
    files = builder.config.data_files or {}
    if split not in files:
        raise UserError(f"dataset {dataset!r} (config {subset!r}) has no split {split!r} (has {sorted(files)})")
    return [str(f) for f in files[split]], builder.info.features


def parquet_units(files: list[str]) -> list[Unit]:
    """One unit per parquet file, in the listing's order."""
    other = [f for f in files if not f.endswith(".parquet")]
    if other:
        raise UserError(f"{other[0]}: only parquet data files can be sharded as units (this is not one)")
    return [Unit(i, "parquet", f, **_stat(f)) for i, f in enumerate(files)]


class _OffsetLines:
    """Decoded lines of a binary file; ``pos`` is where the line after the last one yielded starts."""

    def __init__(self, f):
        self.f, self.pos = f, f.tell()

    def __iter__(self) -> Iterator[str]:
        for raw in self.f:
            self.pos += len(raw)
            yield raw.decode("utf-8")


def listing_units(paths: list[Path], rows_limit: int | None = None) -> list[Unit]:
    """Blocks of ``BLOCK_ROWS`` rows of each listing, with their byte ranges (one pass over each file)."""
    units: list[Unit] = []
    for path in paths:
        kind = "csv" if path.suffix == ".csv" else "jsonl"
        st = _stat(str(path))
        with open(path, "rb") as f:
            header = f.readline().decode("utf-8") if kind == "csv" else ""
            lines = _OffsetLines(f)
            # csv.reader pulls exactly the lines of one record (quoted newlines included), so the
            # position after each record is where the next one starts.
            records = csv.reader(lines) if kind == "csv" else (line for line in lines if line.strip())
            n, first, block_start = 0, 0, lines.pos

            def block() -> Unit:
                return Unit(len(units), kind, str(path), first, n - first, block_start, lines.pos, header, **st)

            for _ in records:
                n += 1
                if n - first == BLOCK_ROWS:
                    units.append(block())
                    first, block_start = n, lines.pos
            if n > first:
                units.append(block())
    return limit_units(units, rows_limit)


def limit_units(units: list[Unit], rows_limit: int | None) -> list[Unit]:
    """The units covering the first ``rows_limit`` rows (for trials); parquet row counts come from the footers."""
    if rows_limit is None:
        return units
    kept, total = [], 0
    for u in units:
        if total >= rows_limit:
            break
        rows = u.rows if u.rows is not None else parquet_rows(u.path)
        u.rows = min(rows, rows_limit - total)
        kept.append(u)
        total += u.rows
    return kept


def parquet_rows(path: str) -> int:
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def listing_header(unit: Unit) -> list[str]:
    """Column names of a listing unit (the csv header, or the keys of its first JSON line)."""
    if unit.kind == "csv":
        return next(csv.reader([unit.header]))
    with open(unit.path, "rb") as f:
        f.seek(unit.start)
        for line in f:
            if line.strip():
                try:
                    return list(json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    raise UserError(f"{unit.path}: the first line is not a JSON object") from None
    return []


def read_unit(unit: Unit, columns: list[str], counter: CountingFile | None = None) -> Iterator[dict]:
    """The unit's records (only ``columns`` for parquet). Pass ``counter`` to learn the bytes read:
    it is set up by the caller with ``open_unit``."""
    f = counter or open_unit(unit)
    with f:
        if unit.kind == "parquet":
            yield from _parquet_records(unit, f, columns)
        else:
            yield from _listing_records(unit, f)


def open_unit(unit: Unit) -> CountingFile:
    """The unit's source file, opened for reading, counting bytes read."""
    import fsspec

    return CountingFile(fsspec.open(unit.path, "rb").open())


def _parquet_records(unit: Unit, f, columns: list[str]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    want = [c for c in columns if c in pf.schema_arrow.names]
    n, limit = 0, unit.rows if unit.rows is not None else pf.metadata.num_rows
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH, columns=want):
        for rec in batch.to_pylist():
            if n == limit:
                return
            n += 1
            yield rec
    if n != limit:
        raise OSError(f"{unit.path}: read {n} rows, its footer says {limit}")


def _listing_records(unit: Unit, f) -> Iterator[dict]:
    f.seek(unit.start)
    text = io.TextIOWrapper(io.BufferedReader(_Window(f, unit.stop - unit.start)), encoding="utf-8", newline="")
    if unit.kind == "csv":
        names = next(csv.reader([unit.header]))
        for values in csv.reader(text):
            if len(values) != len(names):
                yield {"_bad": f"{len(values)} fields, the header has {len(names)}"}
            else:
                yield dict(zip(names, values))
        return
    for line in text:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield {"_bad": f"not a JSON line: {first_line(e)}"}
            continue
        yield rec if isinstance(rec, dict) else {"_bad": "not a JSON object"}


class _Window(io.RawIOBase):
    """The next ``n`` bytes of a file, as a file of its own (a listing block)."""

    def __init__(self, f, n: int):
        self.f, self.left = f, n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.f.read(min(len(b), self.left))
        b[: len(data)] = data
        self.left -= len(data)
        return len(data)

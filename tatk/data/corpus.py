"""Corpora: where utterances come from, as ``Row`` records of units of work (see ``listing.py``).

Three sources, one record type:

- a Hub dataset by id, config and split (LoquaciousSet's schema by default: ``ID``, ``duration``,
  ``wav`` as undecoded audio bytes, ``spk_id``, ``sex``, ``text``), its parquet data files resolved by
  ``datasets``; a local folder laid out like a Hub dataset repo goes through exactly the same call;
- a local folder of parquet files in that schema;
- a local folder with ``metadata.csv`` or ``*.jsonl`` listing ``file,text`` (or Hugging Face
  audiofolder's ``file_name`` with ``text``, ``transcription`` or ``sentence``).

A row is named by its unit and its place in the unit: that is its sample key, so the same input
always gives the same shards, however the units are spread over processes and workers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tatk.data.listing import (Unit, hub_data_files, limit_units, listing_header, listing_units, parquet_rows,
                               parquet_units, read_unit)

from tatk.errors import UserError, first_line

TEXT_TRANSFORMS = {"lower": str.lower, "upper": str.upper, "none": lambda s: s}


@dataclass
class Row:
    """One input utterance, not yet decoded."""

    unit: int  # the unit of work it belongs to
    index: int  # position in its unit
    id: str
    audio: bytes | str  # encoded bytes, or a file path
    text: str  # already transformed (e.g. lower-cased)
    speaker: str
    duration: float | None  # as stated by the corpus, used to catch truncated files
    source: str
    bad: str = ""  # set when the listing row itself is missing or malformed (skipped as bad_row)

    @property
    def key(self) -> str:
        """WebDataset key: unique (unit and row prefix), sorts in corpus order, free of the dots WebDataset splits on."""
        return f"{self.unit:05d}-{self.index:07d}_" + re.sub(r"[^A-Za-z0-9_-]+", "-", self.id)[:80]


@dataclass
class CorpusSpec:
    """What to read. Exactly one of ``dataset`` and ``local`` is set."""

    dataset: str | None = None
    subset: str | None = None
    local: Path | None = None
    split: str = "train"
    audio_column: str = "wav"
    text_column: str = "text"
    id_column: str = "ID"
    speaker_column: str = "spk_id"
    text_transform: str = "lower"



# Column names people use for a listing's audio file and its transcript, after the ones asked for
# (Hugging Face audiofolder: file_name; Common Voice: sentence; many ASR sets: transcription).
AUDIO_FALLBACKS = ("file_name", "file")
TEXT_FALLBACKS = ("transcription", "sentence")


class Corpus:
    """An opened corpus: its units are listed and its columns checked on construction, before any heavy work.

    ``max_rows`` keeps only the units covering the first that many rows (for trials); ``revision`` pins
    a Hub dataset's commit.
    """

    def __init__(self, spec: CorpusSpec, max_rows: int | None = None, revision: str | None = None):
        if (spec.dataset is None) == (spec.local is None):
            raise UserError("give exactly one of --dataset and --local")
        if spec.text_transform not in TEXT_TRANSFORMS:
            raise UserError(f"--text-transform {spec.text_transform!r}: expected one of {sorted(TEXT_TRANSFORMS)}")
        self.spec = spec
        self.transform = TEXT_TRANSFORMS[spec.text_transform]
        if spec.dataset is not None:
            self.name = spec.dataset
            files, features = hub_data_files(spec.dataset, spec.subset, spec.split, revision)
            self._open_parquet(spec.dataset, files, features, max_rows)
        else:
            self.name = str(spec.local)
            self._open_local(Path(spec.local), max_rows)

    # -- sources ---------------------------------------------------------------------------------
    def _open_parquet(self, name: str, files: list[str], features, max_rows: int | None) -> None:
        self.units = limit_units(parquet_units(files), max_rows)
        if not self.units:
            raise UserError(f"{name!r}: split {self.spec.split!r} has no data files")
        if features is not None:
            columns = list(features)
        else:  # no features in the card: the first file's parquet footer names them
            import fsspec
            import pyarrow.parquet as pq

            with fsspec.open(self.units[0].path, "rb") as f:
                columns = pq.ParquetFile(f).schema_arrow.names
        self.audio_col, self.text_col = self.spec.audio_column, self.spec.text_column
        for option, column in (("--audio-column", self.audio_col), ("--text-column", self.text_col)):
            if column not in columns:
                raise UserError(f"{option} {column!r} is not a column of {name!r}; columns are {columns}")

    def _open_local(self, root: Path, max_rows: int | None) -> None:
        if not root.is_dir():
            raise UserError(f"--local {str(root)!r}: no such folder")
        if (root / self.spec.split).is_dir():
            root = root / self.spec.split
        listings = [root / "metadata.csv"] if (root / "metadata.csv").exists() else sorted(root.glob("*.jsonl"))
        if listings:
            self.root = root
            self.units = listing_units(listings, max_rows)
            self._listing_columns(listings[0])
            return
        parquet = sorted(str(p) for p in root.rglob("*.parquet"))
        if not parquet:
            raise UserError(f"--local {str(root)!r}: found no metadata.csv, *.jsonl or *.parquet")
        # A folder of several splits: keep the files named for ours.
        ours = [p for p in parquet if re.search(rf"(^|[/_.-]){re.escape(self.spec.split)}([/_.-]|$)", p[len(str(root)):])]
        self._open_parquet(str(root), ours or parquet, None, max_rows)

    def _listing_columns(self, first: Path) -> None:
        header = listing_header(self.units[0]) if self.units else []
        spec = self.spec
        audio = [spec.audio_column, *AUDIO_FALLBACKS]
        # Fall back to other text columns only when --text-column was left at its default.
        text = [spec.text_column, *TEXT_FALLBACKS] if spec.text_column == "text" else [spec.text_column]
        found = [next((c for c in names if c in header), None) for names in (audio, text)]
        for names, col in zip((audio, text), found):
            if header and col is None:
                raise UserError(f"{first}: no {' / '.join(repr(c) for c in names)} column (has {header})")
        self.audio_col, self.text_col = found

    # -- rows ------------------------------------------------------------------------------------
    def unit_rows(self, unit: Unit, counter=None) -> Iterator[Row]:
        """The rows of one unit, in order; malformed listing rows come back with ``bad`` set."""
        spec = self.spec
        columns = [self.audio_col, self.text_col, spec.id_column, spec.speaker_column, "duration"]
        listing = unit.kind != "parquet"
        for k, r in enumerate(read_unit(unit, columns, counter)):
            row = Row(unit.index, k, str(k), b"", "", "", None, self.name)
            try:
                if "_bad" in r:
                    raise ValueError(r["_bad"])
                audio = r[self.audio_col]
                if isinstance(audio, dict):
                    audio = audio.get("bytes") or audio.get("path")
                if not audio:
                    raise ValueError(f"no audio in column {self.audio_col!r}")
                ident = r.get(spec.id_column) or (str(Path(audio).with_suffix("")) if listing else None)
                row.id = str(ident if ident is not None else unit.first + k)
                row.audio = str(self.root / audio) if listing else audio
                row.source = row.audio if listing else self.name
                row.text = " ".join(self.transform(r[self.text_col] or "").split())
                row.speaker = str(r.get(spec.speaker_column) or r.get("speaker") or "")
                row.duration = float(r["duration"]) if r.get("duration") else None
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                row.bad = f"row {unit.first + k + 1} of {unit.path}: {first_line(e) if not isinstance(e, KeyError) else f'no {e} column'}"
                row.audio = b""
            yield row

    def count(self, limit: int | None = None, units: list[Unit] | None = None, footers: bool = True) -> int | None:
        """Input rows of ``units`` (default: all) when known without reading audio (listing blocks; with
        ``footers``, the footers of local parquet files), capped at ``limit``; None when one is unknown. A
        progress total is a nicety, never worth a download, nor (``footers=False``, as ``tatk shard`` asks)
        opening a file another worker owns."""
        total = 0
        for u in self.units if units is None else units:
            if u.rows is None and (not footers or "://" in u.path):
                return None
            total += u.rows if u.rows is not None else parquet_rows(u.path)
        return total if limit is None else min(total, limit)

    def rows(self, limit: int | None = None) -> Iterator[Row]:
        """Every row of every unit in listing order, the first ``limit`` at most (malformed rows included)."""
        n = 0
        for unit in self.units:
            for row in self.unit_rows(unit):
                if limit is not None and n >= limit:
                    return
                n += 1
                yield row

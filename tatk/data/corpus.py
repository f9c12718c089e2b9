"""Corpora: where utterances come from, as a stream of ``Row`` records in a fixed order.

Three sources, one record type:

- a Hub dataset by id, config and split, streamed (LoquaciousSet's schema by default: ``ID``,
  ``duration``, ``wav`` as undecoded audio bytes, ``spk_id``, ``sex``, ``text``); a local folder laid
  out like a Hub dataset repo goes through exactly the same ``load_dataset`` call;
- a local folder of parquet files in that schema;
- a local folder with ``metadata.csv`` or ``*.jsonl`` listing ``file,text``.

Rows are numbered in stream order. That number is the resume position and the sample key, so the
same input always gives the same shards.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tatk.errors import UserError, first_line

TEXT_TRANSFORMS = {"lower": str.lower, "upper": str.upper, "none": lambda s: s}


@dataclass
class Row:
    """One input utterance, not yet decoded."""

    index: int  # position in the stream: resume point and key prefix
    id: str
    audio: bytes | str  # encoded bytes, or a file path
    text: str  # already transformed (e.g. lower-cased)
    speaker: str
    duration: float | None  # as stated by the corpus, used to catch truncated files
    source: str

    @property
    def key(self) -> str:
        """WebDataset key: unique (index prefix) and free of the dots WebDataset splits on."""
        return f"{self.index:09d}_" + re.sub(r"[^A-Za-z0-9_-]+", "-", self.id)[:80]


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


class Corpus:
    """An opened corpus: columns are checked on construction, before any heavy work."""

    def __init__(self, spec: CorpusSpec):
        if (spec.dataset is None) == (spec.local is None):
            raise UserError("give exactly one of --dataset and --local")
        if spec.text_transform not in TEXT_TRANSFORMS:
            raise UserError(f"--text-transform {spec.text_transform!r}: expected one of {sorted(TEXT_TRANSFORMS)}")
        self.spec = spec
        self.transform = TEXT_TRANSFORMS[spec.text_transform]
        if spec.dataset is not None:
            self.name = spec.dataset
            self._records = self._open_datasets(spec.dataset, spec.subset)
        else:
            self.name = str(spec.local)
            self._records = self._open_local(Path(spec.local))

    # -- sources ---------------------------------------------------------------------------------
    def _open_datasets(self, dataset: str, subset: str | None, data_files: list[str] | None = None):
        from datasets import Audio, load_dataset

        spec = self.spec
        looks_local = dataset.startswith((".", "/", "~")) or Path(dataset).exists()
        if looks_local and not Path(dataset).expanduser().exists():
            raise UserError(f"--dataset {dataset!r}: no such folder")
        try:
            if data_files is not None:
                ds = load_dataset("parquet", data_files={spec.split: data_files}, split=spec.split, streaming=True)
            else:
                ds = load_dataset(dataset, subset, split=spec.split, streaming=True)
        except Exception as e:
            raise UserError(f"dataset {dataset!r} (config {subset!r}, split {spec.split!r}) cannot be opened: {first_line(e, 300)}") from None
        columns = list(ds.features) if ds.features is not None else list(next(iter(ds)).keys())
        for option, column in (("--audio-column", spec.audio_column), ("--text-column", spec.text_column)):
            if column not in columns:
                raise UserError(f"{option} {column!r} is not a column of {dataset!r}; columns are {columns}")
        self._count = lambda: _known_rows(ds, spec.split, data_files, (dataset, subset) if looks_local else None)
        if ds.features is not None and isinstance(ds.features[spec.audio_column], Audio):
            # Keep the encoded bytes: we decode with soundfile + soxr ourselves, in worker processes.
            ds = ds.cast_column(spec.audio_column, Audio(decode=False))

        def records() -> Iterator[dict]:
            for row in ds:
                audio = row[spec.audio_column]
                if isinstance(audio, dict):
                    audio = audio.get("bytes") or audio.get("path")
                yield dict(
                    id=row.get(spec.id_column), audio=audio, text=row[spec.text_column],
                    speaker=row.get(spec.speaker_column), duration=row.get("duration"), source=dataset,
                )

        return records

    def _open_local(self, root: Path):
        if not root.is_dir():
            raise UserError(f"--local {str(root)!r}: no such folder")
        if (root / self.spec.split).is_dir():
            root = root / self.spec.split
        manifests = [root / "metadata.csv"] if (root / "metadata.csv").exists() else sorted(root.glob("*.jsonl"))
        if manifests:
            return self._open_listing(root, manifests)
        parquet = sorted(str(p) for p in root.rglob("*.parquet"))
        if not parquet:
            raise UserError(f"--local {str(root)!r}: found no metadata.csv, *.jsonl or *.parquet")
        # A folder of several splits: keep the files named for ours.
        ours = [p for p in parquet if re.search(rf"(^|[/_.-]){re.escape(self.spec.split)}([/_.-]|$)", p[len(str(root)):])]
        return self._open_datasets(str(root), None, data_files=ours or parquet)

    def _open_listing(self, root: Path, manifests: list[Path]):
        def lines(path: Path) -> Iterator[dict]:
            with open(path, newline="", encoding="utf-8") as f:
                if path.suffix == ".csv":
                    yield from csv.DictReader(f)
                else:
                    for n, line in enumerate(f, 1):
                        if line.strip():
                            try:
                                yield json.loads(line)
                            except json.JSONDecodeError:
                                raise UserError(f"{path}:{n}: not a JSON line") from None

        first = next(lines(manifests[0]), {})
        audio_col = self.spec.audio_column if self.spec.audio_column in first else "file"
        text_col = self.spec.text_column
        for column in (audio_col, text_col):
            if first and column not in first:
                raise UserError(f"{manifests[0]}: no {column!r} column (has {list(first)})")

        def count() -> int:  # data rows of the listing files (reading them is cheap next to the audio)
            return sum(1 for path in manifests for _ in lines(path))

        self._count = count

        def records() -> Iterator[dict]:
            for path in manifests:
                for row in lines(path):
                    file = root / row[audio_col]
                    yield dict(
                        id=row.get(self.spec.id_column) or str(Path(row[audio_col]).with_suffix("")),
                        audio=str(file), text=row[text_col], speaker=row.get(self.spec.speaker_column) or row.get("speaker"),
                        duration=float(row["duration"]) if row.get("duration") else None, source=str(file),
                    )

        return records

    def count(self, limit: int | None = None) -> int | None:
        """Input rows of the split when known without reading the audio (listing files, parquet footers, the
        dataset's published split sizes), capped at ``limit``; None when unknown."""
        n = self._count()
        return None if n is None else (n if limit is None else min(n, limit))

    # -- the stream ------------------------------------------------------------------------------
    def rows(self, start: int = 0, rank: int = 0, world: int = 1, limit: int | None = None) -> Iterator[Row]:
        """Rows with ``index >= start`` and ``index % world == rank``, the first ``limit`` input rows at most."""
        for index, r in enumerate(self._records()):
            if limit is not None and index >= limit:
                return
            if index < start or index % world != rank:
                continue
            yield Row(
                index=index, id=str(r["id"] if r["id"] is not None else index), audio=r["audio"],
                text=" ".join(self.transform(r["text"] or "").split()), speaker=str(r["speaker"] or ""),
                duration=float(r["duration"]) if r["duration"] else None, source=r["source"],
            )


def _known_rows(ds, split: str, data_files: list[str] | None, local: tuple[str, str | None] | None) -> int | None:
    """Rows of a streaming dataset without reading it: the footers of local parquet files, else the split
    size the dataset publishes; None when neither is known (a progress total is a nicety, never an error)."""
    import pyarrow.parquet as pq

    if data_files is None and local is not None:  # a Hub-shaped local folder: the files datasets resolved
        from datasets import load_dataset_builder

        try:
            files = load_dataset_builder(*local).config.data_files.get(split)
        except Exception:  # noqa: BLE001  any builder trouble only costs the total
            files = None
        data_files = [str(f) for f in files] if files and all(str(f).endswith(".parquet") for f in files) else None
    if data_files is not None:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in data_files)
    splits = getattr(getattr(ds, "info", None), "splits", None) or {}
    return splits[split].num_examples if split in splits and splits[split].num_examples else None

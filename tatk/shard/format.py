"""The shard format (version 2): WebDataset tars of encoder features (or audio), one set per unit of work, and a manifest.

A shard set is a folder::

    manifest.json                 content, encoder, feature settings, per-unit records, per-tar counts and
                                  sha256, feature statistics, skips
    <split>-u00042-000.tar        unit 42's first tar; per utterance: {key}.feats.npy (frames × dim),
                                  {key}.txt, {key}.json (content "audio", from `tatk shard --store audio`:
                                  {key}.flac instead of {key}.feats.npy, 16 kHz mono 16-bit; json n_frames
                                  is still the encoder's count)
    .state/<split>/               claims and done records of the units (see units.py)

A unit's tars depend only on the unit's rows: samples in row order, a new tar whenever the open one
reaches the target size, a fixed mtime. So they are byte-identical whatever the number of processes or
workers, the batch size or the order in which units finish, and a unit redone after a crash rewrites
exactly the same files.
"""

from __future__ import annotations

import io
import json
import os
import hashlib
import tarfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import webdataset as wds
from webdataset.tariterators import tarfile_samples

from tatk import __version__
from tatk.data.audio import SAMPLE_RATE
from tatk.errors import UserError
from tatk.files import atomic_write_text

FORMAT_VERSION = 2


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a complete shard set; a clear error when the folder is not one."""
    path = Path(folder) / "manifest.json"
    if not path.exists():
        raise UserError(f"{folder}: no manifest.json (not a shard folder, or `tatk shard` has not finished)")
    manifest = json.loads(path.read_text())
    # Format 1 (before units of work) wrote no version; its tars and manifest fields differ from today's.
    version = manifest.get("format_version", 1)
    if version != FORMAT_VERSION:
        raise UserError(f"{folder}: shards in format {version} (tatk {manifest.get('tatk_version', '?')}); this tatk reads "
                        f"format {FORMAT_VERSION}: shard the corpus again into a new --out")
    return manifest


def read_split(folder: str | Path, split: str) -> dict:
    """One split's manifest entry (shards, counts, stats); a clear error when the split is missing."""
    manifest = read_manifest(folder)
    if split not in manifest["splits"]:
        raise UserError(f"{folder}: no split {split!r} (has {sorted(manifest['splits'])})")
    return manifest["splits"][split]


def check_content(out: Path, manifest: dict, content: str) -> None:
    """Refuse to add ``content`` shards to a folder whose manifest says it holds the other kind."""
    have = manifest.get("content", "features") if manifest else content
    if have != content:
        raise UserError(f"--store {content}: {out} already holds {have} shards; use a new --out")


def shard_paths(folder: str | Path, split: str) -> list[str]:
    """Paths of a split's tars, from the manifest, in order."""
    return [str(Path(folder) / s["name"]) for s in read_split(folder, split)["shards"]]


def read_shard(path: str, keep: Callable[[int], bool] = lambda i: True) -> Iterator[dict]:
    """Raw samples ({"feats.npy": bytes, "txt": bytes, ...}) of one tar, those whose index passes ``keep``."""
    for i, raw in enumerate(tarfile_samples([{"url": path}])):
        if keep(i):
            yield raw


class FeatureStats:
    """Per-dimension running sums, merged exactly across shards and processes (float64)."""

    def __init__(self, dim: int):
        self.n, self.sum, self.sumsq = 0, np.zeros(dim), np.zeros(dim)

    def add(self, feats: np.ndarray) -> None:
        f = feats.astype(np.float64)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.sumsq += (f * f).sum(0)

    def merge(self, other: dict) -> None:
        self.n += other["n"]
        self.sum += np.asarray(other["sum"])
        self.sumsq += np.asarray(other["sumsq"])

    def to_dict(self) -> dict:
        return {"n": self.n, "sum": self.sum.tolist(), "sumsq": self.sumsq.tolist()}

    def mean_std(self) -> tuple[list[float], list[float]]:
        mean = self.sum / max(self.n, 1)
        var = np.maximum(self.sumsq / max(self.n, 1) - mean**2, 0.0)
        return mean.tolist(), np.sqrt(var).tolist()


def count_samples(path: Path) -> int:
    """Number of complete samples in a tar (raises on a damaged tar); a sample's .json is written last."""
    with tarfile.open(path) as tar:
        return len({m.name.split(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".json")})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class UnitWriter:
    """Writes one unit's tars; ``add`` every kept sample and ``skip`` every skipped row, in row order, then ``finish``.

    A tar is written under a temporary name and renamed when complete; the unit counts as done only
    once its record (returned by ``finish``) is written, after all its tars.
    """

    def __init__(self, out: Path, split: str, unit: int, target_bytes: int, dim: int, dtype: str, content: str = "features"):
        self.out, self.prefix, self.content = out, f"{split}-u{unit:05d}", content  # content: features | audio
        self.target_bytes, self.dtype = target_bytes, np.dtype(dtype)
        self.stats = FeatureStats(dim)
        self.tars: list[dict] = []
        self.kept, self.skipped, self._tar = 0, {}, None
        for stale in out.glob(f".{self.prefix}-*.tar.tmp*"):  # left by a killed attempt at this unit
            stale.unlink(missing_ok=True)

    def _open(self) -> None:
        self.name = f"{self.prefix}-{len(self.tars):03d}.tar"
        self.tmp = self.out / f".{self.name}.tmp{os.getpid()}"
        # A fixed mtime makes the same input give byte-identical tars. An int: with a float, tarfile adds a pax
        # header to every member (1 KB more each, and about as long again to read the tar's headers back).
        self._tar = wds.TarWriter(str(self.tmp), mtime=0)
        self.cur = dict(name=self.name, samples=0, seconds=0.0, frames=0)
        self.bytes = 0

    def add(self, key: str, payload: np.ndarray | bytes, text: str, meta: dict) -> None:
        """Append one utterance: ``payload`` is its features (frames, dim), or FLAC bytes for audio shards
        (then ``meta["n_frames"]`` is the encoder's frame count for it)."""
        if self._tar is None:
            self._open()
        if self.content == "audio":
            sample = {"__key__": key, "flac": payload, "txt": text, "json": json.dumps(meta)}
        else:
            stored = payload.astype(self.dtype)
            self.stats.add(stored)
            buf = io.BytesIO()
            np.save(buf, stored)
            sample = {"__key__": key, "feats.npy": buf.getvalue(), "txt": text, "json": json.dumps(meta)}
        self._tar.write(sample)
        # Tar overhead: a 512-byte header per member, and payloads padded to 512 bytes.
        self.bytes += sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if k != "__key__")
        self.cur["samples"] += 1
        self.cur["seconds"] += meta["duration"]
        self.cur["frames"] += meta["n_frames"]
        self.kept += 1
        if self.bytes >= self.target_bytes:
            self._close_tar()

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _close_tar(self) -> None:
        self._tar.close()
        self._tar = None
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        self.cur |= dict(bytes=self.tmp.stat().st_size, sha256=sha256_file(self.tmp))
        os.replace(self.tmp, self.out / self.name)
        self.tars.append(self.cur)

    def finish(self, unit: str, rows: int, source: dict) -> dict:
        """Close the last tar and return the unit's done record (``unit`` is its name, e.g. "u00042")."""
        if self._tar is not None:
            self._close_tar()
        names = {t["name"] for t in self.tars}
        for stray in self.out.glob(f"{self.prefix}-*.tar"):  # from an attempt on a source that has changed since
            if stray.name not in names:
                stray.unlink(missing_ok=True)
        return dict(unit=unit, source=source, rows=rows, kept=self.kept, skipped=self.skipped, tars=self.tars,
                    stats=self.stats.to_dict() if self.content == "features" else None)


def tar_size_problem(path: Path, recorded: int) -> str | None:
    """Why the tar at ``path`` is not the one recorded (missing, or not ``recorded`` bytes), or None: one stat,
    cheap at any scale (``tatk shard --verify`` reads every byte for the sha256)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return None if size == recorded else f"{path}: {size:,} bytes, its manifest records {recorded:,}"


def done_record_holds(out: Path, record: dict, source: dict) -> bool:
    """Whether a unit's done record still stands: same source, and every tar there at its recorded size
    (cheap enough to check on every resume; ``tatk shard --verify`` also checks contents and sha256)."""
    return record.get("source") == source and not any(tar_size_problem(out / t["name"], t["bytes"]) for t in record["tars"])


def write_manifest(out: Path, split: str, records: list[dict], encoder_info, command: str, content: str = "features") -> dict:
    """Merge the units' done records (in unit order) into ``manifest.json``, keeping other splits already there.

    ``content`` is "features" or "audio"; audio shards have no feature statistics (the encoder never
    ran) and record the stored audio format instead of a feature dtype.
    """
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    check_content(out, manifest, content)
    stats, skipped = FeatureStats(encoder_info.dim), {}
    for rec in records:
        if rec.get("stats"):
            stats.merge(rec["stats"])
        for reason, n in rec["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    shards = [dict(name=t["name"], samples=t["samples"], hours=t["seconds"] / 3600, frames=t["frames"],
                   bytes=t["bytes"], sha256=t["sha256"]) for rec in records for t in rec["tars"]]
    units = [dict(unit=r["unit"], source=r["source"], rows=r["rows"], kept=r["kept"], skipped=r["skipped"],
                  tars=[t["name"] for t in r["tars"]]) for r in records]
    mean, std = stats.mean_std()
    info = asdict(encoder_info)
    manifest.update(
        format_version=FORMAT_VERSION, tatk_version=__version__, command=command, content=content,
        feature_extractor=info.pop("feature_extractor"), encoder=info,
    )
    entry = dict(shards=shards, samples=sum(s["samples"] for s in shards), hours=sum(s["hours"] for s in shards),
                 frames=sum(s["frames"] for s in shards), rows=sum(r["rows"] for r in records), skipped=skipped,
                 units=units)
    if content == "audio":
        del info["dtype"]  # no features stored; frame rate and dim say what the encoder will make of the audio
        manifest["audio"] = dict(format="flac", subtype="PCM_16", sample_rate=SAMPLE_RATE, channels=1)
    else:
        entry["stats"] = dict(mean=mean, std=std)
    manifest.setdefault("splits", {})[split] = entry
    atomic_write_text(path, json.dumps(manifest, indent=1))
    return manifest

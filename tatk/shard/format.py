"""The shard format: WebDataset tars of encoder features (or audio), a manifest, and the state that makes runs resumable.

A shard set is a folder::

    manifest.json            content, encoder, feature settings, per-shard counts, feature statistics, skips
    <split>-000000.tar       per utterance: {key}.feats.npy (frames × dim), {key}.txt, {key}.json
                             (content "audio", from `tatk shard --store audio`: {key}.flac instead of
                             {key}.feats.npy, 16 kHz mono 16-bit; json n_frames is still the encoder's count)
    .state/<split>.rank<r>-of<w>.json   each process's finished shards, rewritten after every shard

Each process covers the input rows ``index % world == rank`` in order and cuts them into shards; a
shard record names the row range it covers (``first``, ``next``) and counts what it kept and skipped,
so a re-run keeps verified shards, restarts at the first unfinished one, and loses or repeats nothing.
"""

from __future__ import annotations

import io
import json
import os
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

STATE_DIR = ".state"


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a complete shard set; a clear error when the folder is not one."""
    path = Path(folder) / "manifest.json"
    if not path.exists():
        raise UserError(f"{folder}: no manifest.json (not a shard folder, or `tatk shard` has not finished)")
    return json.loads(path.read_text())


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


class ShardWriter:
    """Writes one process's shards and its resumable state.

    Call ``add`` for every kept sample and ``skip`` for every skipped row, in row order, ``cut``
    between encoding windows, and ``close`` at the end. A shard is written to a temporary name and renamed when complete; only then
    is it recorded in the state file.
    """

    def __init__(self, out: Path, split: str, rank: int, world: int, target_bytes: int, dim: int, dtype: str, options: dict,
                 content: str = "features"):
        self.out, self.split, self.rank, self.world, self.options = out, split, rank, world, options
        self.content = content  # features | audio
        self.target_bytes, self.dim, self.dtype = target_bytes, dim, np.dtype(dtype)
        self.state_path = out / STATE_DIR / f"{split}.rank{rank}-of{world}.json"
        self.records: list[dict] = []
        self._tar = None

    # -- resume ----------------------------------------------------------------------------------
    def resume(self) -> int:
        """Load and verify finished shards; return the first input row index still to do.

        Refuses (one line) to continue a run made with other options or another number of processes,
        since its shards would not fit together with the new ones.
        """
        others = [p.name for p in (self.out / STATE_DIR).glob(f"{self.split}.rank*-of*.json") if not p.name.endswith(f"-of{self.world}.json")]
        if others:
            raise UserError(f"{self.out}: split {self.split!r} was started with another number of processes ({others[0]}); "
                            "re-run with the same number, or use a new --out")
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            changed = [k for k in self.options if state["options"].get(k) != self.options[k]]
            if changed:
                k = changed[0]
                raise UserError(f"{self.out}: split {self.split!r} was made with {k}={state['options'].get(k)!r}, not {self.options[k]!r}; "
                                "use a new --out to change it")
            records = state["shards"]
            for rec in records:
                if rec["name"] is not None:
                    path = self.out / rec["name"]
                    try:
                        ok = path.exists() and count_samples(path) == rec["samples"]
                    except (tarfile.TarError, OSError):
                        ok = False
                    if not ok:  # damaged or missing: redo from here on
                        break
                self.records.append(rec)
        for stale in self.out.glob(f".{self.split}-*.tar.tmp*"):
            stale.unlink()
        return self.records[-1]["next"] if self.records else 0

    @property
    def done(self) -> bool:
        return bool(self.records) and self.records[-1].get("last", False)

    # -- writing ---------------------------------------------------------------------------------
    def _open(self, first: int) -> None:
        local = len(self.records)
        self.name = f"{self.split}-{local * self.world + self.rank:06d}.tar"
        self.tmp = self.out / f".{self.name}.tmp{os.getpid()}"
        # A fixed mtime makes the same input give byte-identical tars.
        self._tar = wds.TarWriter(str(self.tmp), mtime=0.0)
        self.cur = dict(name=self.name, first=first, samples=0, seconds=0.0, frames=0, skipped={})
        self.stats = FeatureStats(self.dim)
        self.bytes = 0

    def add(self, index: int, key: str, payload: np.ndarray | bytes, text: str, meta: dict) -> None:
        """Append one utterance: ``payload`` is its features (frames, dim), or FLAC bytes for audio shards
        (then ``meta["n_frames"]`` is the encoder's frame count for it)."""
        if self._tar is None:
            self._open(index)
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

    def cut(self, next_index: int) -> None:
        """End the open shard here if it has reached the target size.

        Called only between encoding windows: a shard then always starts a window, so a resumed run
        encodes exactly the same batches as an uninterrupted one and writes identical bytes.
        """
        if self._tar is not None and self.bytes >= self.target_bytes:
            self._finish(next_index)

    def skip(self, index: int, reason: str) -> None:
        """Count a skipped input row in the shard that covers it."""
        if self._tar is None:
            self._open(index)
        self.cur["skipped"][reason] = self.cur["skipped"].get(reason, 0) + 1

    def close(self, next_index: int) -> None:
        """Finish the last shard (if any rows are open) and mark this process's part complete."""
        if self._tar is not None:
            self._finish(next_index)
        if self.records:
            self.records[-1]["last"] = True
        else:
            self.records.append(dict(name=None, first=0, next=next_index, samples=0, seconds=0.0, frames=0, skipped={}, last=True))
        self._save_state()

    def _finish(self, next_index: int) -> None:
        self._tar.close()
        self._tar = None
        rec = self.cur | {"next": next_index, "stats": self.stats.to_dict() if self.content == "features" else None}
        if rec["samples"]:
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.out / self.name)
        else:  # only skipped rows: nothing to store, but keep the counts
            self.tmp.unlink()
            rec["name"] = None
        self.records.append(rec)
        self._save_state()

    def _save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.state_path, json.dumps({"rank": self.rank, "world": self.world, "options": self.options, "shards": self.records}))


def write_manifest(out: Path, split: str, world: int, encoder_info, command: str, content: str = "features") -> dict:
    """Merge every process's state into ``manifest.json`` (keeping other splits already there).

    ``content`` is "features" or "audio"; audio shards have no feature statistics (the encoder never
    ran) and record the stored audio format instead of a feature dtype.
    """
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    check_content(out, manifest, content)
    records = []
    for rank in range(world):
        state = out / STATE_DIR / f"{split}.rank{rank}-of{world}.json"
        records += json.loads(state.read_text())["shards"]
    stats, skipped = FeatureStats(encoder_info.dim), {}
    for rec in records:
        if rec.get("stats"):
            stats.merge(rec["stats"])
        for reason, n in rec["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    shards = sorted(
        (dict(name=r["name"], samples=r["samples"], hours=r["seconds"] / 3600, frames=r["frames"]) for r in records if r["name"]),
        key=lambda s: s["name"],
    )
    mean, std = stats.mean_std()
    info = asdict(encoder_info)
    manifest.update(
        tatk_version=__version__, command=command, content=content, feature_extractor=info.pop("feature_extractor"),
        encoder=info,
    )
    entry = dict(shards=shards, samples=sum(s["samples"] for s in shards), hours=sum(s["hours"] for s in shards),
                 frames=sum(s["frames"] for s in shards), skipped=skipped)
    if content == "audio":
        del info["dtype"]  # no features stored; frame rate and dim say what the encoder will make of the audio
        manifest["audio"] = dict(format="flac", subtype="PCM_16", sample_rate=SAMPLE_RATE, channels=1)
    else:
        entry["stats"] = dict(mean=mean, std=std)
    manifest.setdefault("splits", {})[split] = entry
    atomic_write_text(path, json.dumps(manifest, indent=1))
    return manifest

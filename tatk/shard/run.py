"""``tatk shard``: corpus → frozen encoder → WebDataset shards, once, resumable, on any number of processes.

Data flow per process::

    Corpus.units (listed up front: parquet files, or 1,000-row blocks of a listing)
      → DataLoader workers: each claims the next free unit (units.py), reads it whole, and decodes,
        resamples, checks and prepares its rows (log-mel / normalised wave)
      → a window of rows, sorted by length and encoded in batches on the accelerator
      → one UnitWriter per open unit, in row order: its tars, then its done record
    then whichever process finds every unit done merges the done records into manifest.json.

Nobody waits for anybody: a fast process simply claims more units, and a killed one leaves claims
that the next run takes over. With ``store="audio"`` the workers encode each checked clip as FLAC
instead, and no encoder runs at all (its weights are not even loaded): the encoder is still named,
so frame counts, the too-short check and the manifest match what training will compute from the audio.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset

from tatk.data.audio import SAMPLE_RATE, BadAudio, decode, encode_flac
from tatk.data.corpus import Corpus, CorpusSpec, Row
from tatk.data.listing import open_unit
from tatk.errors import UserError
from tatk.shard.encoders import FrozenEncoder
from tatk.shard.format import UnitWriter, check_content, done_record_holds, read_manifest, write_manifest
from tatk.shard.guard import SkipGuard
from tatk.shard.units import UnitBook, owner

# Rows gathered before sorting by length: larger windows pad less, smaller ones use less memory.
WINDOW_BATCHES = 4


@dataclass
class ShardConfig:
    """Options of ``tatk shard`` beyond what to read (see ``tatk shard --help`` for each one's meaning)."""

    out: Path
    corpus: CorpusSpec
    encoder: str = "zai-org/GLM-ASR-Nano-2512"
    max_seconds: float = 30.0
    batch_size: int = 16
    shard_size_mb: float = 256.0
    dtype: str = "float16"
    store: str = "features"  # features (encoder output) | audio (16 kHz FLAC, for training the encoder)
    max_samples: int | None = None
    workers: int = 1
    max_skip_fraction: float = 0.5  # stop when one skip reason covers more of the first 1,000 rows or of a unit
    window: str | None = None  # 30s | fit (GLM-ASR only); None: the encoder kind's default (see model/encoder.py)
    command: str = ""


class _UnitReader(IterableDataset):
    """Each DataLoader worker claims free units one at a time and reads each whole, exactly once.

    Yields, per unit: ``("start", unit, claim)``, then ``("row", row without audio, prepared input or
    None, skip reason or None, what was wrong, seconds)`` for each row in order, then
    ``("end", unit, rows, source bytes read)``.
    """

    def __init__(self, corpus: Corpus, encoder: FrozenEncoder, book: UnitBook, todo: list, who: dict, cfg: ShardConfig):
        self.corpus, self.encoder, self.book, self.todo, self.who, self.cfg = corpus, encoder, book, todo, who, cfg

    def __iter__(self):
        for unit in self.todo:
            claim = self.book.claim(unit.name, self.who)
            if claim is None:
                continue
            yield "start", unit, claim
            source, n = open_unit(unit), 0
            for row in self.corpus.unit_rows(unit, source):
                prepared, reason, detail, seconds = self._prepare(row)
                row.audio = b""  # no need to ship the encoded bytes back to the main process
                n += 1
                yield "row", row, prepared, reason, detail, seconds
            yield "end", unit, n, source.read_bytes

    def _prepare(self, row: Row):
        if row.bad:
            return None, "bad_row", row.bad, 0.0
        if not row.text:
            return None, "empty_text", "no transcript", 0.0
        try:
            wave = decode(row.audio, row.duration)
        except BadAudio as e:
            return None, e.reason, str(e), 0.0
        seconds = len(wave) / SAMPLE_RATE
        if seconds > self.cfg.max_seconds:
            return None, "too_long", f"{seconds:.1f} s", seconds
        prepared = self.encoder.prepare(wave)
        n_frames = self.encoder.n_frames(prepared)
        if n_frames < 1:
            return None, "too_short", f"{seconds:.3f} s", seconds
        if self.cfg.store == "audio":
            return (encode_flac(wave), n_frames), None, "", seconds
        return torch.from_numpy(prepared), None, "", seconds  # a tensor travels through shared memory


def _check_options(cfg: ShardConfig) -> Path:
    """Cheap checks of the options, before anything is loaded."""
    if cfg.dtype not in ("float16", "float32"):
        raise UserError(f"--dtype {cfg.dtype!r}: expected float16 or float32")
    if cfg.store not in ("features", "audio"):
        raise UserError(f"--store {cfg.store!r}: expected features or audio")
    for name in ("max_seconds", "batch_size", "shard_size_mb"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".tatk-write-test{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {str(out)!r} is not writable: {e.strerror or e}") from None
    return out


def _options(cfg: ShardConfig, encoder: FrozenEncoder) -> dict:
    """What decides the shards' contents; a resumed run (any shape) must agree on all of it."""
    shape = ("out", "corpus", "batch_size", "workers", "command", "max_skip_fraction")
    options = {k: v for k, v in asdict(cfg).items() if k not in shape}
    options |= {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg.corpus).items()}
    options["revision"], options["window"] = encoder.info.revision, encoder.window_option
    return options


def _todo(out: Path, book: UnitBook, corpus: Corpus) -> list:
    """Units still to do; a done record whose source changed or whose tars are gone is dropped here."""
    todo = []
    for unit in corpus.units:
        record = book.done(unit.name)
        if record is not None and not done_record_holds(out, record, unit.source()):
            book.forget(unit.name)
            record = None
        if record is None:
            todo.append(unit)
    return todo


def _open(cfg: ShardConfig) -> tuple[Path, UnitBook, Corpus]:
    """The output folder, the split's unit book, and the corpus listed (at the commit a resumed job started
    on); fails now on a bad option or a wrong id, path, split or column. Nothing is written but ``out``."""
    out = _check_options(cfg)
    if not 0 < cfg.max_skip_fraction <= 1:
        raise UserError(f"--max-skip-fraction must be in (0, 1], got {cfg.max_skip_fraction}")
    book = UnitBook(out, cfg.corpus.split)
    return out, book, Corpus(cfg.corpus, cfg.max_samples, book.pinned_revision())


def _state():
    """This process's place among those launched together."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # Accelerator reads ACCELERATE_USE_CPU itself; PartialState must be told, or CPU processes
    # launched together would each think they are alone. It only picks this process's device: the
    # processes never wait on each other (no collective calls).
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _encoder(cfg: ShardConfig) -> FrozenEncoder:
    """The encoder's config and preprocessing, weights not loaded yet: fails now on a wrong encoder id, and a
    refused resume or a finished folder never loads the weights (storing audio never needs them)."""
    return FrozenEncoder(cfg.encoder, _state().device, cfg.dtype, network=False, window=cfg.window)


def run_shard(cfg: ShardConfig, opened: tuple[Path, UnitBook, Corpus] | None = None,
              encoder: FrozenEncoder | None = None) -> dict:
    """Shard one split of a corpus (``opened``: its ``_open(cfg)``, ``encoder``: its ``_encoder(cfg)``, when
    already done); returns timing figures (``wall_s``, ``forward_s``, ``audio_s``) and what this process did
    (``units``, ``read_bytes``)."""
    from rich.console import Console

    from tatk.shard.progress import print_summary

    out, book, corpus = opened or _open(cfg)
    state = _state()
    console = Console(stderr=True)
    encoder = encoder or _encoder(cfg)
    check_content(out, read_manifest(out) if (out / "manifest.json").exists() else {}, cfg.store)
    book.agree(_options(cfg, encoder), [dict(path=u.path, first=u.first, rows=u.rows) for u in corpus.units])
    todo = _todo(out, book, corpus)
    if len(todo) < len(corpus.units) and state.is_main_process:
        console.print(f"resuming {cfg.corpus.split}: {len(corpus.units) - len(todo)} of {len(corpus.units)} units done and kept")
    t0, done_here = time.perf_counter(), []
    timing = dict(forward_s=0.0, audio_s=0.0)
    if todo:
        if cfg.store == "features":
            encoder.load_weights()
        # A total (and an ETA) only when this process will do every unit left (with several, who does what
        # is decided as they go) and the units' rows are known without opening their files.
        total = corpus.count(cfg.max_samples, todo, footers=False) if state.num_processes == 1 else None
        _work(cfg, out, corpus, encoder, book, todo, console, state.is_main_process, timing, done_here, total)
    records = [book.done(u.name) for u in corpus.units]
    missing = [u.name for u, r in zip(corpus.units, records) if r is None]
    if missing:  # held by other processes still at work: the last one to finish writes the manifest
        console.print(f"{cfg.corpus.split}: this process is done; {len(missing)} units ({missing[0]}, ...) are still "
                      "being done by other processes, and the last of them writes manifest.json (if one died, re-run this "
                      "command to take its units over)")
    else:
        from tatk.shard.verify import check_counts

        check_counts(out, cfg.corpus.split, records, [u.name for u in corpus.units])
        manifest = write_manifest(out, cfg.corpus.split, records, encoder.info, cfg.command, cfg.store)
        print_summary(console, out, cfg.corpus.split, manifest, time.perf_counter() - t0)
    return dict(wall_s=time.perf_counter() - t0, units=[r["unit"] for r in done_here],
                read_bytes=sum(r["read_bytes"] for r in done_here), **timing)


def run_shards(cfg: ShardConfig, splits: list[str]) -> list[dict]:
    """``run_shard`` for each split in turn, in this one process: one start-up and one encoder (its weights loaded
    at most once) instead of one per split. Every split is listed first, so a split the corpus lacks fails before
    any is sharded."""
    if not splits or len(set(splits)) < len(splits):
        raise UserError(f"--split: expected distinct split names, got {', '.join(splits) or 'none'}")
    configs = [replace(cfg, corpus=replace(cfg.corpus, split=split)) for split in splits]
    opened = [_open(one) for one in configs]
    encoder = _encoder(cfg)
    return [run_shard(one, split_opened, encoder) for one, split_opened in zip(configs, opened)]


class _Sink:
    """This process's side: encodes windows of prepared rows and writes each unit's tars and done record."""

    def __init__(self, cfg: ShardConfig, out: Path, encoder: FrozenEncoder, book: UnitBook, who: dict, progress):
        self.cfg, self.out, self.encoder, self.book, self.who, self.progress = cfg, out, encoder, book, who, progress
        self.guard, self.writers, self.window, self.done = SkipGuard(cfg.max_skip_fraction), {}, [], []
        self.forward_s = 0.0

    def take(self, item: tuple) -> None:
        if item[0] == "row":
            self.window.append(item)
            if len(self.window) >= self.cfg.batch_size * WINDOW_BATCHES:
                self.flush()
        elif item[0] == "start":
            unit, claim = item[1], item[2]
            self.writers[unit.index] = (UnitWriter(self.out, self.cfg.corpus.split, unit.index, int(self.cfg.shard_size_mb * 1e6),
                                                   self.encoder.info.dim, self.cfg.dtype, self.cfg.store), claim)
        else:
            self.flush()  # the unit's last rows may still be in the window
            unit, rows, read_bytes = item[1], item[2], item[3]
            writer, claim = self.writers.pop(unit.index)
            record = writer.finish(unit.name, rows, unit.source()) | {"read_bytes": read_bytes, "by": self.who}
            self.guard.unit_done(unit.name, rows, record["skipped"])
            self.book.write_done(record)  # the unit is finished from here on
            claim.unlink(missing_ok=True)
            self.done.append(record)

    def _encode(self) -> dict[int, object]:
        """Features of the window's usable rows, encoded in length-sorted batches."""
        window, feats = self.window, {}
        if self.cfg.store == "audio":
            return feats
        ready = sorted((i for i, w in enumerate(window) if w[2] is not None), key=lambda i: window[i][2].shape[-1])
        t = time.perf_counter()
        for b in range(0, len(ready), self.cfg.batch_size):
            idx = ready[b : b + self.cfg.batch_size]
            for i, f in zip(idx, self.encoder.encode([window[i][2].numpy() for i in idx])):
                feats[i] = f
        self.forward_s += time.perf_counter() - t
        return feats

    def flush(self) -> None:
        """Encode the window, then hand its rows to their units' writers in arrival (= row) order."""
        feats = self._encode()
        for i, (_, row, prepared, reason, detail, seconds) in enumerate(self.window):
            writer = self.writers[row.unit][0]
            self.guard.row(f"u{row.unit:05d}", reason, f"{row.id} ({detail})")
            if reason:
                writer.skip(reason)
            else:
                payload, n_frames = prepared if self.cfg.store == "audio" else (feats[i], feats[i].shape[0])
                meta = dict(id=row.id, duration=round(seconds, 4), n_frames=int(n_frames), speaker=row.speaker, source=row.source)
                writer.add(row.key, payload, row.text, meta)
            self.progress.advance(seconds, skipped=bool(reason))
        self.window.clear()
        for _, claim in self.writers.values():
            self.book.heartbeat(claim)


def _work(cfg, out, corpus, encoder, book, todo, console, show, timing, done_here, total=None) -> None:
    """Claim and shard units until none is free: workers read and prepare, this process encodes and writes."""
    from tatk.shard.progress import ShardProgress

    who = owner()
    loader = DataLoader(_UnitReader(corpus, encoder, book, todo, who, cfg), batch_size=None,
                        num_workers=cfg.workers, prefetch_factor=8 if cfg.workers else None)
    with ShardProgress(console, enabled=show, total=total) as progress:
        sink = _Sink(cfg, out, encoder, book, who, progress)
        for item in loader:
            sink.take(item)
        sink.flush()
        sink.guard.finish()
        timing["audio_s"], timing["forward_s"] = progress.audio_seconds, sink.forward_s
        done_here += sink.done

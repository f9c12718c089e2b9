"""``tatk shard``: corpus → frozen encoder → WebDataset shards, once, resumable, on any number of processes.

Data flow per process::

    Corpus.rows (rank's rows, in order)
      → DataLoader workers: decode, resample, check, prepare (log-mel / normalised wave)
      → a window of rows, sorted by length and encoded in batches on the accelerator
      → ShardWriter, back in row order: tars under temporary names, renamed when complete
    then process 0 merges every process's state into manifest.json.

With ``store="audio"`` the workers encode each checked clip as FLAC instead, and no encoder runs at
all (its weights are not even loaded): the encoder is still named, so frame counts, the too-short
check and the manifest match what training will compute from the audio.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tatk.data.audio import SAMPLE_RATE, BadAudio, decode, encode_flac
from tatk.data.corpus import Corpus, CorpusSpec, Row
from tatk.shard.encoders import FrozenEncoder
from tatk.errors import UserError
from tatk.shard.format import ShardWriter, check_content, read_manifest, write_manifest

# Rows gathered before sorting by length: larger windows pad less, smaller ones use less memory
# and cut shards closer to their target size (shards end only between windows).
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
    window: str | None = None  # 30s | fit (GLM-ASR only); None: the encoder kind's default (see model/encoder.py)
    max_samples: int | None = None
    workers: int = 1
    command: str = ""


class _Prepared(IterableDataset):
    """Decodes and prepares this process's rows; worker ``w`` of ``n`` takes every n-th row.

    The DataLoader takes one item from each worker in turn, so rows come out in input order.
    Yields ``(row without audio, prepared input or None, skip reason or None, seconds)``.
    """

    def __init__(self, corpus: Corpus, encoder: FrozenEncoder, start: int, rank: int, world: int, cfg: ShardConfig):
        self.corpus, self.encoder, self.start, self.rank, self.world, self.cfg = corpus, encoder, start, rank, world, cfg

    def __iter__(self):
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        for k, row in enumerate(self.corpus.rows(self.start, self.rank, self.world, self.cfg.max_samples)):
            if k % n == wid:
                prepared, reason, seconds = self._prepare(row)
                row.audio = b""  # no need to ship the encoded bytes back to the main process
                yield row, prepared, reason, seconds

    def _prepare(self, row: Row):
        if not row.text:
            return None, "empty_text", 0.0
        try:
            wave = decode(row.audio, row.duration)
        except BadAudio as e:
            return None, e.reason, 0.0
        seconds = len(wave) / SAMPLE_RATE
        if seconds > self.cfg.max_seconds:
            return None, "too_long", seconds
        prepared = self.encoder.prepare(wave)
        n_frames = self.encoder.n_frames(prepared)
        if n_frames < 1:
            return None, "too_short", seconds
        if self.cfg.store == "audio":
            return (encode_flac(wave), n_frames), None, seconds
        return torch.from_numpy(prepared), None, seconds  # a tensor travels through shared memory


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


def run_shard(cfg: ShardConfig) -> dict:
    """Shard one split of a corpus; returns timing figures (``wall_s``, ``forward_s``, ``audio_s``)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from rich.console import Console

    from tatk.shard.progress import ShardProgress, print_summary

    out = _check_options(cfg)
    # Accelerator reads ACCELERATE_USE_CPU itself; PartialState must be told, or CPU processes
    # launched together would each think they are alone.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    console = Console(stderr=True)
    corpus = Corpus(cfg.corpus)  # fails now on a wrong id, path or column
    audio = cfg.store == "audio"
    # fails now on a wrong encoder id; storing audio needs only its config and preprocessing
    encoder = FrozenEncoder(cfg.encoder, state.device, cfg.dtype, network=not audio, window=cfg.window)
    manifest_path = out / "manifest.json"
    check_content(out, read_manifest(out) if manifest_path.exists() else {}, cfg.store)
    # What decides the shards' contents; a resumed run must agree on all of it.
    options = {k: v for k, v in asdict(cfg).items() if k not in ("out", "corpus", "batch_size", "workers", "command")}
    options |= {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg.corpus).items()}
    options["revision"], options["window"] = encoder.info.revision, encoder.window_option
    writer = ShardWriter(out, cfg.corpus.split, state.process_index, state.num_processes,
                         int(cfg.shard_size_mb * 1e6), encoder.info.dim, cfg.dtype, options, cfg.store)
    start = writer.resume()
    t0, forward_s, audio_s = time.perf_counter(), 0.0, 0.0
    if not writer.done:
        if start and state.is_main_process:
            console.print(f"resuming {cfg.corpus.split}: {len(writer.records)} finished shards kept, continuing at row {start}")
        loader = DataLoader(_Prepared(corpus, encoder, start, state.process_index, state.num_processes, cfg),
                            batch_size=None, num_workers=cfg.workers, prefetch_factor=8 if cfg.workers else None)
        next_index, window = start, []
        with ShardProgress(console, enabled=state.is_main_process) as progress:

            def flush() -> float:
                ready = [] if audio else sorted((i for i, w in enumerate(window) if w[1] is not None),
                                                 key=lambda i: window[i][1].shape[-1])
                feats, t = {}, time.perf_counter()
                for b in range(0, len(ready), cfg.batch_size):
                    idx = ready[b : b + cfg.batch_size]
                    for i, f in zip(idx, encoder.encode([window[i][1].numpy() for i in idx])):
                        feats[i] = f
                spent = time.perf_counter() - t
                for i, (row, _, reason, seconds) in enumerate(window):
                    if reason:
                        writer.skip(row.index, reason)
                    else:
                        payload, n_frames = window[i][1] if audio else (feats[i], feats[i].shape[0])
                        meta = dict(id=row.id, duration=round(seconds, 4), n_frames=int(n_frames),
                                    speaker=row.speaker, source=row.source)
                        writer.add(row.index, row.key, payload, row.text, meta)
                    progress.advance(seconds, skipped=bool(reason))
                if window:
                    writer.cut(window[-1][0].index + 1)
                window.clear()
                return spent

            for item in loader:
                window.append(item)
                next_index = item[0].index + 1
                if len(window) >= cfg.batch_size * WINDOW_BATCHES:
                    forward_s += flush()
            forward_s += flush()
            audio_s = progress.audio_seconds
        writer.close(next_index)
    state.wait_for_everyone()
    if state.is_main_process:
        manifest = write_manifest(out, cfg.corpus.split, state.num_processes, encoder.info, cfg.command, cfg.store)
        print_summary(console, out, cfg.corpus.split, manifest, time.perf_counter() - t0)
    return dict(wall_s=time.perf_counter() - t0, forward_s=forward_s, audio_s=audio_s)


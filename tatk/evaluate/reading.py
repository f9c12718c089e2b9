"""What ``tatk eval`` reads and how it is transcribed: utterances of a shard split or a corpus as ``Item`` records,
counted when skipped, and a loop that transcribes them in length-sorted batches and puts them back in input order."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

WINDOW_BATCHES = 8  # batches read before sorting by length: bounds memory, keeps padding low


@dataclass
class Item:
    """One utterance to transcribe; ``payload`` is (frames, dim) features or a 16 kHz waveform."""

    index: int  # input order
    id: str
    reference: str
    duration: float  # seconds of audio
    payload: np.ndarray


def shard_items(folder: Path, split: str, limit: int | None, skipped: dict[str, int],
                output_length: Callable[[int], int]) -> Iterator[Item]:
    """Utterances of a shard split in manifest order; clips too short to project are counted in ``skipped``."""
    from tatk.shard.format import read_shard
    from tatk.shard.format import shard_paths

    index = 0
    for path in shard_paths(folder, split):
        for raw in read_shard(path):
            if limit is not None and index >= limit:
                return
            feats = np.load(io.BytesIO(raw["feats.npy"]))
            meta = json.loads(raw["json"])
            if output_length(feats.shape[0]) < 1:  # too short to give the projector one position
                skipped["too_short"] = skipped.get("too_short", 0) + 1
            else:
                yield Item(index, str(meta.get("id", raw["__key__"])), raw["txt"].decode("utf-8"),
                           float(meta["duration"]), feats)
            index += 1


def audio_items(corpus, limit: int | None, skipped: dict[str, int]) -> Iterator[Item]:
    """Corpus rows decoded to 16 kHz mono; unusable rows are counted in ``skipped`` by reason."""
    from tatk.data.audio import SAMPLE_RATE, BadAudio, decode

    for index, row in enumerate(corpus.rows(limit=limit)):
        if row.bad:
            skipped["bad_row"] = skipped.get("bad_row", 0) + 1
            continue
        if not row.text:
            skipped["empty_text"] = skipped.get("empty_text", 0) + 1
            continue
        try:
            wave = decode(row.audio, row.duration)
        except BadAudio as e:
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
            continue
        yield Item(index, row.id, row.text, len(wave) / SAMPLE_RATE, wave)


def transcribe(items: Iterator[Item], run_batch: Callable[[list[Item]], list[str]], batch_size: int,
               progress=None) -> tuple[list[Item], list[str], float]:
    """All items (payloads dropped) in input order, their transcripts, and seconds spent in ``run_batch``.

    Items are taken ``batch_size * WINDOW_BATCHES`` at a time and sorted longest first inside the window,
    so each batch holds similar lengths and the largest batch (the memory peak) comes first.
    """
    done: list[tuple[Item, str]] = []
    spent = 0.0
    window: list[Item] = []

    def flush() -> None:
        nonlocal spent
        window.sort(key=lambda it: -it.payload.shape[0])
        for b in range(0, len(window), batch_size):
            batch = window[b:b + batch_size]
            t = time.perf_counter()
            texts = run_batch(batch)
            spent += time.perf_counter() - t
            for it, text in zip(batch, texts):
                it.payload = None  # features / audio are not needed any more
                done.append((it, text))
            if progress is not None:
                progress(batch)
        window.clear()

    for item in items:
        window.append(item)
        if len(window) >= batch_size * WINDOW_BATCHES:
            flush()
    flush()
    done.sort(key=lambda d: d[0].index)
    return [it for it, _ in done], [text for _, text in done], spent

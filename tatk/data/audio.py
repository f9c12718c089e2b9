"""Audio decoding: any file soundfile reads → 16 kHz mono float32, with bad input named, not hidden.

Decoding uses libsndfile (soundfile) and resampling a real band-limited resampler (soxr); no torchaudio
or torchcodec, whose wheels are CUDA builds.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from tatk.errors import first_line

SAMPLE_RATE = 16_000

# The reasons an utterance can be skipped; they are the keys of the manifest's "skipped" counts.
SKIP_REASONS = ("unreadable", "truncated", "empty_audio", "nonfinite", "empty_text", "too_long", "too_short", "bad_row")


class BadAudio(Exception):
    """An utterance that cannot be used; ``reason`` is one of ``SKIP_REASONS``."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _wav_shortfall(data: bytes) -> int:
    """Bytes missing from a RIFF/WAVE file's ``data`` chunk (0 when complete or not a WAV).

    libsndfile silently shortens a truncated WAV to what is there, so we compare the header's
    declared data size with the bytes actually present.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk_id == b"data":
            # 0xFFFFFFFF and 0 mark streamed WAVs whose size was never filled in.
            if size in (0, 0xFFFFFFFF):
                return 0
            return max(0, size - (len(data) - pos - 8))
        pos += 8 + size + (size & 1)
    return 0


def decode(source: bytes | str | Path, expected_seconds: float | None = None) -> np.ndarray:
    """Decode ``source`` (encoded bytes or a file path) to a 16 kHz mono float32 waveform, shape (samples,).

    ``expected_seconds`` (e.g. LoquaciousSet's ``duration`` column) lets a silently truncated file be
    caught. Raises ``BadAudio`` naming the reason for anything unusable.
    """
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as e:
        raise BadAudio("unreadable", str(e)) from None
    if not data:
        raise BadAudio("empty_audio", "0 bytes")
    missing = _wav_shortfall(data)
    if missing:
        raise BadAudio("truncated", f"WAV data chunk is {missing} bytes short")
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types for corrupt streams
        raise BadAudio("unreadable", first_line(e)) from None
    if wave.shape[0] == 0:
        raise BadAudio("empty_audio", "no samples")
    if not np.isfinite(wave).all():
        raise BadAudio("nonfinite", "NaN or inf samples")
    wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if rate != SAMPLE_RATE:
        wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if expected_seconds and len(wave) / SAMPLE_RATE < 0.9 * expected_seconds - 0.1:
        raise BadAudio("truncated", f"{len(wave) / SAMPLE_RATE:.2f}s decoded, {expected_seconds:.2f}s expected")
    return np.ascontiguousarray(wave)


def encode_flac(wave: np.ndarray) -> bytes:
    """A 16 kHz mono waveform (samples,) as 16-bit FLAC bytes (what audio shards store).

    16-bit PCM is what speech corpora are recorded in, and FLAC stores it losslessly at about half
    the size. Samples are clipped to [-1, 1) first: libsndfile would wrap, not clip, an overshoot
    (resampling can push a full-scale clip slightly past 1).
    """
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0 - 2.0**-15), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()

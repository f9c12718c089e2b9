"""``automatic-speech-recognition`` pipeline for tatk models.

Accepts a file path, encoded bytes, a 1-D array at 16 kHz, ``{"raw" | "array": wave, "sampling_rate": sr}``
(any rate: resampled with soxr), or a list of those with ``batch_size``. Audio longer than the model's
``chunk_seconds`` (30 s) is cut near that length at its quietest point, each chunk is transcribed and the
texts are joined; ``return_timestamps=True`` also returns the chunks with their (start, end) seconds, and
``return_timestamps="word"`` each word's, by CTC forced alignment with the export's aligner or ``aligner=`` (align.py).
Decoding is greedy unless told otherwise (``num_beams=``, ...); ``streamer=`` (a transformers
``TextIteratorStreamer`` or ``TextStreamer``) receives the transcript as it is decoded, all chunks in one stream.
"""

from __future__ import annotations

import io
import os

import numpy as np
from transformers.pipelines.base import ChunkPipeline

from .align import CtcAligner, word_options
from .speech import decoding_options

SAMPLE_RATE = 16_000
FRAME, HOP = 400, 160  # 25 ms energy frames every 10 ms, for choosing where to cut
SEARCH_SECONDS = 5.0  # a cut falls in the last SEARCH_SECONDS before the chunk limit


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError:
        raise ImportError("decoding audio files needs soundfile: pip install soundfile") from None
    wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return wave.mean(axis=1), rate


def resample(wave: np.ndarray, rate: int) -> np.ndarray:
    """``wave`` at ``rate`` Hz → 16 kHz float32 (soxr, a band-limited resampler)."""
    if rate == SAMPLE_RATE:
        return wave.astype(np.float32)
    try:
        import soxr
    except ImportError:
        raise ImportError(f"audio at {rate} Hz must be resampled to 16 kHz, which needs soxr: pip install soxr") from None
    return soxr.resample(wave.astype(np.float32), rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def load_audio(inputs) -> np.ndarray:
    """Any accepted input → mono 16 kHz float32 waveform (samples,)."""
    if isinstance(inputs, (str, os.PathLike)):
        with open(inputs, "rb") as f:
            inputs = f.read()
    if isinstance(inputs, (bytes, bytearray)):
        wave, rate = _decode(bytes(inputs))
    elif isinstance(inputs, dict):
        key = "raw" if "raw" in inputs else "array"
        if key not in inputs or "sampling_rate" not in inputs:
            raise ValueError('audio dicts need "raw" (or "array") and "sampling_rate" keys')
        wave, rate = inputs[key], int(inputs["sampling_rate"])
    else:  # a bare array is taken to be 16 kHz, as in transformers' own ASR pipeline
        wave, rate = inputs, SAMPLE_RATE
    wave = np.asarray(wave.cpu() if hasattr(wave, "cpu") else wave, dtype=np.float32)
    if wave.ndim == 2:  # (channels, samples) or (samples, channels): average the short axis
        wave = wave.mean(axis=int(np.argmin(wave.shape)))
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {wave.shape}")
    if not len(wave):
        raise ValueError("empty audio (0 samples)")
    return resample(wave, rate)


def chunk_bounds(wave: np.ndarray, max_seconds: float) -> list[tuple[int, int]]:
    """(start, end) sample ranges covering ``wave``, each at most ``max_seconds`` long.

    Each cut falls in the last ``SEARCH_SECONDS`` before the limit, in the middle of the longest run of
    25-ms frames as quiet as the quietest one (within 60 dB of the loudest): the longest pause is cut,
    not a word, nor a brief stop closure inside one.
    """
    limit, search = int(max_seconds * SAMPLE_RATE), int(min(SEARCH_SECONDS, max_seconds / 2) * SAMPLE_RATE)
    bounds, start = [], 0
    while len(wave) - start > limit:
        lo = start + limit - search
        power = np.convolve(wave[lo : start + limit].astype(np.float64) ** 2, np.ones(FRAME), "valid")[::HOP]
        quiet = np.flatnonzero(power <= power.min() + 1e-6 * power.max())
        runs = np.split(quiet, np.flatnonzero(np.diff(quiet) > 1) + 1)  # consecutive quiet frames
        longest = max(runs, key=len)
        cut = lo + int(longest[len(longest) // 2]) * HOP + FRAME // 2
        bounds.append((start, cut))
        start = cut
    bounds.append((start, len(wave)))
    return bounds


class ChunkStreamer:
    """One streamer across a long recording's chunks. ``generate`` ends its streamer after every chunk, which
    would end a ``TextIteratorStreamer``'s iteration after the first one; between chunks this flushes the text
    so far, followed by a space (chunk texts are joined with spaces), and leaves the stream open."""

    def __init__(self, streamer):
        self.streamer = streamer

    def put(self, value):
        self.streamer.put(value)

    def end(self):
        s = self.streamer
        if not hasattr(s, "on_finalized_text"):  # not a transformers TextStreamer: it sees the last chunk's end only
            return
        text = s.tokenizer.decode(s.token_cache, **s.decode_kwargs) if s.token_cache else ""
        s.token_cache, s.next_tokens_are_prompt = [], True
        printed, s.print_len = s.print_len, 0
        s.on_finalized_text(text[printed:] + " ", stream_end=False)


class TatkAsrPipeline(ChunkPipeline):
    """Audio → text with a ``TatkAsrModel``. Call options: decoding options (``max_new_tokens`` per chunk,
    ``num_beams``, ``length_penalty``, ``repetition_penalty``, ``no_repeat_ngram_size``, ``early_stopping``,
    ``streamer``), as keywords or in ``generate_kwargs``; ``chunk_length_s`` (at most the model's
    ``chunk_seconds``), ``return_timestamps`` (True: chunks; "word": words), ``aligner`` (a CTC model's Hub id or
    folder for word timestamps, instead of the export's)."""

    _load_tokenizer = True
    _load_feature_extractor = True
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frontend = self.model.audio_encoder(self.feature_extractor)
        self.aligners = {}  # CTC aligners for return_timestamps="word", loaded on first use, by name

    def _sanitize_parameters(self, chunk_length_s=None, return_timestamps=None, generate_kwargs=None, aligner=None,
                             **kwargs):
        # keywords win over generate_kwargs; an unknown option is refused by name (decoding_options), not ignored
        options = decoding_options({**dict(generate_kwargs or {}), **kwargs})
        longest = self.model.config.chunk_seconds
        if chunk_length_s is not None and not 0 < chunk_length_s <= longest:
            raise ValueError(f"chunk_length_s must be in (0, {longest}] for this model")
        pre = {"chunk_length_s": chunk_length_s} if chunk_length_s else {}
        fwd = {"options": options} if options else {}
        post = {"return_timestamps": return_timestamps} if return_timestamps is not None else {}
        word_pre, word_post = word_options(self.model.config, return_timestamps, aligner)
        return {**pre, **word_pre}, fwd, {**post, **word_post}

    def preprocess(self, inputs, chunk_length_s=None, keep_wave=False):
        wave = load_audio(inputs)
        bounds = chunk_bounds(wave, chunk_length_s or self.model.config.chunk_seconds)
        for i, (start, end) in enumerate(bounds):
            yield {"prepared": self.frontend.prepare(wave[start:end]), "span": (start / SAMPLE_RATE, end / SAMPLE_RATE),
                   "is_last": i == len(bounds) - 1, **({"wave": wave[start:end]} if keep_wave else {})}

    def _forward(self, model_inputs, options=None):
        batched = isinstance(model_inputs["is_last"], list)  # a collated batch holds lists; batch_size=1 does not
        prepared = model_inputs["prepared"] if batched else [model_inputs["prepared"]]
        options = dict(options or {})
        if options.get("streamer") is not None and not batched and not model_inputs["is_last"]:
            options["streamer"] = ChunkStreamer(options["streamer"])
        ids = self.model.transcribe(self.frontend.encode(prepared), **options)
        texts = [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return {"is_last": model_inputs["is_last"], "text": texts if batched else texts[0], "span": model_inputs["span"],
                **({"wave": model_inputs["wave"]} if "wave" in model_inputs else {})}  # kept for word timestamps

    def aligner(self, name: str | None = None) -> CtcAligner:
        """The CTC aligner for word timestamps: ``name`` (a Hub id or folder given with ``aligner=``), else the
        export's (``tatk export --aligner``): a folder copied inside the export, or a Hub id."""
        cfg = self.model.config
        key = name or f"{cfg.aligner}@{cfg.aligner_subfolder}"
        if key not in self.aligners:
            if name:
                found = CtcAligner.load(name, device=self.model.device)
            elif cfg.aligner_subfolder:  # inside the export, wherever it was loaded from (the tokenizer is the export's)
                export = self.model.name_or_path or self.tokenizer.name_or_path
                found = CtcAligner.load(export, subfolder=cfg.aligner_subfolder, device=self.model.device)
            else:
                revision = cfg.aligner_revision if len(cfg.aligner_revision) == 40 else None  # a Hub commit
                found = CtcAligner.load(cfg.aligner, revision=revision, device=self.model.device)
            self.aligners[key] = found
        return self.aligners[key]

    def postprocess(self, model_outputs, return_timestamps=False, aligner=None):
        out = {"text": " ".join(o["text"] for o in model_outputs if o["text"])}
        if return_timestamps == "word":  # each chunk aligned on its own, its word times offset by its start
            ctc = self.aligner(aligner)
            out["chunks"] = [w for o in model_outputs
                             for w in ctc.words(np.ravel(o["wave"]), o["text"], offset=float(o["span"][0]))]
        elif return_timestamps:
            out["chunks"] = [{"text": o["text"], "timestamp": tuple(o["span"])} for o in model_outputs]
        return out

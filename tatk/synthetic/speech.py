"""A tiny synthetic English speech corpus, spoken by espeak-ng, for tests and CPU demos.

Sentences come from a seeded template grammar (sentences.py); audio from the libespeak-ng bundled in the
``espeakng-loader`` wheel (no system package needed). ``write_corpus`` lays the result out
either like the LoquaciousSet Hub repo (parquet, same columns and card) or as a plain folder
with ``metadata.csv``, so the corpus readers can be exercised offline.

espeak-ng keeps waveform state (pitch-flutter phase, glottal phase, ...) between calls that
cannot be reset through its API, so one utterance's samples depend on what the process spoke
before. ``write_corpus`` therefore renders fixed-size chunks of utterances, each in a fresh
worker process: the same seed gives byte-identical files whatever the number of workers.
"""

from __future__ import annotations

import ctypes
import io
import itertools
import multiprocessing
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from tatk.synthetic.voices import VOICES, Speaking, add_noise, espeak_data, tilt, variant_sex

# espeak-ng through ctypes

SAMPLE_RATE = 22050  # libespeak-ng's native rate
_AUDIO_OUTPUT_SYNCHRONOUS, _INITIALIZE_DONT_EXIT, _CHARS_UTF8, _POS_CHARACTER = 2, 0x8000, 1, 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER values
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lib: ctypes.CDLL | None = None
_chunks: list[bytes] = []
_words: list[tuple[int, int]] = []  # (character position in the text, 1-based; audio position in ms)
_EVENT_END_OF_LIST, _EVENT_WORD = 0, 1


class _Event(ctypes.Structure):  # espeak_EVENT (speak_lib.h)
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_void_p)]


@_CALLBACK
def _collect(wav, n, events):  # called by espeak_Synth with each block of int16 samples and its events
    if wav and n > 0:
        _chunks.append(ctypes.string_at(wav, 2 * n))
    event = ctypes.cast(events, ctypes.POINTER(_Event))
    for i in itertools.count():
        if not events or event[i].type == _EVENT_END_OF_LIST:
            break
        if event[i].type == _EVENT_WORD:
            _words.append((event[i].text_position, event[i].audio_position))
    return 0  # 0 = keep going


def _espeak() -> ctypes.CDLL:
    """Load and initialise libespeak-ng once per process."""
    global _lib
    if _lib is None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data = espeak_data().encode()
        if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT) != SAMPLE_RATE:
            raise RuntimeError("libespeak-ng failed to initialise")
        lib.espeak_SetSynthCallback(_collect)
        _lib = lib
    return _lib


def synthesize(text: str, voice: str = "en-us", rate: int = 170, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speak ``text`` with an espeak-ng ``voice`` (e.g. ``"en-gb-scotland+f2"``) at ``rate`` words
    per minute and ``pitch`` (0–99). Returns float32 mono samples in [-1, 1] and the sample rate.

    The samples depend slightly on what this process spoke before (see the module docstring).
    """
    lib = _espeak()
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"unknown espeak-ng voice {voice!r}")
    lib.espeak_SetParameter(_RATE, rate, 0)
    lib.espeak_SetParameter(_PITCH, pitch, 0)
    lib.espeak_ng_SetRandSeed(0)  # so espeak's rand() sequence does not depend on earlier calls
    _chunks.clear()
    _words.clear()
    data = text.encode() + b"\0"
    if lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
        raise RuntimeError(f"espeak-ng failed to speak {text!r}")
    samples = np.frombuffer(b"".join(_chunks), dtype=np.int16)
    return samples.astype(np.float32) / 32768.0, SAMPLE_RATE


def word_starts(text: str) -> list[float | None]:
    """Where each word of ``text`` (split on spaces) started, in seconds, in the last ``synthesize(text, ...)``
    of this process: espeak-ng's word events, which mark the audio position where it begins speaking a word.
    None for a word without an event (espeak-ng joins some unstressed words, "A", "WERE", to a neighbour)."""
    starts, position = [], 1  # espeak-ng counts characters from 1
    at = dict(_words)
    for word in text.split(" "):
        starts.append(at[position] / 1000 if position in at else None)
        position += len(word) + 1
    return [s for s, w in zip(starts, text.split(" ")) if w]


# Corpus

# Container, sample rate and channels per utterance, cycled by index: mostly 16 kHz mono FLAC as
# in LoquaciousSet, plus a deterministic minority a reader must resample or downmix.
_FLAC16 = ("flac", 16000, 1)
_FORMATS = [_FLAC16, _FLAC16, ("wav", 22050, 1), _FLAC16, _FLAC16, ("wav", 16000, 2),
            _FLAC16, ("flac", 8000, 1), _FLAC16, _FLAC16, ("wav", 44100, 1), _FLAC16]
_CHUNK = 64  # utterances per fresh worker process (see the module docstring)


def _plan(seed: int, split: str, index: int, text: str, speaking: Speaking = Speaking()) -> dict:
    """Voice, prosody, noise and file format for one utterance, a pure function of its arguments."""
    r = random.Random(f"{seed}:{split}:{index}")  # str seeds hash with SHA-512: stable across runs
    variant = r.choice(speaking.variants)
    voice = f"{r.choice(VOICES)}+{variant}"
    pitch = r.randrange(speaking.pitch[0], speaking.pitch[1] + 1, 5)  # coarse steps: a speaker (voice + pitch) recurs
    container, sample_rate, channels = _FORMATS[index % len(_FORMATS)]
    plan = dict(ID=f"synth-{split}-{index:06d}", text=text, voice=voice, rate=r.randrange(130, 201),
                pitch=pitch, spk_id=f"{voice}-p{pitch}", sex=variant_sex(variant),
                container=container, sample_rate=sample_rate, channels=channels, snr_db=None, speed=1.0, tilt_db=0.0)
    # Drawn last, and only when asked for: plans without noise, speed perturbation or tilt stay as they were.
    if speaking.noise_share and r.random() < speaking.noise_share:
        plan.update(snr_db=r.uniform(*speaking.snr_db), noise_seed=r.getrandbits(32))
    if speaking.speed != (1.0, 1.0):
        plan.update(speed=round(r.uniform(*speaking.speed), 3))
    if speaking.tilt_share and r.random() < speaking.tilt_share:
        plan.update(tilt_db=round(r.uniform(*speaking.tilt_db), 2))
    return plan


def _render(plans: list[dict]) -> list[tuple[bytes, float]]:
    """Synthesize and encode ``plans`` (runs in a worker); returns (file bytes, seconds) for each."""
    out = []
    for p in plans:
        x, sr = synthesize(p["text"], p["voice"], p["rate"], p["pitch"])
        if p["speed"] != 1.0:  # heard as if recorded at sr * speed: 1/speed as long, pitch and formants × speed
            x = soxr.resample(x, round(sr * p["speed"]), sr)
        if p["tilt_db"]:
            x = tilt(x, sr, p["tilt_db"])
        if p["snr_db"] is not None:
            x = add_noise(x, p["snr_db"], p["noise_seed"])
        if p["sample_rate"] != sr:
            x = soxr.resample(x, sr, p["sample_rate"])
        x = np.clip(x, -1.0, 1.0)
        if p["channels"] == 2:
            x = np.stack([x, 0.8 * x], axis=1)  # unequal channels, so a wrong downmix is visible
        buf = io.BytesIO()
        sf.write(buf, x, p["sample_rate"], format=p["container"].upper(), subtype="PCM_16")
        out.append((buf.getvalue(), len(x) / p["sample_rate"]))
    return out


def _write_atomically(path: Path, write) -> None:
    """Call ``write(tmp)`` then rename over ``path``, so a reader never sees a half-written file.
    The temporary name starts with a dot: data-file patterns such as ``small/train*`` skip it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_parquet_split(out: Path, folder: str, split: str, rows: Iterator[dict], n: int,
                         rows_per_shard: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Audio, Features, Value  # heavy import, kept out of the workers

    # LoquaciousSet's schema. Features.arrow_schema carries the "huggingface" metadata that makes
    # `wav` an Audio column on load; writing with pyarrow avoids Audio.encode_example (torchcodec).
    schema = Features({"ID": Value("string"), "duration": Value("float32"),
                       "wav": Audio(sampling_rate=16000, decode=False), "spk_id": Value("string"),
                       "sex": Value("string"), "text": Value("string")}).arrow_schema
    n_shards = -(-n // rows_per_shard)
    names = [f"{split}-{k:05d}-of-{n_shards:05d}.parquet" for k in range(n_shards)]
    for stale in (out / folder).glob(f"{split}-*-of-*.parquet"):  # left by an earlier, larger run
        if stale.name not in names:
            stale.unlink()
    seconds = 0.0
    for name in names:
        shard = list(itertools.islice(rows, rows_per_shard))
        columns = {c: [r[c] for r in shard] for c in ("ID", "duration", "spk_id", "sex", "text")}
        columns["wav"] = [{"bytes": r["audio"], "path": f"{r['ID']}.{r['container']}"} for r in shard]
        table = pa.Table.from_pydict(columns, schema=schema)
        # 100-row groups, as `datasets` writes audio, so streaming readers fetch modest chunks.
        _write_atomically(out / folder / name, lambda tmp: pq.write_table(table, tmp, row_group_size=100))
        seconds += sum(columns["duration"])
    return seconds


def _write_folder_split(out: Path, split: str, rows: Iterator[dict]) -> float:
    lines, seconds = ["file,text"], 0.0
    for r in rows:
        name = f"{r['ID']}.{r['container']}"
        _write_atomically(out / split / name, lambda tmp: tmp.write_bytes(r["audio"]))
        lines.append(f"{name},{r['text']}")  # the grammar has no commas or quotes to escape
        seconds += r["duration"]
    _write_atomically(out / split / "metadata.csv", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return seconds


def _card(subset: str, folders: dict[str, str]) -> str:
    """A dataset card whose YAML ``configs`` copy LoquaciousSet's, so ``load_dataset(out, subset)`` resolves
    and yields the same features. (Its ``sample_rate`` key, verbatim from the real card, is not an
    ``Audio`` field: `datasets` drops it, so `wav` loads as ``Audio(decode=False)``, as it does there.)"""
    import yaml

    features = [("ID", "string"), ("duration", "float32"),
                ("wav", {"audio": {"sample_rate": 16000, "decode": False}}),
                ("spk_id", "string"), ("sex", "string"), ("text", "string")]
    config = {"config_name": subset, "features": [{"name": n, "dtype": t} for n, t in features],
              "data_files": [{"split": s, "path": f"{f}/{s}*"} for s, f in folders.items()]}
    meta = {"language": ["en"], "task_categories": ["automatic-speech-recognition"],
            "pretty_name": "tatk synthetic LoquaciousSet", "configs": [config]}
    return (f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# Synthetic LoquaciousSet-shaped corpus\n\n"
            "Template-grammar English sentences spoken by espeak-ng (written by `tatk.synthetic.speech`).\n")


def write_corpus(out_dir: str | Path, splits: dict[str, list[str]], layout: str = "parquet", seed: int = 0,
                 subset: str = "small", rows_per_shard: int = 1000, workers: int | None = None,
                 speaking: dict[str, Speaking] | None = None) -> dict[str, float]:
    """Speak every sentence of ``splits`` and write the corpus to ``out_dir``; returns seconds of audio per split.

    ``layout="parquet"``: a LoquaciousSet-like Hub repo (``README.md``, ``<subset>/train-*.parquet``,
    ``dev/dev-*.parquet``, ``test/test-*.parquet``). ``layout="folder"``: ``<split>/metadata.csv``
    (``file,text``) next to the audio files. The same arguments give byte-identical files.
    ``speaking`` maps a split to how it is spoken (default ``Speaking()``: the 12 classic variants, clean).
    Workers come from a fork server, so a calling script needs the usual ``if __name__ == "__main__":`` guard.
    """
    if layout not in ("parquet", "folder"):
        raise ValueError(f"layout must be 'parquet' or 'folder', not {layout!r}")
    out = Path(out_dir)
    speaking = speaking or {}
    plans = {s: [_plan(seed, s, i, t, speaking.get(s, Speaking())) for i, t in enumerate(texts)]
             for s, texts in splits.items() if texts}
    chunks = {split: [p[i:i + _CHUNK] for i in range(0, len(p), _CHUNK)] for split, p in plans.items()}
    seconds: dict[str, float] = {}
    folders = {split: subset if split == "train" else split for split in plans}
    # Every chunk must start from a pristine libespeak-ng, so maxtasksperchild=1: one process per chunk. Not
    # forked from this process (it may have loaded libespeak-ng, and forking one that holds Arrow thread pools
    # is unsafe) but from a fork server that has imported this module and never loaded the library: the same
    # pristine start as a spawned process, without paying numpy's and soxr's imports again for each chunk.
    n_workers = min(workers or os.cpu_count() or 1, max(1, sum(map(len, chunks.values()))))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with context.Pool(n_workers, maxtasksperchild=1) as pool:
        for split in plans:
            rendered = (item for chunk in pool.imap(_render, chunks[split]) for item in chunk)
            rows = (p | {"audio": audio, "duration": dur} for p, (audio, dur) in zip(plans[split], rendered))
            if layout == "parquet":
                n = len(plans[split])
                seconds[split] = _write_parquet_split(out, folders[split], split, rows, n, rows_per_shard)
            else:
                seconds[split] = _write_folder_split(out, split, rows)
    if layout == "parquet":
        _write_atomically(out / "README.md", lambda tmp: tmp.write_text(_card(subset, folders)))
    return seconds

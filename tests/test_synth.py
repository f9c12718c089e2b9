"""tatk.synthetic.speech: sentence splits, espeak-ng synthesis and the two corpus layouts."""

import csv
import io
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tatk.synthetic.sentences import make_splits
from tatk.synthetic.speech import SAMPLE_RATE, synthesize, write_corpus

LOQUACIOUS_COLUMNS = ["ID", "duration", "wav", "spk_id", "sex", "text"]
SPLITS = make_splits(12, 4, 4, seed=7)  # 12 train rows: one of each audio format in the cycle


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _check_audio(data: bytes, text: str) -> tuple[int, int, float]:
    """Decode ``data`` and check it sounds like ``text`` was spoken; returns (rate, channels, seconds)."""
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    seconds = len(x) / sr
    assert np.sqrt(np.mean(x**2)) > 0.01, "silent audio"
    assert 0.15 < seconds / len(text.split()) < 0.8, (seconds, text)
    return sr, x.shape[1], seconds


@pytest.fixture(scope="module")
def parquet_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parquet")
    write_corpus(out, SPLITS, layout="parquet", seed=7, rows_per_shard=8)
    return out


def test_splits_are_deterministic_disjoint_and_normalised():
    splits = make_splits(400, 60, 60, seed=3)
    assert splits == make_splits(400, 60, 60, seed=3)
    assert splits != make_splits(400, 60, 60, seed=4)
    assert {k: len(v) for k, v in splits.items()} == {"train": 400, "dev": 60, "test": 60}
    train, dev, test = (set(splits[k]) for k in ("train", "dev", "test"))
    assert len(train) == 400 and not train & dev and not train & test and not dev & test
    for sentence in train | dev | test:
        assert re.fullmatch(r"[A-Z]+( [A-Z]+)*", sentence)
        assert 4 <= len(sentence.split()) <= 14


def test_synthesize_speaks_and_rejects_unknown_voices():
    x, sr = synthesize("THE OLD SAILOR PAINTED SEVEN RED BOATS", "en-gb-scotland+f2", rate=150, pitch=60)
    assert sr == SAMPLE_RATE and x.dtype == np.float32 and x.ndim == 1
    assert 1.0 < len(x) / sr < 5.0 and np.abs(x).max() <= 1.0
    with pytest.raises(ValueError):
        synthesize("HELLO", "no-such-voice")


def test_parquet_layout_mirrors_loquaciousset(parquet_corpus: Path):
    assert sorted(str(p.relative_to(parquet_corpus)) for p in parquet_corpus.rglob("*") if p.is_file()) == [
        "README.md", "dev/dev-00000-of-00001.parquet", "small/train-00000-of-00002.parquet",
        "small/train-00001-of-00002.parquet", "test/test-00000-of-00001.parquet",
    ]


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_parquet_loads_with_datasets(parquet_corpus: Path, split: str):
    from datasets import Audio, load_dataset

    ds = load_dataset(str(parquet_corpus), "small", split=split, streaming=True)
    assert list(ds.features) == LOQUACIOUS_COLUMNS
    assert isinstance(ds.features["wav"], Audio)
    ds = ds.cast_column("wav", Audio(decode=False))  # datasets' own decoding needs torchcodec
    rows = list(ds)
    assert [r["text"] for r in rows] == SPLITS[split]
    formats = set()
    for r in rows:
        assert r["sex"] in ("male", "female") and r["spk_id"] and r["ID"].startswith(f"synth-{split}-")
        sr, channels, seconds = _check_audio(r["wav"]["bytes"], r["text"])
        assert abs(seconds - r["duration"]) < 1e-3
        formats.add((Path(r["wav"]["path"]).suffix, sr, channels))
    if split == "train":  # the consumer must cope with WAV/FLAC, 8–44.1 kHz, mono and stereo
        assert {f[0] for f in formats} == {".wav", ".flac"}
        assert {f[1] for f in formats} == {8000, 16000, 22050, 44100}
        assert {f[2] for f in formats} == {1, 2}


def test_same_seed_gives_identical_bytes(parquet_corpus: Path, tmp_path: Path):
    # One worker instead of two: the output must not depend on how chunks are scheduled.
    write_corpus(tmp_path, SPLITS, layout="parquet", seed=7, rows_per_shard=8, workers=1)
    assert _files(tmp_path) == _files(parquet_corpus)
    other = tmp_path / "other"
    write_corpus(other, {"test": SPLITS["test"]}, layout="parquet", seed=8)
    assert _files(other)["test/test-00000-of-00001.parquet"] != _files(tmp_path)["test/test-00000-of-00001.parquet"]


def test_folder_layout(tmp_path: Path):
    splits = {"train": SPLITS["train"][:6], "test": SPLITS["test"][:2]}
    write_corpus(tmp_path / "a", splits, layout="folder", seed=1)
    write_corpus(tmp_path / "b", splits, layout="folder", seed=1)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    for split, texts in splits.items():
        folder = tmp_path / "a" / split
        with open(folder / "metadata.csv", newline="") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == ["file", "text"]
            rows = list(reader)
        assert [r["text"] for r in rows] == texts
        for r in rows:
            assert (folder / r["file"]).is_file()
            _check_audio((folder / r["file"]).read_bytes(), r["text"])
    assert {Path(r).suffix for r in _files(tmp_path / "a") if "train/" in r} == {".csv", ".wav", ".flac"}
    assert not list((tmp_path / "a").rglob(".*.tmp"))


# --- the held-out splits of the main job: unseen word orders, unseen voices with noise


def test_grammar_recogniser_accepts_the_grammar_and_refuses_scrambles():
    import random

    from tatk.synthetic.sentences import is_grammatical, random_sentence, scrambled_sentence

    r = random.Random(11)
    grammar = [random_sentence(r) for _ in range(5000)]
    assert all(map(is_grammatical, grammar))
    vocabulary = {w for s in grammar for w in s.split()}
    scrambled = [scrambled_sentence(r) for _ in range(500)]
    assert not any(map(is_grammatical, scrambled))
    assert {w for s in scrambled for w in s.split()} <= vocabulary  # new orders, not new words
    # the recogniser is not a blanket "no": swapping two words of a grammatical sentence breaks it
    assert is_grammatical("THE OLD SAILOR PAINTED SEVEN RED BOATS")
    assert not is_grammatical("THE OLD SAILOR PAINTED RED SEVEN BOATS")


def test_held_out_word_orders_leave_the_grammar_splits_unchanged():
    from tatk.synthetic.sentences import is_grammatical

    plain = make_splits(400, 60, 60, seed=3)
    held = make_splits(400, 60, 60, seed=3, n_test_order=50)
    assert {k: held[k] for k in plain} == plain  # the in-grammar corpus (and its audio) stays the same
    assert len(set(held["test_order"])) == 50 and not any(map(is_grammatical, held["test_order"]))
    mixed = make_splits(400, 60, 60, seed=3, scrambled=0.25, n_test_order=50)
    assert mixed["test_order"] == held["test_order"] and mixed["test"] == plain["test"]
    assert len(mixed["train"]) == 400 and sum(not is_grammatical(s) for s in mixed["train"]) == 100
    assert not set(mixed["train"]) & set(mixed["test_order"])


def test_noise_is_added_at_the_requested_snr():
    from tatk.synthetic.voices import add_noise

    x, _ = synthesize("THE OLD SAILOR PAINTED SEVEN RED BOATS")
    for seed, snr in [(0, 15.0), (1, 5.0), (2, 30.0)]:
        y = add_noise(x, snr, seed)
        speech = x[np.abs(x) > 0.01 * np.abs(x).max()]
        assert 10 * np.log10(np.mean(speech**2) / np.mean((y - x) ** 2)) == pytest.approx(snr, abs=0.01)
    assert not np.allclose(add_noise(x, 15.0, 0), add_noise(x, 15.0, 1))


def test_noise_is_white_noise_through_a_circular_one_pole_low_pass():
    """add_noise filters in the time domain; the filter's definition, (1 - a) / (1 - a z^-1) applied circularly,
    is a product in the frequency domain: the same noise, to float32 rounding."""
    from tatk.synthetic.voices import add_noise

    x, _ = synthesize("THE OLD SAILOR PAINTED SEVEN RED BOATS")  # a length with a large prime factor, as most clips
    for seed in range(4):
        g = np.random.default_rng(seed)
        white, a = g.standard_normal(len(x)), g.uniform(0.0, 0.95)
        z = np.exp(-2j * np.pi * np.fft.rfftfreq(len(x)))
        noise = np.fft.irfft(np.fft.rfft(white) * (1 - a) / (1 - a * z), n=len(x))
        speech = x[np.abs(x) > 0.01 * np.abs(x).max()]
        expected = x + noise * np.sqrt(np.mean(speech**2) / (np.mean(noise**2) * 10 ** 1.5))
        np.testing.assert_allclose(add_noise(x, 15.0, seed), expected, rtol=0, atol=1e-6)


def test_synth_corpus_held_out_splits(tmp_path):
    import pyarrow.parquet as pq

    from tatk.synthetic.voices import HELDOUT_VARIANTS, MORE_VARIANTS, RANDOM_VARIANTS, TRAIN_VARIANTS

    subprocess.run([sys.executable, "tools/synth_corpus.py", str(tmp_path), "--train", "24", "--dev", "2", "--test", "6",
                    "--held-out", "--listen", "--seed", "5"], check=True, cwd=Path(__file__).parents[1])
    tables = {s: pq.read_table(next(tmp_path.glob(f"*/{s}-*.parquet"))).to_pylist()
              for s in ("train", "test", "test_order", "test_noisy")}
    variant = lambda row: row["spk_id"].split("+")[1].rsplit("-p", 1)[0]
    assert {variant(r) for r in tables["test_noisy"]} <= set(HELDOUT_VARIANTS)
    assert not {variant(r) for s in ("train", "test") for r in tables[s]} & set(HELDOUT_VARIANTS)
    assert {variant(r) for r in tables["train"]} <= set(TRAIN_VARIANTS)
    assert [r["text"] for r in tables["test_noisy"]] == [r["text"] for r in tables["test"]]
    assert all(a["wav"]["bytes"] != b["wav"]["bytes"] for a, b in zip(tables["test"], tables["test_noisy"]))
    assert not {r["text"] for r in tables["test_order"]} & {r["text"] for r in tables["train"]}

    # The training options change the training clips only: dev, test and the held-out splits stay byte-identical.
    more = tmp_path / "more"
    subprocess.run([sys.executable, "tools/synth_corpus.py", str(more), "--train", "24", "--dev", "2", "--test", "6",
                    "--held-out", "--listen", "--seed", "5", "--more-voices", "--random-voices", "64", "--train-tilt", "1",
                    "--train-speed", "0.9", "1.1"], check=True, cwd=Path(__file__).parents[1])
    for split in ("dev", "test", "test_order", "test_noisy"):
        assert next(more.glob(f"*/{split}-*.parquet")).read_bytes() == next(tmp_path.glob(f"*/{split}-*.parquet")).read_bytes()
    train = pq.read_table(next(more.glob("*/train-*.parquet"))).to_pylist()
    heard = {variant(r) for r in train}
    assert heard <= set(TRAIN_VARIANTS + MORE_VARIANTS + RANDOM_VARIANTS) and heard & set(MORE_VARIANTS) and heard & set(RANDOM_VARIANTS)
    assert [r["text"] for r in train] == [r["text"] for r in tables["train"]]
    for bad, message in [(["--more-voices"], "--more-voices shapes the --listen training corpus"),
                         (["--listen", "--train-tilt", "1.5"], "--train-tilt is a share of the training clips"),
                         (["--listen", "--random-voices", "65"], "--random-voices draws from 64 voices: got 65"),
                         (["--listen", "--train-speed", "1.1", "0.9"], "--train-speed needs 0 < LOW <= HIGH"),
                         (["--listen", "--train-tilt-db", "-9", "-3"], "--train-tilt-db sets the slopes of --train-tilt's"),
                         (["--listen", "--train-tilt", "0.5", "--train-tilt-db", "-3", "-9"], "--train-tilt-db needs LOW <= HIGH")]:
        done = subprocess.run([sys.executable, "tools/synth_corpus.py", str(tmp_path / "bad"), *bad], capture_output=True,
                              text=True, cwd=Path(__file__).parents[1])
        assert done.returncode == 2 and message in done.stderr and not (tmp_path / "bad").exists()


def test_speed_perturbation_plays_the_clip_faster_and_higher():
    from tatk.synthetic.speech import _plan, _render
    from tatk.synthetic.voices import Speaking

    plans = [_plan(0, "train", 2, "THE OLD SAILOR PAINTED SEVEN RED BOATS", Speaking(speed=s)) for s in [(1, 1), (1.1, 1.1), (0.9, 0.9)]]
    assert [p["speed"] for p in plans] == [1.0, 1.1, 0.9] and plans[0]["sample_rate"] == SAMPLE_RATE  # a 22,050 Hz WAV
    assert {k: v for k, v in plans[1].items() if k != "speed"} == {k: v for k, v in plans[0].items() if k != "speed"}
    # Each clip rendered in a fresh process, as write_corpus does: espeak-ng's output depends on what it spoke before.
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        rendered = pool.map(_render, [[p] for p in plans])
    x, *perturbed = [sf.read(io.BytesIO(audio), dtype="float32")[0] for [(audio, _)] in rendered]

    def centroid(z):  # the power spectrum's centre of mass, Hz: pitch and formants move it
        power = np.abs(np.fft.rfft(z)) ** 2
        return (power * np.fft.rfftfreq(len(z), 1 / SAMPLE_RATE)).sum() / power.sum()

    # Resampling shifts the waveform's phase against the sample grid, so compare durations and the spectrum's
    # centre of mass rather than samples.
    for speed, y in zip([1.1, 0.9], perturbed):
        assert len(x) / len(y) == pytest.approx(speed, rel=0.002)
        assert centroid(y) / centroid(x) == pytest.approx(speed, rel=0.01)
    plan = _plan(0, "train", 2, "A TEXT", Speaking(speed=(0.9, 1.1), pitch=(0, 99)))
    assert 0.9 <= plan["speed"] <= 1.1 and plan["pitch"] % 5 == 0


def test_tilt_changes_the_spectral_balance_by_the_slope_at_the_same_power():
    from tatk.synthetic.voices import tilt

    sr = 16000
    t = np.arange(sr) / sr
    x = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 4000 * t)).astype(np.float32)
    for slope in (-6.0, -2.5, 3.0):
        y = tilt(x, sr, slope)
        # Each tone's amplitude, by projection onto it: two octaves apart, they differ by 2 × slope dB.
        amp = [2 * abs(np.mean(y * np.exp(-2j * np.pi * f * t))) for f in (1000, 4000)]
        assert 20 * np.log10(amp[1] / amp[0]) == pytest.approx(2 * slope, abs=0.01)
        assert np.mean(y**2) == pytest.approx(np.mean(x**2), rel=1e-4)
    assert np.allclose(tilt(x, sr, 0.0), x, atol=1e-6)


def test_random_voices_speak_at_their_own_pitch_and_leave_the_bundled_data_alone(tmp_path):
    import espeakng_loader

    from tatk.synthetic.voices import RANDOM_VARIANTS, espeak_data, random_variant

    bundled = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    assert not set(RANDOM_VARIANTS) & {p.name for p in bundled.iterdir()}
    assert (Path(espeak_data()) / "voices" / "!v" / RANDOM_VARIANTS[3]).read_text() == random_variant(RANDOM_VARIANTS[3])
    assert random_variant(RANDOM_VARIANTS[3]) != random_variant(RANDOM_VARIANTS[4])
    # A cache folder that cannot be made (here: a file in its way) leaves synthesis working, from a private copy.
    (blocked := Path(tmp_path) / "cache").write_text("a file, not a folder")
    done = subprocess.run([sys.executable, "-c", "from tatk.synthetic.speech import synthesize; from tatk.synthetic.voices "
                           "import espeak_data; x, _ = synthesize('HELLO', 'en-us+tatk-random001'); print(len(x) > 0, espeak_data())"],
                          env={**os.environ, "XDG_CACHE_HOME": str(blocked)}, capture_output=True, text=True, check=True)
    ok, path = done.stdout.split()
    assert ok == "True" and not path.startswith(str(blocked)) and Path(path, "voices", "!v", "tatk-random001").is_file()
    shutil.rmtree(path)

    def f0(x):  # median pitch, Hz, of the loud 40-ms frames, by autocorrelation (60-400 Hz)
        n, lags = int(0.04 * SAMPLE_RATE), np.arange(SAMPLE_RATE // 400, SAMPLE_RATE // 60)
        frames = [x[i:i + n] for i in range(0, len(x) - n, n)]
        loud = [f - f.mean() for f in frames if np.sqrt(np.mean(f**2)) > 0.3 * np.sqrt(np.mean(x**2))]
        return float(np.median([SAMPLE_RATE / lags[np.argmax([np.dot(f[:-k], f[k:]) for k in lags])] for f in loud]))

    # espeak-ng reads each drawn file: the voice speaks within the pitch range its file declares (pitch parameter
    # 50: the middle of it), which differs from variant to variant by up to an octave.
    for name in RANDOM_VARIANTS[:6]:
        low, high = map(int, re.search(r"^pitch (\d+) (\d+)$", random_variant(name), re.MULTILINE).groups())
        x, _ = synthesize("WE SAW A MAN ON THE MOON", f"en-us+{name}", rate=150, pitch=50)
        assert 0.9 * low < f0(x) < 1.1 * high, name

"""`tatk shard` end to end on synthesized speech and tiny random encoders."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr
import torch
import webdataset as wds

from conftest import run_tatk


def read_shards(folder: Path, split: str = "train") -> dict[str, dict]:
    """Every sample of a split, read with webdataset, by key."""
    manifest = json.loads((folder / "manifest.json").read_text())
    urls = [str(folder / s["name"]) for s in manifest["splits"][split]["shards"]]
    samples = {}
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode():
        assert s["__key__"] not in samples, f"duplicate sample {s['__key__']}"
        samples[s["__key__"]] = s
    return samples


def parquet_rows(root: Path) -> dict[str, dict]:
    """The train split of the synthetic LoquaciousSet, read with pyarrow alone."""
    files = sorted((root / "small").glob("*.parquet"))
    return {r["ID"]: r for f in files for r in pq.read_table(f).to_pylist()}


def reference_features(kind: str, path: Path, wav_bytes: bytes) -> np.ndarray:
    """The encoder called directly through transformers, one utterance, no tatk code involved."""
    from transformers import (AutoFeatureExtractor, GlmAsrForConditionalGeneration, HubertModel, Wav2Vec2Model,
                              WhisperModel)

    wave, rate = sf.read(io.BytesIO(wav_bytes), dtype="float32", always_2d=True)
    wave = soxr.resample(wave.mean(1), rate, 16000).astype(np.float32)
    fe = AutoFeatureExtractor.from_pretrained(path)
    with torch.no_grad():
        if kind in ("glmasr", "whisper"):
            x = fe(wave, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
            model = (GlmAsrForConditionalGeneration.from_pretrained(path).model.audio_tower if kind == "glmasr"
                     else WhisperModel.from_pretrained(path).encoder)
            out = model(x.input_features).last_hidden_state[0]
            return out[: (int(x.attention_mask.sum()) - 1) // 2 + 1].numpy()
        model = (HubertModel if kind == "hubert" else Wav2Vec2Model).from_pretrained(path)
        return model(fe(wave, sampling_rate=16000, return_tensors="pt").input_values).last_hidden_state[0].numpy()


@pytest.mark.parametrize("kind", ["glmasr", "whisper", "hubert"])
def test_stored_features_equal_direct_encoder_call(kind, tiny_encoders, speech, tmp_path):
    out = tmp_path / "shards"
    # --dataset with a folder laid out like the Hub repo: the same load_dataset call a Hub id takes.
    run_tatk("shard", "--dataset", speech["parquet"], "--subset", "small", "--split", "train",
             "--encoder", tiny_encoders[kind], "--out", out, "--batch-size", "5", "--max-samples", "10")
    samples = read_shards(out)
    rows = parquet_rows(speech["parquet"])
    assert len(samples) == 10
    for s in samples.values():
        meta, feats = s["json"], s["feats.npy"]
        row = rows[meta["id"]]
        assert feats.dtype == np.float16 and feats.shape == (meta["n_frames"], 64)
        assert s["txt"] == row["text"].lower() and s["txt"]
        assert meta["speaker"] == row["spk_id"] and abs(meta["duration"] - row["duration"]) < 0.05
        ref = reference_features(kind, tiny_encoders[kind], row["wav"]["bytes"])
        assert ref.shape == feats.shape
        np.testing.assert_allclose(feats.astype(np.float32), ref, atol=2e-2, rtol=1e-2)
    manifest = json.loads((out / "manifest.json").read_text())
    enc = manifest["encoder"]
    assert (enc["kind"], enc["dim"], enc["frame_rate"], enc["dtype"]) == (kind, 64, 50.0, "float16")
    assert enc["revision"].startswith("sha256:")
    # The statistics are those of the stored features, computed independently here.
    allf = np.concatenate([s["feats.npy"].astype(np.float64) for s in samples.values()])
    split = manifest["splits"]["train"]
    np.testing.assert_allclose(split["stats"]["mean"], allf.mean(0), atol=1e-6)
    np.testing.assert_allclose(split["stats"]["std"], allf.std(0), atol=1e-5)
    assert split["frames"] == len(allf) and split["samples"] == 10
    assert "tatk shard" in manifest["command"] and manifest["tatk_version"]


def test_mel_and_folder_layout_with_two_workers(speech, tmp_path):
    out = tmp_path / "mel"
    run_tatk("shard", "--local", speech["folder"], "--encoder", "mel:80", "--out", out, "--workers", "2")
    samples = read_shards(out)
    listing = (speech["folder"] / "train" / "metadata.csv").read_text().splitlines()[1:]
    assert sorted(s["txt"] for s in samples.values()) == sorted(line.split(",", 1)[1].lower() for line in listing)
    # Keys follow input order, so the shard order is the corpus order whatever the worker count.
    assert list(samples) == sorted(samples)
    for s in samples.values():
        assert s["feats.npy"].shape[1] == 80
        assert abs(s["feats.npy"].shape[0] / 100 - s["json"]["duration"]) < 0.02


def _bad_corpus(root: Path, good: Path) -> dict[str, int]:
    """A folder of good clips plus one of every kind of bad input; returns the expected skip counts."""
    root.mkdir()
    lines = ["file,text"]
    for i, f in enumerate(sorted(good.glob("*.*"))[:6]):
        if f.suffix in (".wav", ".flac"):
            (root / f.name).write_bytes(f.read_bytes())
            lines.append(f"{f.name},GOOD CLIP {i}")
    clip = next(root.glob("*.wav")).read_bytes()
    (root / "truncated.wav").write_bytes(clip[: len(clip) // 2])
    (root / "garbage.wav").write_bytes(b"this is not audio" * 50)
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(root / "long.flac", np.zeros(16000 * 31, np.float32), 16000)
    sf.write(root / "zero.wav", np.zeros((0,), np.float32), 16000)
    lines += ["truncated.wav,HALF A FILE", "garbage.wav,NOT AUDIO", "empty.wav,NO BYTES", "nan.wav,NOT A NUMBER",
              "long.flac,THIRTY ONE SECONDS", "zero.wav,NO SAMPLES", "missing.wav,NOT THERE",
              f"{next(root.glob('*.flac')).name},   "]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return {"truncated": 1, "unreadable": 2, "empty_audio": 2, "nonfinite": 1, "too_long": 1, "empty_text": 1}


def test_bad_files_are_skipped_and_counted(speech, tmp_path):
    expected = _bad_corpus(tmp_path / "bad", speech["folder"] / "train")
    proc = run_tatk("shard", "--local", tmp_path / "bad", "--encoder", "mel", "--out", tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["skipped"] == expected
    assert manifest["splits"]["train"]["samples"] == len(read_shards(tmp_path / "out")) > 0
    assert "too_long 1" in proc.stderr  # the summary table names the reasons


def test_damaged_finished_shard_is_redone(speech, tmp_path):
    args = ["shard", "--local", speech["folder"], "--encoder", "mel", "--out", tmp_path, "--shard-size-mb", "0.02", "--batch-size", "1"]
    run_tatk(*args)
    tars = sorted(tmp_path.glob("train-*.tar"))
    original = tars[1].read_bytes()
    tars[1].write_bytes(original[:1000])
    run_tatk(*args)
    assert tars[1].read_bytes() == original


def test_both_readers_read_the_shards(speech, tmp_path):
    from datasets import load_dataset

    run_tatk("shard", "--local", speech["folder"], "--encoder", "mel", "--out", tmp_path, "--shard-size-mb", "0.05", "--batch-size", "2")
    ours = read_shards(tmp_path)
    files = sorted(str(p) for p in tmp_path.glob("train-*.tar"))
    ds = load_dataset("webdataset", data_files={"train": files}, split="train")
    assert len(ds) == len(ours) and len(files) > 1
    for row in ds:
        np.testing.assert_array_equal(np.asarray(row["feats.npy"]), ours[row["__key__"]]["feats.npy"])
        assert row["txt"] == ours[row["__key__"]]["txt"]
    with tarfile.open(files[0]) as tar:  # plain ustar members: no pax header on each (a float mtime adds one)
        assert [m.pax_headers for m in tar] == [{}] * len(tar.getmembers()) and tar.getmembers()[0].mtime == 0


@pytest.mark.parametrize("args,needle", [
    (["--dataset", "/no/such/dataset"], "--dataset"),
    (["--dataset", "{parquet}", "--subset", "small", "--text-column", "transcript"], "--text-column 'transcript'"),
    (["--local", "{folder}", "--encoder", "/no/such/encoder"], "--encoder"),
    (["--local", "{folder}", "--out", "{file}"], "is a file"),
    (["--local", "{folder}", "--dtype", "int8"], "--dtype"),
])
def test_bad_arguments_fail_fast_with_one_line(args, needle, speech, tmp_path):
    (tmp_path / "afile").write_text("x")
    subs = {"parquet": speech["parquet"], "folder": speech["folder"], "file": tmp_path / "afile"}
    args = [a.format(**subs) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    if "--encoder" not in args:
        args += ["--encoder", "mel"]
    proc = run_tatk("shard", *args, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr
    assert not list((tmp_path / "out").glob("*.tar"))

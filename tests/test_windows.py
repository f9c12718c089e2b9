"""Encoder windows (`tatk shard --window 30s|fit`): a `fit` clip's features depend on the clip alone, the window is
recorded in the manifest, checked against the recipe and carried into exports, whose pipeline encodes audio exactly
as the shards were made."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from conftest import run_tatk

SR = 16_000


def _waves(seconds=(1.3, 2.0, 4.7, 0.4, 35.0), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.normal(size=int(s * SR))).astype(np.float32) for s in seconds]


def _direct_fit(path, wave: np.ndarray) -> np.ndarray:
    """GLM-ASR's encoder through transformers alone, the clip padded to its next whole second (at most 30 s)."""
    from transformers import AutoFeatureExtractor, GlmAsrForConditionalGeneration

    fe = AutoFeatureExtractor.from_pretrained(path)
    length = min(math.ceil(len(wave) / SR), 30) * SR
    x = fe(wave, sampling_rate=SR, max_length=length, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        out = GlmAsrForConditionalGeneration.from_pretrained(path).model.audio_tower(x.input_features).last_hidden_state[0]
    return out[: (int(x.attention_mask.sum()) - 1) // 2 + 1].numpy()


def test_fit_features_do_not_depend_on_the_batch(tiny_encoders):
    from tatk.shard.encoders import FrozenEncoder

    enc = FrozenEncoder(str(tiny_encoders["glmasr"]), window="fit")
    waves = _waves()
    prepared = [enc.prepare(w) for w in waves]
    # each clip's window is its next whole second, a 35-s clip keeps the 30-s window
    assert [p.shape[-1] for p in prepared] == [200, 200, 500, 100, 3000]
    alone = [enc.encode([p])[0] for p in prepared]
    mixed = enc.encode(prepared)
    for a, m, w in zip(alone, mixed, waves):
        np.testing.assert_allclose(m, a, atol=1e-5)
        np.testing.assert_allclose(a, _direct_fit(tiny_encoders["glmasr"], w), atol=1e-4)
    # padded to the batch's longest instead, the short clips' features would change: the check above can fail
    longest = enc.model(torch.from_numpy(np.stack([np.pad(p[:-1], ((0, 0), (0, 500 - p.shape[-1]))) for p in prepared[:3]])))
    assert np.abs(longest.last_hidden_state[0, : len(alone[0])].numpy() - alone[0]).max() > 1e-2
    # and `fit` is not `30s` (GLM-ASR attends to its padding)
    full = FrozenEncoder(str(tiny_encoders["glmasr"]))
    assert full.window == "30s" and full.prepare(waves[0]).shape[-1] == 3000
    assert np.abs(full.encode([full.prepare(waves[0])])[0] - alone[0]).max() > 1e-2


def test_training_tower_runs_fit_windows_like_the_shards(tiny_encoders):
    """Audio shards (stage 3): the encoder inside the model cuts each clip of a padded batch back to its window."""
    from tatk.shard.encoders import FrozenEncoder
    from tatk.train.tower import AudioTower, TowerInputs

    path = str(tiny_encoders["glmasr"])
    enc = FrozenEncoder(path, window="fit")
    inputs = TowerInputs(path, "fit")
    prepared = [enc.prepare(w) for w in _waves((2.2, 0.7, 3.1))]
    n = torch.tensor([enc.n_frames(p) for p in prepared])
    tower = AudioTower("glmasr", enc.model, False, False, "fit")
    hidden = tower(inputs.batch(prepared), n)
    for i, ref in enumerate(enc.encode(prepared)):
        np.testing.assert_allclose(hidden[i, : n[i]].detach().numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("kind,window", [("whisper", "fit"), ("hubert", "30s"), ("glmasr", "60s")])
def test_unsupported_windows_fail_with_one_line(kind, window, tiny_encoders, speech, tmp_path):
    proc = run_tatk("shard", "--dataset", speech["parquet"], "--subset", "small", "--encoder", tiny_encoders[kind],
                    "--window", window, "--out", tmp_path / "out", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --window"), proc.stderr
    assert not list((tmp_path / "out").glob("*.tar"))


@pytest.fixture(scope="module")
def fit_run(asr_run, tiny_encoders, tmp_path_factory) -> dict:
    """The asr_run corpus sharded with `--window fit` (train, and test in float32) and trained for 3 steps."""
    from train_fixtures import asr_recipe

    root = tmp_path_factory.mktemp("fit")
    shards, test = root / "shards", root / "test-f32"
    common = ["--dataset", asr_run["corpus"], "--subset", "small", "--encoder", asr_run["encoder"], "--window", "fit"]
    run_tatk("shard", *common, "--split", "train", "--out", shards)
    run_tatk("shard", *common, "--split", "test", "--out", test, "--dtype", "float32")
    recipe = root / "recipe.toml"
    recipe.write_text(asr_recipe(root / "runs" / "fit", asr_run["encoder"], asr_run["llm"], shards, steps=3))
    run_tatk("train", recipe)
    return {"corpus": asr_run["corpus"], "shards": shards, "test": test, "recipe": recipe, "checkpoint": root / "runs" / "fit" / "checkpoints" / "step-000003"}


def test_window_is_recorded_and_checked(fit_run, asr_run, tmp_path):
    assert json.loads((fit_run["shards"] / "manifest.json").read_text())["encoder"]["window"] == "fit"
    assert json.loads((asr_run["shards"] / "manifest.json").read_text())["encoder"]["window"] == "30s"  # the default
    # the run's recipe records the window read from the manifest
    assert 'window = "fit"' in (fit_run["checkpoint"] / "recipe.toml").read_text()
    proc = run_tatk("validate", fit_run["recipe"], "--set", "features.window=30s", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "features.window" in lines[0] and "'fit'" in lines[0], proc.stderr
    # adding to fit shards with the default (30s) window is refused: the folder's features would not fit together
    proc = run_tatk("shard", "--dataset", fit_run["corpus"], "--subset", "small", "--encoder", asr_run["encoder"],
                    "--split", "train", "--out", fit_run["shards"], check=False)
    assert proc.returncode == 2 and "window='fit'" in proc.stderr, proc.stderr
    # evaluating a fit-trained model on 30s shards is refused too
    proc = run_tatk("eval", fit_run["checkpoint"], "--data", asr_run["shards"], "--split", "test", check=False)
    assert proc.returncode == 2 and "window" in proc.stderr, proc.stderr


def test_export_from_fit_shards_transcribes_as_training_generate(fit_run, tmp_path):
    """The exported pipeline (fresh offline process, audio in) gives what the trained model's generate gives on the
    fit shards' stored float32 features: the export encodes exactly as the shards were made."""
    import pyarrow.parquet as pq
    import webdataset as wds
    from test_export import _generate, run_pipeline

    from tatk.data.audio import decode
    from tatk.shard.format import shard_paths
    from tatk.train.checkpoint import load_trained

    out = tmp_path / "export"
    run_tatk("export", fit_run["checkpoint"], out)
    assert json.loads((out / "config.json").read_text())["encoder_window"] == "fit"
    recipe, model = load_trained(fit_run["checkpoint"])
    audio = {r["ID"]: r["wav"]["bytes"] for f in sorted(fit_run["corpus"].rglob("*test*.parquet"))
             for r in pq.read_table(f, columns=["ID", "wav"]).to_pylist()}
    inputs, reference = [], []
    for i, s in enumerate(wds.WebDataset(shard_paths(fit_run["test"], "test"), shardshuffle=False, empty_check=False)):
        np.save(tmp_path / f"{i}.npy", decode(audio[json.loads(s["json"])["id"]]))
        inputs.append({"npy": str(tmp_path / f"{i}.npy"), "sr": SR})
        reference.append(_generate(model, [np.load(io.BytesIO(s["feats.npy"]))], recipe.eval.max_new_tokens)[0])
    got = run_pipeline(out, {"one": {"inputs": inputs}, "batched": {"inputs": inputs, "batch_size": 4}}, tmp_path / "run")
    assert len(reference) == len(audio) and any(reference), "no reference transcripts: the check would be vacuous"
    assert [r["text"] for r in got["one"]] == reference
    assert [r["text"] for r in got["batched"]] == reference

"""Audio shards (`tatk shard --store audio`) and training the encoder with LoRA on them, on tiny models."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import webdataset as wds
from conftest import run_tatk
from test_shard import _bad_corpus

from tatk.data.audio import decode
from tatk.train.collate import Codec
from tatk.train.validate import val_batches
from tatk.errors import UserError
from tatk.train.speechlm import IGNORE, build_model
from tatk.train.recipe import load_recipe
from tatk.train.optim import param_groups

# libsndfile writes float x as round(x · 32767) and reads int16 n back as n / 32768: the round trip is off
# by at most half a step plus the 1/32768 scale difference, 2^-15 at full scale.
PCM16_TOLERANCE = 2.0**-15 + 1e-7


def tar_samples(folder: Path, split: str = "train") -> dict[str, dict]:
    """Every sample of a split, by key, read with webdataset (raw bytes: no tatk code involved)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    urls = [str(folder / s["name"]) for s in manifest["splits"][split]["shards"]]
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}


@pytest.fixture(scope="module")
def shards(tiny_encoders, speech, tmp_path_factory) -> dict[str, Path]:
    """The parquet corpus's train split through the tiny GLM-ASR encoder, stored as audio and as float32
    features, plus a tiny LLM whose tokenizer knows the transcripts."""
    from tatk.synthetic.tinyllm import build_tiny_llm

    root = tmp_path_factory.mktemp("enc_lora")
    common = ["shard", "--dataset", speech["parquet"], "--subset", "small", "--split", "train",
              "--encoder", tiny_encoders["glmasr"]]
    run_tatk(*common, "--store", "audio", "--out", root / "audio", "--batch-size", "2", "--shard-size-mb", "0.2")
    run_tatk(*common, "--dtype", "float32", "--out", root / "feats")
    texts = [t.lower() for f in sorted(speech["parquet"].rglob("*train*.parquet"))
             for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]
    llm = build_tiny_llm(root / "llm", texts=texts)
    return {"audio": root / "audio", "feats": root / "feats", "llm": llm, "root": root, "encoder": tiny_encoders["glmasr"]}


def recipe_file(shards: dict, path: Path, content: str, encoder: str = "frozen", decoder: str = "frozen",
                steps: int = 2, shard_dir: Path | None = None) -> Path:
    shard_dir = shard_dir or shards["audio" if content == "audio" else "feats"]
    path.write_text(f"""
[run]
name = "{path.stem}"
out_dir = "{path.parent / 'runs'}"
[features]
encoder = "{shards['encoder']}"
dim = 64
[model]
llm = "{shards['llm']}"
decoder = "{decoder}"
encoder = "{encoder}"
[lora]
r = 4
alpha = 8
[encoder_lora]
r = 8
[projector]
stack = 4
hidden = 64
[[data.train]]
path = "{shard_dir}"
[data.val]
path = "{shard_dir}"
[data]
content = "{content}"
max_tokens = 1024
group_size = 8
shuffle_buffer = 8
round_shards = 1
workers = 1
[optim]
lr = 1e-2
llm_lr = 1e-2
encoder_lr = 1e-2
warmup_steps = 1
[train]
steps = {steps}
save_every = {steps}
log_every = 1
[eval]
max_samples = 8
wer_samples = 2
max_new_tokens = 4
[log]
wandb = "off"
""")
    return path


def test_audio_shards_hold_the_decoded_audio(shards, speech):
    """FLAC samples equal tatk.data.audio.decode of the source within 16-bit quantisation; frame counts and
    keys equal those of the feature shards; the manifest says what was stored."""
    audio, feats = tar_samples(shards["audio"]), tar_samples(shards["feats"])
    assert sorted(audio) == sorted(feats) and len(audio) == 24
    rows = {r["ID"]: r for f in sorted((speech["parquet"] / "small").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    for key, s in audio.items():
        meta = json.loads(s["json"])
        assert "feats.npy" not in s and s["txt"].decode() == rows[meta["id"]]["text"].lower()
        wave, rate = sf.read(io.BytesIO(s["flac"]), dtype="float32")
        assert rate == 16000 and sf.info(io.BytesIO(s["flac"])).subtype == "PCM_16"
        source = decode(rows[meta["id"]]["wav"]["bytes"])
        assert wave.shape == source.shape
        assert np.abs(wave - source).max() <= PCM16_TOLERANCE
        assert meta["n_frames"] == json.loads(feats[key]["json"])["n_frames"]
    manifest = json.loads((shards["audio"] / "manifest.json").read_text())
    split = manifest["splits"]["train"]
    assert manifest["content"] == "audio" and manifest["audio"]["sample_rate"] == 16000
    assert manifest["audio"]["format"] == "flac" and "dtype" not in manifest["encoder"]
    assert (manifest["encoder"]["dim"], manifest["encoder"]["frame_rate"]) == (64, 50.0)
    assert "stats" not in split and split["samples"] == 24 and len(split["shards"]) > 1
    assert json.loads((shards["feats"] / "manifest.json").read_text())["content"] == "features"
    # a folder holds one kind: features into the audio folder are refused before any work
    proc = run_tatk("shard", "--dataset", speech["parquet"], "--subset", "small", "--split", "test",
                    "--encoder", shards["encoder"], "--out", shards["audio"], check=False)
    assert proc.returncode == 2 and "already holds audio shards" in proc.stderr


def test_audio_store_skips_and_resumes_like_features(speech, tmp_path):
    expected = _bad_corpus(tmp_path / "bad", speech["folder"] / "train")
    args = ["shard", "--local", tmp_path / "bad", "--encoder", "mel", "--batch-size", "1", "--shard-size-mb", "0.01",
            "--store", "audio"]
    run_tatk(*args, "--out", tmp_path / "whole")
    manifest = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["skipped"] == expected
    tars = sorted((tmp_path / "whole").glob("train-*.tar"))
    assert len(tars) >= 2 and manifest["splits"]["train"]["samples"] == len(tar_samples(tmp_path / "whole"))

    # resume: a damaged tar undoes its unit (here the whole 14-row listing), which is redone to the same bytes
    whole = {t.name: t.read_bytes() for t in tars}
    tars[1].write_bytes(whole[tars[1].name][:700])
    proc = run_tatk(*args, "--out", tmp_path / "whole")
    assert "units done and kept" not in proc.stderr and "1 / 1" in proc.stderr
    assert {t.name: t.read_bytes() for t in sorted((tmp_path / "whole").glob("train-*.tar"))} == whole
    assert json.loads((tmp_path / "whole" / "manifest.json").read_text())["splits"] == manifest["splits"]


def test_validate_refuses_shards_of_the_wrong_kind(shards, tmp_path):
    lora_on_feats = recipe_file(shards, tmp_path / "a.toml", "features", encoder="lora")
    proc = run_tatk("validate", lora_on_feats, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: model.encoder: 'lora'")
    assert len(proc.stderr.strip().splitlines()) == 1
    feats_on_audio = recipe_file(shards, tmp_path / "b.toml", "features", shard_dir=shards["audio"])
    with pytest.raises(UserError, match=r"^data.content: is 'features' but .* holds audio"):
        load_recipe(feats_on_audio, [])
    with pytest.raises(UserError, match=r"^data.content: is 'audio' but .* holds features"):
        load_recipe(recipe_file(shards, tmp_path / "c.toml", "audio", shard_dir=shards["feats"]), [])
    with pytest.raises(UserError, match=r"^features.normalize"):
        load_recipe(recipe_file(shards, tmp_path / "d.toml", "audio"), ["features.normalize=global"])
    recipe = load_recipe(recipe_file(shards, tmp_path / "e.toml", "audio"), ['encoder_lora.target_modules=["q_proj", "qkv"]',
                                                                             "model.encoder=lora"])
    with pytest.raises(UserError, match=r"^encoder_lora.target_modules: 'qkv' is not a Linear layer"):
        build_model(recipe, None, torch.float32)


def first_batch(recipe, model) -> dict:
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length,
                  audio=model.encoder.inputs if model.encoder is not None else None)
    recipe.data.val.split = "train"
    return next(iter(val_batches(recipe, codec, 0, 1)))[0]


def test_frozen_encoder_on_audio_equals_feature_shards(shards, tmp_path):
    """Same samples, same model seed: the encoder run on stored audio gives the stored float32 features
    (up to the audio's 16-bit quantisation) and the same first-batch loss."""
    torch.manual_seed(0)
    by_audio = load_recipe(recipe_file(shards, tmp_path / "a.toml", "audio"), [])
    by_feats = load_recipe(recipe_file(shards, tmp_path / "f.toml", "features"), [])
    m_audio, m_feats = build_model(by_audio, None, torch.float32).eval(), build_model(by_feats, None, torch.float32).eval()
    b_audio, b_feats = first_batch(by_audio, m_audio), first_batch(by_feats, m_feats)
    assert b_audio["keys"] == b_feats["keys"] and torch.equal(b_audio["feat_lens"], b_feats["feat_lens"])
    assert b_audio["feats"].shape[1:] == (129, 3000)  # 128 mel bins + mask row, padded to 30 s
    with torch.no_grad():
        frames = m_audio.encoder(b_audio["feats"], b_audio["feat_lens"])
        for i, n in enumerate(b_feats["feat_lens"].tolist()):
            torch.testing.assert_close(frames[i, :n], b_feats["feats"][i, :n], atol=1e-2, rtol=1e-2)  # log-mel of 16-bit audio
        tensors = lambda b: {k: v for k, v in b.items() if torch.is_tensor(v)}  # noqa: E731
        loss_audio, loss_feats = m_audio(tensors(b_audio)), m_feats(tensors(b_feats))
    assert abs(loss_audio.item() - loss_feats.item()) < 2e-5 * loss_feats.item()  # measured: 4e-7


def test_encoder_lora_step_changes_only_adapters_and_projector(shards, tmp_path):
    recipe = load_recipe(recipe_file(shards, tmp_path / "r.toml", "audio", encoder="lora", decoder="lora"), [])
    model = build_model(recipe, None, torch.float32).train()
    batch = {k: v for k, v in first_batch(recipe, model).items() if torch.is_tensor(v)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    encoder_lora = {n for n in before if n.startswith("encoder.") and ".lora_" in n}
    llm_lora = {n for n in before if n.startswith("llm.") and ".lora_" in n}
    projector = {n for n in before if n.startswith("projector.")}
    assert encoder_lora and llm_lora and projector
    assert all(".q_proj." in n or ".k_proj." in n for n in encoder_lora)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == encoder_lora | llm_lora | projector
    optimizer = torch.optim.AdamW(param_groups(model, recipe.optim))
    assert {g["name"].split("_")[0] for g in optimizer.param_groups} == {"adapter", "llm", "encoder"}
    for _ in range(2):  # LoRA B starts at zero, so A gets its first gradient on the second step
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        (model(batch, reduction="sum") / n).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == encoder_lora | llm_lora | projector
    assert set(model.trainable_state_dict()) == changed  # what a checkpoint keeps


def test_train_on_audio_shards_end_to_end(shards, tmp_path):
    """`tatk train` with encoder LoRA on audio shards (one DataLoader worker preparing inputs), then the
    checkpoint rebuilds a model that transcribes prepared audio."""
    from tatk.train.checkpoint import load_trained, read_weights

    path = recipe_file(shards, tmp_path / "e2e.toml", "audio", encoder="lora", decoder="lora")
    run_tatk("train", path)
    ckpt = tmp_path / "runs" / "e2e" / "checkpoints" / "step-000002"
    weights = read_weights(ckpt)
    assert any(k.startswith("encoder.") and "lora_A" in k for k in weights)
    assert not any(k.startswith("encoder.") and "lora_" not in k for k in weights)
    lines = [json.loads(line) for line in (ckpt.parents[1] / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in lines if "loss" in r) and any("wer" in r for r in lines)
    recipe, model = load_trained(ckpt)
    assert model.encoder is not None and recipe.model.encoder == "lora"
    batch = first_batch(load_recipe(path, []), model)
    assert len(model.generate(batch["feats"][:2], batch["feat_lens"][:2], 4)) == 2

"""`tatk export`: the exported folder loads with transformers.pipeline(trust_remote_code=True) in a
fresh offline process and transcribes exactly as tatk's own model does on stored (float32) features."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch
import yaml
from conftest import run_tatk

SR = 16_000

# Runs in a fresh interpreter, as a user would: only transformers and the exported folder.
PIPELINE_JOBS = r"""
import json, sys
import numpy as np
from transformers import pipeline

spec = json.load(open(sys.argv[1]))
pipe = pipeline("automatic-speech-recognition", model=spec["model"], trust_remote_code=True)

def load(d):
    if "path" in d:
        return d["path"]
    if "bytes" in d:
        return open(d["bytes"], "rb").read()
    return {"raw": np.load(d["npy"]), "sampling_rate": d["sr"]}

results = {}
for name, job in spec["jobs"].items():
    inputs = [load(d) for d in job["inputs"]]
    if job.get("batch_size"):
        results[name] = pipe(inputs, batch_size=job["batch_size"], **job.get("kwargs", {}))
    else:
        results[name] = [pipe(x, **job.get("kwargs", {})) for x in inputs]
json.dump(results, open(sys.argv[2], "w"))
"""


def run_pipeline(model: Path, jobs: dict, tmp: Path, cwd: Path | None = None) -> dict:
    """Run PIPELINE_JOBS in a fresh offline process (in ``cwd``); {job: [pipeline outputs]}."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "jobs.py").write_text(PIPELINE_JOBS)
    (tmp / "spec.json").write_text(json.dumps({"model": str(model), "jobs": jobs}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp / "modules")}
    proc = subprocess.run([sys.executable, str(tmp / "jobs.py"), str(tmp / "spec.json"), str(tmp / "out.json")],
                          capture_output=True, text=True, env=env, check=False, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp / "out.json").read_text())


@pytest.fixture(scope="module")
def clips(asr_run, tmp_path_factory) -> dict:
    """The corpus's test clips: ids, encoded files (their original formats and rates) and 16 kHz waves."""
    import pyarrow.parquet as pq

    from tatk.data.audio import decode

    root = tmp_path_factory.mktemp("clips")
    ids, files, waves = [], [], []
    for f in sorted(asr_run["corpus"].rglob("*test*.parquet")):
        for row in pq.read_table(f, columns=["ID", "wav"]).to_pylist():
            path = root / row["wav"]["path"]
            path.write_bytes(row["wav"]["bytes"])
            ids.append(row["ID"])
            files.append(path)
            waves.append(decode(path))
    return {"ids": ids, "files": files, "waves": waves, "root": root}


@pytest.fixture(scope="module")
def trained(asr_run):
    from tatk.train.checkpoint import load_trained

    return load_trained(asr_run["checkpoint"])


@pytest.fixture(scope="module")
def f32_features(asr_run, clips, tmp_path_factory) -> dict[str, np.ndarray]:
    """{clip id: features} of the test clips by `tatk shard --dtype float32` (stored features equal the live
    encoder's), read back from the tars."""
    import webdataset as wds

    from tatk.shard.format import shard_paths

    out = tmp_path_factory.mktemp("f32") / "shards"
    run_tatk("shard", "--dataset", asr_run["corpus"], "--subset", "small", "--split", "test", "--encoder",
             asr_run["encoder"], "--out", out, "--dtype", "float32")
    feats = {}
    for sample in wds.WebDataset(shard_paths(out, "test"), shardshuffle=False, empty_check=False):
        feats[json.loads(sample["json"])["id"]] = np.load(io.BytesIO(sample["feats.npy"]))
    assert sorted(feats) == sorted(clips["ids"])
    return feats


@pytest.fixture(scope="module")
def reference(clips, trained, f32_features) -> list[str]:
    """Transcripts of the test clips by an independent path: float32 stored features, then tatk's own SpeechLM.generate."""
    recipe, model = trained
    return [_generate(model, [f32_features[i]], recipe.eval.max_new_tokens)[0] for i in clips["ids"]]


def _generate(model, feats: list[np.ndarray], max_new: int) -> list[str]:
    x = torch.zeros(len(feats), max(len(f) for f in feats), feats[0].shape[1])
    for i, f in enumerate(feats):
        x[i, : len(f)] = torch.from_numpy(f.astype(np.float32))
    return model.generate(x, torch.tensor([len(f) for f in feats]), max_new)


@pytest.fixture(scope="module")
def summary_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "summary.json"
    path.write_text(json.dumps({"wer": 0.4321, "n": 4, "audio_hours": 0.003, "rtfx": 12.5, "data": "tiny-test", "split": "test"}))
    return path


@pytest.fixture(scope="module")
def exported(asr_run, summary_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-asr"
    run_tatk("export", asr_run["checkpoint"], out, "--eval", summary_file, "--license", "mit")
    return out


def long_input(clips, gap_s: float = 1.0, total_s: float = 70.0) -> np.ndarray:
    """Test clips repeated, with ``gap_s`` of silence between them, to at least ``total_s`` seconds."""
    parts, k = [], 0
    while sum(map(len, parts)) < total_s * SR:
        parts += [clips["waves"][k % len(clips["waves"])], np.zeros(int(gap_s * SR), np.float32)]
        k += 1
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def pipeline_results(exported, clips, tmp_path_factory) -> dict:
    """Every input form through the exported folder in one fresh offline process."""
    root = tmp_path_factory.mktemp("jobs")
    arrays = {}
    for i, w in enumerate(clips["waves"]):
        for sr in (8000, 44100):
            np.save(root / f"{i}-{sr}.npy", soxr.resample(w, SR, sr, quality="HQ").astype(np.float32))
            # what the pipeline must do with it: back to 16 kHz (the test does it here, by hand)
            back = soxr.resample(np.load(root / f"{i}-{sr}.npy"), sr, SR, quality="HQ").astype(np.float32)
            np.save(root / f"{i}-{sr}-back.npy", back)
            arrays.setdefault(sr, []).append(i)
    long = long_input(clips)
    np.save(root / "long.npy", long)
    files = [str(f) for f in clips["files"]]
    n = len(files)
    jobs = {
        "paths": {"inputs": [{"path": f} for f in files]},
        "bytes_batched": {"inputs": [{"bytes": f} for f in files], "batch_size": 4},
        "paths_batched_3": {"inputs": [{"path": f} for f in files], "batch_size": 3},
        "at_8k": {"inputs": [{"npy": str(root / f"{i}-8000.npy"), "sr": 8000} for i in range(n)], "batch_size": 4},
        "at_8k_back": {"inputs": [{"npy": str(root / f"{i}-8000-back.npy"), "sr": SR} for i in range(n)]},
        "at_44k": {"inputs": [{"npy": str(root / f"{i}-44100.npy"), "sr": 44100} for i in range(n)]},
        "at_44k_back": {"inputs": [{"npy": str(root / f"{i}-44100-back.npy"), "sr": SR} for i in range(n)], "batch_size": 4},
        "long": {"inputs": [{"npy": str(root / "long.npy"), "sr": SR}], "kwargs": {"return_timestamps": True}},
    }
    return run_pipeline(exported, jobs, root / "run")


def test_export_folder_is_hub_ready(exported, asr_run):
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_tatk.TatkAsrModel"
    assert config["custom_pipelines"]["automatic-speech-recognition"]["impl"] == "pipeline_tatk.TatkAsrPipeline"
    for f in ("modeling_tatk.py", "configuration_tatk.py", "pipeline_tatk.py", "preprocessor_config.json", "tokenizer_config.json"):
        assert (exported / f).is_file(), f
    from safetensors.torch import load_file

    weights = load_file(str(exported / "model.safetensors"))
    # the bases are local folders, so the default export is self-contained: every weight, encoder included
    assert config["merged"] and config["encoder_config"] and config["llm_config"]
    assert any(k.startswith(("projector.", "llm.", "encoder.")) for k in weights)
    assert {k.split(".")[0] for k in weights} >= {"projector", "llm", "encoder"}
    # provenance: the local bases' folder names and content hashes, never where they were on this machine
    assert config["encoder"] == Path(asr_run["encoder"]).name and config["llm"] == Path(asr_run["llm"]).name
    assert config["llm_revision"].startswith("sha256:") and config["encoder_revision"].startswith("sha256:")
    here = str(Path(asr_run["llm"]).resolve().parent.parent)  # the test's temporary root
    texts = [f for f in exported.rglob("*") if f.suffix in (".json", ".md", ".txt", ".jinja")]
    assert texts and not [f.name for f in texts if here in f.read_text()]
    from transformers import AutoTokenizer

    assert "<|audio|>" in AutoTokenizer.from_pretrained(exported).get_vocab()
    card = (exported / "README.md").read_text()
    assert f"| LLM | local folder `{config['llm']}` @ `{config['llm_revision']}`, decoder" in card
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "automatic-speech-recognition" and meta["license"] == "mit"
    metric = meta["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "wer" and metric["value"] == pytest.approx(43.21)


def test_pipeline_equals_tatk_on_stored_features(pipeline_results, reference):
    assert any(reference), "every reference transcript is empty: the check would be vacuous"
    assert [r["text"] for r in pipeline_results["paths"]] == reference


def test_batched_equals_one_at_a_time(pipeline_results, reference):
    assert [r["text"] for r in pipeline_results["bytes_batched"]] == reference
    assert [r["text"] for r in pipeline_results["paths_batched_3"]] == reference


def test_other_sampling_rates_are_resampled(pipeline_results, reference):
    assert [r["text"] for r in pipeline_results["at_8k"]] == [r["text"] for r in pipeline_results["at_8k_back"]]
    assert [r["text"] for r in pipeline_results["at_44k"]] == [r["text"] for r in pipeline_results["at_44k_back"]]


def test_long_audio_is_cut_in_pauses_and_joined(pipeline_results, clips, trained):
    from tatk.shard.encoders import FrozenEncoder

    (result,) = pipeline_results["long"]
    long = long_input(clips)
    spans = [tuple(c["timestamp"]) for c in result["chunks"]]
    assert len(spans) == 3 and spans[0][0] == 0 and spans[-1][1] == pytest.approx(len(long) / SR)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end == start
        around = long[round(end * SR) - SR // 20: round(end * SR) + SR // 20]  # ±50 ms
        assert np.abs(around).max() < 0.01 * np.abs(long).max(), f"cut at {end:.2f}s is not in a pause"
    assert all(e - s <= 30.0 for s, e in spans)
    # independent: tatk's encoder + SpeechLM on each chunk the pipeline cut, transcripts joined
    recipe, model = trained
    encoder = FrozenEncoder(str(recipe.features.encoder), dtype="float32")
    texts = []
    for s, e in spans:
        (feats,) = encoder.encode([encoder.prepare(long[round(s * SR): round(e * SR)])])
        texts.append(_generate(model, [feats], recipe.eval.max_new_tokens)[0])
    assert [c["text"] for c in result["chunks"]] == texts
    assert result["text"] == " ".join(t for t in texts if t)


def _relocated_checkpoint(asr_run, root: Path, **recipe_edits) -> tuple[Path, dict]:
    """A copy of the asr_run checkpoint whose recipe points at copies of the encoder and LLM folders."""
    base = {"encoder": root / "encoder", "llm": root / "llm"}
    shutil.copytree(asr_run["encoder"], base["encoder"])
    shutil.copytree(asr_run["llm"], base["llm"])
    ckpt = root / "ckpt"
    shutil.copytree(asr_run["checkpoint"], ckpt)
    text = (ckpt / "recipe.toml").read_text()
    text = text.replace(json.dumps(str(asr_run["encoder"])), json.dumps(str(base["encoder"])))
    text = text.replace(json.dumps(str(asr_run["llm"])), json.dumps(str(base["llm"])))
    for old, new in recipe_edits.items():
        text = text.replace(old, new)
    (ckpt / "recipe.toml").write_text(text)
    return ckpt, base


def test_default_export_loads_from_anywhere(asr_run, clips, reference, tmp_path):
    """Local base folders → a self-contained export: it loads from another working directory, after the base
    folders are deleted and after the export folder itself is moved."""
    ckpt, base = _relocated_checkpoint(asr_run, tmp_path)
    assert str(base["llm"]) in (ckpt / "recipe.toml").read_text()
    run_tatk("export", ckpt, "exports/tiny", cwd=tmp_path)  # a relative output folder, as in the main job
    shutil.rmtree(base["encoder"])
    shutil.rmtree(base["llm"])
    moved = tmp_path / "elsewhere" / "tiny"
    moved.parent.mkdir()
    shutil.move(tmp_path / "exports" / "tiny", moved)
    other = tmp_path / "other-cwd"
    other.mkdir()
    jobs = {"paths": {"inputs": [{"path": str(f)} for f in clips["files"]], "batch_size": 4}}
    results = run_pipeline(moved, jobs, tmp_path / "run", cwd=other)
    assert [r["text"] for r in results["paths"]] == reference


def test_no_merged_keeps_references_and_names_a_missing_base(asr_run, clips, reference, tmp_path):
    """--no-merged: the bases are referenced by absolute path (loads from any cwd while they exist); once one is
    gone, loading fails with one line naming it and --merged, in transformers' pipeline and in tatk."""
    from tatk.errors import UserError
    from tatk.export import load_pipeline

    ckpt, base = _relocated_checkpoint(asr_run, tmp_path)
    out = tmp_path / "refs"
    run_tatk("export", ckpt, out, "--no-merged")
    config = json.loads((out / "config.json").read_text())
    assert not config["merged"] and config["llm"] == str(base["llm"].resolve())
    from safetensors.torch import load_file

    assert not any(k.startswith("encoder.") for k in load_file(str(out / "model.safetensors")))
    other = tmp_path / "other-cwd"
    other.mkdir()
    jobs = {"paths": {"inputs": [{"path": str(f)} for f in clips["files"]], "batch_size": 4}}
    assert [r["text"] for r in run_pipeline(out, jobs, tmp_path / "run", cwd=other)["paths"]] == reference

    shutil.rmtree(base["llm"])
    (tmp_path / "load.py").write_text("import sys\nfrom transformers import pipeline\n"
                                      "pipeline('automatic-speech-recognition', model=sys.argv[1], trust_remote_code=True)\n")
    proc = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(out)], capture_output=True, text=True, cwd=other,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")})
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "MissingBaseModel" in last and str(base["llm"].resolve()) in last and "--merged" in last, proc.stderr[-2000:]
    with pytest.raises(UserError, match="--merged") as e:
        load_pipeline(str(out))
    assert "\n" not in str(e.value) and str(base["llm"].resolve()) in str(e.value)


def test_lora_export_equals_peft(asr_run, tmp_path):
    """A LoRA checkpoint: the export (adapters merged at load, no peft) gives the PEFT model's logits and transcripts."""
    from tatk.train.checkpoint import load_trained
    from tatk.export import export
    from tatk.model.modeling_tatk import TatkAsrModel
    from tatk.shard.format import shard_paths

    sets = {"model.decoder": "lora", "run.name": "lora", "run.out_dir": str(tmp_path / "runs"), "lora.r": 4,
            "lora.alpha": 16, "lora.dropout": 0.0, "train.steps": 3, "train.save_every": 3, "optim.llm_lr": 0.05}
    run_tatk("train", asr_run["checkpoint"] / "recipe.toml", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")])
    ckpt = tmp_path / "runs" / "lora"
    export(ckpt, tmp_path / "export", merged=False)  # in-process; references, so the adapters are merged at load

    rec, peft_model = load_trained(ckpt)
    assert rec.model.decoder == "lora" and rec.lora.r == 4
    ours = TatkAsrModel.from_pretrained(tmp_path / "export")
    assert "peft" not in type(ours.llm).__module__
    b = [m.lora_B["default"].weight for m in peft_model.llm.modules() if hasattr(m, "lora_B") and "default" in m.lora_B]
    assert b and all(w.abs().sum() > 0 for w in b), "adapters untrained: the comparison would be vacuous"

    import webdataset as wds

    sample = next(iter(wds.WebDataset(shard_paths(asr_run["shards"], "test"), shardshuffle=False, empty_check=False)))
    feats = torch.from_numpy(np.load(io.BytesIO(sample["feats.npy"])).astype(np.float32))[None]
    lens = torch.tensor([feats.shape[1]])
    lay = peft_model.layout
    ids = torch.tensor([lay.prefix + [lay.audio_id] * peft_model.projector.output_length(int(lens[0])) + lay.suffix])
    with torch.no_grad():
        want = peft_model.llm(inputs_embeds=peft_model.embed(ids, feats, lens)).logits
        got = ours.llm(inputs_embeds=ours.embed(ids, feats, lens)).logits
        base = peft_model.llm.get_base_model()
        with peft_model.llm.disable_adapter():
            without = base(inputs_embeds=peft_model.embed(ids, feats, lens)).logits
    assert (want - without).abs().max() > 1e-3, "adapters change nothing: the comparison would be vacuous"
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    text = peft_model.generate(feats, lens, 24)
    got_ids = ours.transcribe([feats[0].numpy()], 24)
    assert peft_model.tokenizer.batch_decode(got_ids, skip_special_tokens=True)[0].strip() == text[0]


def test_bad_checkpoints_fail_with_one_line(asr_run, tmp_path):
    from tatk.errors import UserError
    from tatk.export import export

    bad = tmp_path / "bad"
    shutil.copytree(asr_run["checkpoint"], bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    proc = run_tatk("export", bad, tmp_path / "out", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "model.safetensors" in proc.stderr
    with pytest.raises(UserError, match="no such checkpoint") as e:
        export(tmp_path / "missing", tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["mosa", "moe", "qformer"])
def test_other_projector_kinds_export_and_transcribe_as_tatk(asr_run, clips, f32_features, tmp_path, kind):
    """A run with each newer projector kind (its options from the recipe's default table) exports, and the
    pipeline, one clip at a time and batched, transcribes exactly as tatk's own model on stored features."""
    from train_fixtures import asr_recipe

    from tatk.train.checkpoint import load_trained
    from tatk.train.projector_config import model_options

    text = asr_recipe(tmp_path / "runs" / kind, asr_run["encoder"], asr_run["llm"], asr_run["shards"], steps=3)
    (tmp_path / "r.toml").write_text(text.replace("[projector]\n", f'[projector]\nkind = "{kind}"\n'))
    run_tatk("train", tmp_path / "r.toml")
    ckpt, out = tmp_path / "runs" / kind / "checkpoints" / "step-000003", tmp_path / "export"
    run_tatk("export", ckpt, out)
    recipe, model = load_trained(ckpt)
    config = json.loads((out / "config.json").read_text())
    assert config["projector_kind"] == kind and config["projector_options"] == model_options(recipe.projector) != {}
    for f in ("mixtures.py", "qformer.py"):
        assert (out / f).is_file()
    want = [_generate(model, [f32_features[i]], recipe.eval.max_new_tokens)[0] for i in clips["ids"]]
    assert any(want), "every reference transcript is empty: the check would be vacuous"
    paths = [{"path": str(f)} for f in clips["files"]]
    results = run_pipeline(out, {"one": {"inputs": paths}, "batched": {"inputs": paths, "batch_size": 4}}, tmp_path / "run")
    assert [r["text"] for r in results["one"]] == want
    assert [r["text"] for r in results["batched"]] == want

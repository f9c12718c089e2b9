"""Recipes: typed loading, --set overrides, and one-line errors naming the key (no model is loaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import ENCODER_ID, ROOT, tiny_recipe, write_shards

from tatk.errors import UserError
from tatk.train.recipe import load_recipe, render_recipe


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("tiny")
    write_shards(base / "shards" / "train", n_samples=8, n_shards=2)
    write_shards(base / "shards" / "val", n_samples=4, n_shards=1, seed=1)
    return base


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def test_load_override_and_render_roundtrip(base, tmp_path):
    path = write(tmp_path, tiny_recipe(base, tmp_path / "run"))
    r = load_recipe(path, ["optim.lr=3e-4", "model.llm=Qwen/Qwen3-0.6B", "data.train.0.weight=2"])
    assert r.optim.lr == 3e-4 and r.model.llm == "Qwen/Qwen3-0.6B" and r.data.train[0].weight == 2.0
    assert r.features.encoder == ENCODER_ID and r.data.val.split == "train"
    again = load_recipe(write(tmp_path, render_recipe(r)), [])
    assert again == r


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=1"], "optim.lrr: unknown recipe key"),
    (["bogus.x=1"], "bogus: unknown recipe key"),
    (["optim.lr='fast'"], "optim.lr: expected float"),
    (["train.steps=1.5"], "train.steps: expected int"),
    (["projector.kind=transformer"], "projector.kind: 'transformer' is not one of"),
    (["projector.kind=conv"], "projector.stack: the conv projector"),
    (["features.dim=1280"], "features.dim: is 1280 but"),
    (["features.encoder=openai/whisper-large-v3"], "features.encoder: is 'openai/whisper-large-v3' but"),
    (["data.train.0.path=/nonexistent/shards"], "data.train[0].path: shard folder /nonexistent/shards does not exist"),
    (["data.val.split=dev"], "data.val.split:"),
    (["train.steps=0"], "train.steps: must be > 0"),
    (["train.keep_best=loss"], "train.keep_best: 'loss' is not one of"),
    (["train.precision=fp16"], "train.precision: 'fp16' is not one of"),
    (["train.attention=flash"], "train.attention: 'flash' is not one of"),
    (["data.max_bad_tars=-2"], "data.max_bad_tars: must be >= 0"),
    (["eval.max_samples=-1"], "eval.max_samples: must be >= 0"),
    (["augment.token_swap=1.0"], "augment.token_swap: must be in [0, 1), got 1.0"),
    (["data.short_first_epochs=-1"], "data.short_first_epochs: must be >= 0"),
    (["data.short_first_epochs=2"], "data.short_first_seconds: must be > 0 with data.short_first_epochs = 2.0, got 0.0"),
    (["data.short_first_epochs=2", "data.short_first_seconds=3", "data.resample=true"], "data.short_first_epochs: needs epochs"),
    (["data.short_first_seconds=3"], "data.short_first_seconds = 3.0 does nothing without data.short_first_epochs"),
    (["eval.max_batches=5"], "eval.max_batches: unknown recipe key"),
])
def test_bad_recipes_fail_with_the_key(base, tmp_path, overrides, message):
    path = write(tmp_path, tiny_recipe(base, tmp_path / "run"))
    with pytest.raises(UserError) as e:
        load_recipe(path, overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_folder_without_manifest(base, tmp_path):
    (tmp_path / "empty").mkdir()
    path = write(tmp_path, tiny_recipe(base, tmp_path / "run"))
    with pytest.raises(UserError, match=r"data.train\[0\].path: .*manifest"):
        load_recipe(path, [f"data.train.0.path={tmp_path / 'empty'}"])


def test_shards_of_an_older_format_are_refused(base, tmp_path):
    old = write_shards(tmp_path / "old", n_samples=8, n_shards=1)  # format 1 wrote no format_version
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["format_version"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    path = write(tmp_path, tiny_recipe(base, tmp_path / "run"))
    with pytest.raises(UserError, match=r"data.train\[0\].path: .*shards in format 1 .*this tatk reads format 2") as e:
        load_recipe(path, [f"data.train.0.path={old}"])
    assert "\n" not in str(e.value)


def test_cli_validate_prints_resolved_recipe_and_one_line_errors(base, tmp_path):
    path = write(tmp_path, tiny_recipe(base, tmp_path / "run"))
    ok = subprocess.run([sys.executable, "tatk", "validate", str(path), "--set", "optim.lr=3e-4"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "lr = 0.0003" in ok.stdout and "[[data.train]]" in ok.stdout
    bad = subprocess.run([sys.executable, "tatk", "validate", str(path), "--set", "optim.nope=1"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "optim.nope: unknown recipe key" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_shipped_recipes_parse():
    for name in ("stage1.toml", "demo.toml"):
        with pytest.raises(UserError, match=r"path: shard folder|features"):  # shards are not made here
            load_recipe(ROOT / "recipes" / name, ["data.train.0.path=/nonexistent"])
    assert json.dumps  # keep import used

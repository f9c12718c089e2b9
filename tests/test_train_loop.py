"""The training loop end to end, as subprocesses: loss falls, exact losses, kill -9 + --resume, 2 CPU ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_fixtures import ENV, ROOT, clip_seconds, metrics, prepare_tiny, tiny_recipe

STEPS = 40
LOOP = {"train": {"steps": STEPS, "log_every": 1, "save_every": 10, "eval_every": 20, "keep_best": "val_loss"},
        "data": {"workers": 2}}

# torchtune-style pinned losses of the fixed-seed tiny run (CPU, fp32, torch 2.13). A change here means the
# data order, the model or the optimizer changed: update deliberately.
EXPECTED = {1: 6.230613708496094, 40: 6.054662704467773}



def tatk_train(recipe: Path, *args: str, wait: bool = True, env: dict | None = None):
    cmd, env = [sys.executable, "tatk", "train", str(recipe), *args], {**ENV, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory) -> Path:
    """One uninterrupted run, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("ref")
    (tmp / "r.toml").write_text(tiny_recipe(base, tmp / "run", **LOOP))
    tatk_train(tmp / "r.toml")
    return tmp / "run"


def test_loss_decreases_and_metrics_are_logged(reference):
    m = metrics(reference)
    losses = [m[s]["loss"] for s in range(1, STEPS + 1)]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.02, losses
    assert m[20]["val_loss"] > 0 and "wer" in m[STEPS]
    for key in ("lr", "samples_per_s", "tokens_per_s", "real_token_fraction"):
        assert key in m[STEPS]
    assert 0.5 < m[STEPS]["real_token_fraction"] <= 1.0


def test_exact_losses(reference):
    m = metrics(reference)
    got = {s: m[s]["loss"] for s in EXPECTED}
    print("pinned losses:", got)
    for s, want in EXPECTED.items():
        if want is not None:
            assert abs(got[s] - want) < 1e-5, got


def test_checkpoint_holds_trainable_weights_only(reference):
    from safetensors.torch import load_file

    ckpts = sorted((reference / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-000020", "step-000030", "step-000040"]  # keep_checkpoints = 3
    weights = load_file(ckpts[-1] / "model.safetensors")
    assert weights and all(k.startswith(("projector.", "norm.")) for k in weights)
    assert (reference / "recipe.toml").exists()


def test_bf16_precision_autocasts_on_cpu_and_keeps_fp32_weights(base, reference, tmp_path):
    """train.precision = "bf16" runs the step under bf16 autocast on CPU too (the demo's choice): the same first
    batch gives a loss near, but not equal to, the fp32 reference's; the trained weights stay fp32."""
    from safetensors.torch import load_file

    loop = {"train": {**LOOP["train"], "steps": 2, "save_every": 2, "eval_every": 0, "precision": "bf16"}, "data": LOOP["data"]}
    (tmp_path / "r.toml").write_text(tiny_recipe(base, tmp_path / "run", **loop))
    tatk_train(tmp_path / "r.toml")
    bf16, fp32 = metrics(tmp_path / "run")[1]["loss"], metrics(reference)[1]["loss"]
    assert bf16 != fp32 and abs(bf16 - fp32) < 0.05 * fp32, (bf16, fp32)
    weights = load_file(tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_compile_gives_the_eager_runs_loss(base, reference, tmp_path):
    """train.compile = true reaches the loop: inductor compiles (its cache folder fills) and the first step's loss
    is the eager reference run's."""
    loop = {"train": {**LOOP["train"], "steps": 2, "save_every": 2, "eval_every": 0, "compile": True}, "data": LOOP["data"]}
    (tmp_path / "r.toml").write_text(tiny_recipe(base, tmp_path / "run", **loop))
    tatk_train(tmp_path / "r.toml", env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    assert any((tmp_path / "inductor").rglob("*.py"))
    assert metrics(tmp_path / "run")[1]["loss"] == pytest.approx(metrics(reference)[1]["loss"], rel=1e-5)


def test_best_checkpoint_is_the_lowest_validated_one(reference):
    """train.keep_best = "val_loss": RUN:best resolves to the step with the lowest logged val_loss, and its
    weights, validated again in this process, give that logged value."""
    from accelerate import Accelerator

    from tatk.train.checkpoint import load_trained, resolve
    from tatk.train.collate import Codec
    from tatk.train.validate import evaluate

    m = metrics(reference)
    logged = {s: m[s]["val_loss"] for s in m if "val_loss" in m[s]}
    assert sorted(logged) == [20, 40]
    best = min(logged, key=logged.get)
    ckpt = resolve(f"{reference}:best")
    assert ckpt == reference / "best" / f"step-{best:06d}"
    assert json.loads((ckpt / "best.json").read_text()) == {"metric": "val_loss", "value": logged[best]}
    recipe, model = load_trained(ckpt)
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length)
    again = evaluate(model, recipe, codec, Accelerator(cpu=True))
    assert abs(again["val_loss"] - logged[best]) < 1e-5


def test_a_truncated_tar_is_skipped_and_training_completes(base, tmp_path):
    """One of 4 tars cut to an eighth: the run names it before training, logs the skip and finishes (default limit:
    1 % of 4 tars → 1); with data.max_bad_tars = 0 it stops with one line before training, as for a missing tar."""
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(base / "shards" / "train", damaged)
    tar = damaged / "train-000001.tar"
    full = tar.stat().st_size
    tar.write_bytes(tar.read_bytes()[: full // 8])
    short = {"train": {"steps": 12, "log_every": 6, "save_every": 12, "eval_every": 0}, "data": {"workers": 2},
             "eval": {"max_samples": 4, "wer_samples": 1, "max_new_tokens": 2}}
    for name in ("ok", "strict"):
        text = tiny_recipe(base, tmp_path / name, **short).replace(str(base / "shards" / "train"), str(damaged))
        (tmp_path / f"{name}.toml").write_text(text)
    done = tatk_train(tmp_path / "ok.toml")
    assert f"warning: {tar}: {full // 8:,} bytes, its manifest records {full:,} (within data.max_bad_tars = 1" in done.stdout
    assert f"warning: skipped an unreadable tar: {tar}: " in done.stdout
    assert metrics(tmp_path / "ok")[12]["bad_tars"] == 1
    assert "step     12/12  loss " in done.stdout and "  elapsed 0:00:" in done.stdout  # whole lines in a log
    strict = subprocess.run([sys.executable, "tatk", "train", str(tmp_path / "strict.toml"), "--set", "data.max_bad_tars=0"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert strict.returncode == 2 and "step " not in strict.stdout  # refused before training
    assert strict.stderr.strip().splitlines()[-1] == (
        f"error: data.max_bad_tars: 1 training tars missing or not the size their manifest records, more than the 0 "
        f"allowed (first: {tar}: {full // 8:,} bytes, its manifest records {full:,}; `tatk shard --verify FOLDER` checks every tar)")
    # A missing tar is named the same way.
    tar.unlink()
    gone = subprocess.run([sys.executable, "tatk", "train", str(tmp_path / "strict.toml"), "--set", "data.max_bad_tars=0"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert gone.returncode == 2 and f"(first: {tar}: No such file or directory;" in gone.stderr


def test_short_clips_first_are_counted_in_the_metrics(base, reference, tmp_path):
    """data.short_first_epochs = 1: by the time the stream is past epoch 0, metrics.jsonl and the log line count
    as short_skipped exactly the clips longer than short_first_seconds (read once in epoch 0); off, no such key."""
    import numpy as np

    seconds = list(clip_seconds(base / "shards" / "train").values())
    limit = float(np.median(seconds))
    short = {"train": {"steps": 30, "log_every": 30, "save_every": 30, "eval_every": 0},
             "data": {"workers": 0, "short_first_epochs": 1.0, "short_first_seconds": limit},
             "eval": {"max_samples": 4, "wer_samples": 1, "max_new_tokens": 2}}
    (tmp_path / "r.toml").write_text(tiny_recipe(base, tmp_path / "run", **short))
    done = tatk_train(tmp_path / "r.toml")
    last, n_long = metrics(tmp_path / "run")[30], sum(s > limit for s in seconds)
    assert last["epoch"] > 1 and last["short_skipped"] == n_long > 0
    assert f"  dropped 0  short_skipped {n_long}  " in done.stdout  # a count prints whole, not in e-notation
    assert "short_skipped" not in metrics(reference)[STEPS]


def test_progress_eta_and_plain_lines_off_a_terminal():
    """Off a terminal there is no live bar; the ETA is the segment's mean pace times the steps left."""
    import io

    from rich.console import Console

    from tatk.train.progress import StepProgress

    p = StepProgress(Console(file=io.StringIO(), force_terminal=False), start=10, total=50)
    assert p.bar is None and p.eta() is None
    p.t0 -= 20.0  # 20 s for steps 11..20 → 2 s a step, 30 steps left
    p.advance(20)
    assert abs(p.eta() - 60.0) < 0.5
    assert p.logged({"loss": 1.0}) == "elapsed 0:00:20  eta 0:01:00"


def test_zero_resume_on_another_process_count_is_refused_in_one_line(tmp_path):
    """DeepSpeed's optimizer shards are per rank: a ZeRO run saved by 2 processes does not resume on 1 (DDP and
    one process do: tests/test_data_scale.py)."""
    from types import SimpleNamespace

    from tatk.errors import UserError
    from tatk.train.loop import Trainer

    (tmp_path / "data.json").write_text(json.dumps({"processes": 2, "workers": 2}))
    me = lambda zero, n: SimpleNamespace(updates=SimpleNamespace(zero=zero), accelerator=SimpleNamespace(num_processes=n))
    with pytest.raises(UserError, match="saved by 2 DeepSpeed processes; ZeRO resumes only on the same number"):
        Trainer._check_resume(me(2, 1), tmp_path)
    Trainer._check_resume(me(2, 2), tmp_path)  # the same count
    Trainer._check_resume(me(None, 1), tmp_path)  # DDP / one process: the data position is mapped instead


def test_compile_under_deepspeed_is_refused_in_one_line():
    from types import SimpleNamespace

    from tatk.errors import UserError
    from tatk.train.recipe import Recipe
    from tatk.train.zero import configure

    recipe = Recipe()
    recipe.train.compile = True
    with pytest.raises(UserError, match="^train.compile: not under DeepSpeed"):
        configure(SimpleNamespace(state=None), recipe)  # refused before DeepSpeed's config is read


def test_refuses_to_overwrite_a_run(reference):
    done = subprocess.run([sys.executable, "tatk", "train", str(reference.parent / "r.toml")], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "already has checkpoints; pass --resume" in done.stderr


def test_sigkill_then_resume_matches_uninterrupted(base, reference, tmp_path):
    (tmp_path / "r.toml").write_text(tiny_recipe(base, tmp_path / "run", **LOOP))
    proc = tatk_train(tmp_path / "r.toml", wait=False)
    first = tmp_path / "run" / "checkpoints" / "step-000010"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "checkpoints" / f"step-{STEPS:06d}").exists()
    tatk_train(tmp_path / "r.toml", "--resume")
    want, got = metrics(reference), metrics(tmp_path / "run")
    assert abs(got[STEPS]["loss"] - want[STEPS]["loss"]) < 1e-5
    assert abs(got[STEPS]["val_loss"] - want[STEPS]["val_loss"]) < 1e-5


@pytest.mark.slow
def test_two_cpu_processes_disjoint_samples_identical_weights(base, tmp_path):
    (tmp_path / "r.toml").write_text(tiny_recipe(base, tmp_path / "run", train={"steps": 12, "save_every": 12},
                                                 data={"workers": 0}))
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", "29517", str(ROOT / "tests" / "train_fixtures.py"), "probe",
           str(tmp_path / "r.toml"), str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, env={**ENV, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = [{k for rec in json.loads((tmp_path / f"keys-{r}.json").read_text()) for k in rec["keys"]} for r in (0, 1)]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    w0, w1 = (torch.load(tmp_path / f"weights-{r}.pt") for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert "2 process(es)" in done.stdout + done.stderr


def test_next_stage_with_frozen_projector_is_self_contained(base, reference, tmp_path):
    """Stage 2 (LoRA, projector frozen) from the stage-1 run: its checkpoint alone rebuilds the whole model,
    with stage 1's projector (not a fresh random one) and the new, trained adapters."""
    from safetensors.torch import load_file

    from tatk.train.checkpoint import load_trained

    stage1 = reference / "checkpoints" / f"step-{STEPS:06d}"
    extra = {"model": {"llm": str(base / "llm"), "decoder": "lora", "init_from": str(stage1)},
             "projector": {"kind": "mlp", "stack": 2, "hidden": 64, "train": False},
             "optim": {"lr": 3e-3, "norm_lr": 3e-3, "warmup_steps": 1, "llm_lr": 1e-2},
             "train": {"steps": 3, "log_every": 1, "save_every": 3, "eval_every": 0}}
    (tmp_path / "s2.toml").write_text(tiny_recipe(base, tmp_path / "stage2", **extra) + "[lora]\nr = 4\nalpha = 8\n")
    tatk_train(tmp_path / "s2.toml")
    first = load_file(str(stage1 / "model.safetensors"))
    _, model = load_trained(tmp_path / "stage2")
    state = model.state_dict()
    projector = {k: v for k, v in first.items() if k.startswith("projector.")}
    assert projector and all(torch.equal(state[k], v) for k, v in projector.items())
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero means it trained


def test_log_line_numbers_are_readable():
    """4 significant digits, whole numbers from 10,000 up (a rate of 10,980 tokens/s, not 1.098e+04), counts as they are."""
    from tatk.train.progress import figure

    assert [figure(v) for v in (10980.4, 227.23, 0.96441, 5e-05, 19338, -12345.6)] == \
        ["10980", "227.2", "0.9644", "5e-05", "19338", "-12346"]

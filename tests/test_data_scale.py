"""Training data across real processes (``accelerate launch``, 2 CPU processes over gloo): epochs cover every
sample once, a stream that cannot make a batch stops every rank with one line, validation gives the same
numbers on 1 and 2 processes, and a 2-process run resumed on 1 process reads no sample twice per epoch.

One 2-process × 2-worker run is shared (module fixture); each launch takes ~30-60 s on 2 loaded cores."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from train_fixtures import ENV, ROOT, metrics, prepare_tiny, tiny_recipe, write_shards

PROBE = [str(ROOT / "tests" / "train_fixtures.py"), "probe"]
STEPS, SAVE = 24, 12
# 16 tars of 16 utterances, one unit per round: at step 12 every stream is in the middle of epoch 0
SECTIONS = {"train": {"steps": STEPS, "save_every": SAVE, "log_every": 4, "eval_every": 0},
            "data": {"workers": 2, "round_shards": 1, "shuffle_buffer": 8, "group_size": 8},
            "eval": {"max_samples": 20, "wer_samples": 6, "max_new_tokens": 8}}


def launch(args: list[str], port: int, timeout: int = 400) -> subprocess.CompletedProcess:
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(port), *args]
    return subprocess.run(cmd, cwd=ROOT, env={**ENV, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True,
                          timeout=timeout)


def records(folder: Path, ranks=(0, 1)) -> list[dict]:
    return [r for rank in ranks for r in json.loads((folder / f"keys-{rank}.json").read_text())]


def per_epoch(recs: list[dict]) -> dict[int, Counter]:
    out: dict[int, Counter] = {}
    for r in recs:
        for k, (_, epoch) in zip(r["keys"], r["origins"]):
            out.setdefault(epoch, Counter())[k] += 1
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A 2-process × 2-worker run of 24 steps (checkpoints at 12 and 24) with its per-step records."""
    root = tmp_path_factory.mktemp("datascale")
    base = prepare_tiny(root)
    train = write_shards(root / "many", n_samples=256, n_shards=16, seed=0)
    text = tiny_recipe(base, root / "runs" / "two", **SECTIONS).replace(str(base / "shards" / "train"), str(train))
    (root / "two.toml").write_text(text)
    (root / "out").mkdir()
    done = launch([*PROBE, str(root / "two.toml"), str(root / "out")], 29731)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, base, train, done


@pytest.mark.slow
def test_every_sample_once_per_epoch_on_2_processes_x_2_workers(two):
    root, _, train, _ = two
    recs = records(root / "out")
    streams = {(rank, r["position"][0]) for rank in (0, 1) for r in json.loads((root / "out" / f"keys-{rank}.json").read_text())}
    assert len(streams) == 4
    want = {f"train_0_{i:06d}" for i in range(256)}
    epoch0 = per_epoch(recs)[0]
    assert set(epoch0) == want and set(epoch0.values()) == {1}
    assert max(json.loads(line).get("epoch", 0) for line in (root / "runs" / "two" / "metrics.jsonl").read_text().splitlines()) >= 1


@pytest.mark.slow
def test_validation_is_the_same_on_1_and_2_processes(two):
    """Loss and WER of the final checkpoint on the validation list, computed in one process, equal what the
    2-process run logged (each rank reading its half)."""
    import torch
    from accelerate import Accelerator

    from tatk.train.checkpoint import load_weights
    from tatk.train.collate import Codec
    from tatk.train.recipe import load_recipe
    from tatk.train.speechlm import build_model
    from tatk.train.validate import evaluate

    root = two[0]
    recipe = load_recipe(root / "two.toml", [])
    model = build_model(recipe, None, torch.float32, allow_missing_stats=True)
    load_weights(model, root / "runs" / "two" / "checkpoints" / f"step-{STEPS:06d}")
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length)
    one = evaluate(model, recipe, codec, Accelerator(cpu=True))
    logged = metrics(root / "runs" / "two")[STEPS]
    assert abs(one["val_loss"] - logged["val_loss"]) < 1e-5 and abs(one["wer"] - logged["wer"]) < 1e-9, (one, logged)


@pytest.mark.slow
def test_sigkill_on_2_processes_then_resume_on_1_reads_no_sample_twice_per_epoch(two):
    """A 2-process run killed (SIGKILL, the launcher and both ranks) after its step-12 checkpoint is resumed by one
    process (2 workers): steps 1-12 of the killed run plus steps 13-24 of the resumed one read no key twice
    per epoch, and epoch 0 misses at most the units of the 4 interrupted rounds (one tar each)."""
    root = two[0]
    (root / "killed.toml").write_text((root / "two.toml").read_text().replace('name = "two"', 'name = "killed"'))
    out = root / "out-killed"
    out.mkdir()
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", "29751", *PROBE, str(root / "killed.toml"), str(out)]
    env = {**ENV, "ACCELERATE_USE_CPU": "true", "TATK_PROBE_HOLD_AT": str(SAVE)}  # both ranks wait after checkpoint 12
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _dumped(out):
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    tree = psutil.Process(proc.pid).children(recursive=True)  # the launcher and the 2 training processes
    for p in [psutil.Process(proc.pid), *tree]:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(tree, timeout=30)
    assert [c.name for c in sorted((root / "runs" / "killed" / "checkpoints").iterdir())] == [f"step-{SAVE:06d}"]
    (root / "out1").mkdir()
    done = subprocess.run([sys.executable, *PROBE, str(root / "killed.toml"), str(root / "out1"), "--resume"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    before = [r for r in records(out) if r["step"] <= SAVE]
    after = records(root / "out1", ranks=(0,))
    assert min(r["step"] for r in after) == SAVE + 1
    assert per_epoch(before)[0] and per_epoch(after)[0]  # killed mid-epoch 0: the resumed run reads its rest
    epochs = per_epoch(before + after)
    for epoch, seen in epochs.items():
        assert set(seen.values()) == {1}, epoch
    assert len(epochs[0]) >= 256 - 4 * 16


def _dumped(out: Path) -> bool:
    """Both ranks' probe records of checkpoint 12 are written (the probe writes them right after saving, then holds)."""
    try:
        return all(json.loads((out / f"keys-{r}.json").read_text()) for r in (0, 1))
    except (OSError, ValueError):
        return False


@pytest.mark.slow
def test_a_stream_that_cannot_make_a_batch_stops_both_processes_in_seconds(two, tmp_path):
    root, base, _, _ = two
    (tmp_path / "r.toml").write_text(tiny_recipe(base, tmp_path / "run", data={"workers": 2, "max_tokens": 8},
                                                 train={"steps": 4, "save_every": 4}))
    start = time.monotonic()
    done = launch(["tatk", "train", str(tmp_path / "r.toml")], 29741, timeout=240)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(e.startswith("error: data.train[0]: ") and "data.max_tokens = 8" in e for e in errors), done.stderr[-2000:]
    assert len(errors) == 2  # every rank stops with the same line
    print(f"failed after {time.monotonic() - start:.1f} s")

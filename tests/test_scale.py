"""Scale-out on CPU: two processes under DDP, DeepSpeed ZeRO-2 and ZeRO-3 (gloo) train the same model.

Runs are shared through the module fixture ``launch``: stage 1 under each backend, then stage 2 (LoRA,
``model.init_from`` the DDP stage-1 checkpoint) under each backend, all with gradient accumulation 2 and a
validation pass (loss + greedy decoding) at the end. A launch takes ~30 s on 2 idle cores, mostly start-up.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import ENV, ROOT, metrics, prepare_tiny, tiny_recipe

STEPS = 4
COMMON = {"train": {"steps": STEPS, "grad_accum": 2, "log_every": 1, "save_every": 2, "eval_every": 0},
          "data": {"workers": 0}, "optim": {"lr": 3e-3, "norm_lr": 3e-3, "llm_lr": 3e-3, "warmup_steps": 2, "grad_clip": 0.05}}
# DDP all-reduces gradients with gloo, DeepSpeed reduce-scatters flattened buckets. Measured: the logged losses
# agree to the last fp32 bit and grad norms to ~1e-8 over these 4 steps; a wrong accumulation scale,
# clipping norm or missed LR schedule moves them by > 1e-3. grad_clip 0.05 is below every step's norm, so
# every step is clipped (by DeepSpeed's engine on its path, by Accelerate on DDP's).
TOL = 1e-5
KINDS = {"moe": {"experts": 4, "top_k": 2, "expert_hidden": 32, "balance_weight": 0.05, "z_weight": 0.01},
         "qformer": {"window": 4, "queries": 2, "layers": 1, "heads": 4}}  # small tables of the newer projectors
BACKENDS = {"ddp": ["--multi_gpu"], "zero2": ["--config_file", "accelerate/zero2.yaml"],
            "zero3": ["--config_file", "accelerate/zero3.yaml"]}



def accelerate_launch(backend: str, recipe: Path, port: int, *args: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` two CPU processes of ``tatk train``. DDP on CPU needs ACCELERATE_USE_CPU; DeepSpeed
    must not have it (Accelerate would then pick plain multi-CPU) and runs over gloo (tatk/train/loop.py)."""
    env = {**ENV, "ACCELERATE_USE_CPU": "true"} if backend == "ddp" else {k: v for k, v in ENV.items() if k != "ACCELERATE_USE_CPU"}
    cmd = ["accelerate", "launch", *BACKENDS[backend], "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(port), "tatk", "train", str(recipe), *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "2 process(es)" in " ".join(done.stdout.split())  # rich wraps the line at 80 columns
    return done


def free_ports():
    """Ports free when asked: fixed numbers collide (and hang both) when two test runs share a machine. Drawn
    below Linux's ephemeral range (32768+), where any outgoing connection may take a port the OS called free."""
    draw = random.Random(os.getpid())
    while True:
        port = draw.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        yield port


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """launch(stage, backend) → run folder, each distinct run trained once for the whole module."""
    root = tmp_path_factory.mktemp("scale")
    base = prepare_tiny(root)
    done: dict[tuple[int, str], Path] = {}
    port = free_ports()

    def run(stage: int | str, backend: str) -> Path:
        """stage 1 / 2, a projector kind ("moe", "qformer"): stage 1 with that projector, or "ctc": stage 1
        with the auxiliary CTC loss (its head is trained too)."""
        if (stage, backend) not in done:
            sections = {k: dict(v) for k, v in COMMON.items()}
            if stage == "ctc":
                sections["train"]["ctc_weight"] = 0.5
            if stage in KINDS:
                sections["projector"] = {"kind": stage, "stack": 2, "hidden": 64}
                sections[f"projector.{stage}"] = KINDS[stage]
            if stage == 2:
                stage1 = run(1, "ddp") / "checkpoints" / f"step-{STEPS:06d}"
                sections["model"] = {"decoder": "lora", "init_from": str(stage1)}
                sections["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
            recipe = root / f"s{stage}-{backend}.toml"
            recipe.write_text(tiny_recipe(base, root / "runs" / f"s{stage}-{backend}", **sections))
            accelerate_launch(backend, recipe, next(port))
            done[stage, backend] = root / "runs" / f"s{stage}-{backend}"
        return done[stage, backend]

    run.root, run.base, run.port = root, base, port
    return run


def assert_same_run(a: Path, b: Path) -> None:
    ma, mb = metrics(a), metrics(b)
    for step in range(1, STEPS + 1):
        assert abs(ma[step]["loss"] - mb[step]["loss"]) < TOL, (step, ma[step]["loss"], mb[step]["loss"])
        assert abs(ma[step]["lr"] - mb[step]["lr"]) < 1e-12
        assert abs(ma[step]["grad_norm"] - mb[step]["grad_norm"]) < TOL * max(1.0, ma[step]["grad_norm"])
        assert ma[step]["grad_norm"] > COMMON["optim"]["grad_clip"]  # so every step was clipped
    assert abs(ma[STEPS]["val_loss"] - mb[STEPS]["val_loss"]) < TOL
    wa, wb = (load_file(r / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors") for r in (a, b))
    assert wa.keys() == wb.keys()  # the same names whether Accelerate or tatk/train/zero.py wrote the file
    for k in wa:
        assert wa[k].shape == wb[k].shape and torch.allclose(wa[k], wb[k], atol=TOL), k


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_ddp_zero2_zero3_give_the_same_run(launch, stage):
    ddp = launch(stage, "ddp")
    losses = [metrics(ddp)[s]["loss"] for s in range(1, STEPS + 1)]
    assert len(set(losses)) == STEPS  # the model is training: the comparison below is not of constants
    weights = load_file(ddp / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors")
    prefixes = {k.split(".")[0] for k in weights}
    assert prefixes == ({"projector"} if stage == 1 else {"projector", "llm"})  # utterance norm: no buffers
    if stage == 2:
        assert all("lora_" in k for k in weights if k.startswith("llm."))
    for backend in ("zero2", "zero3"):
        assert_same_run(ddp, launch(stage, backend))


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*sorted(KINDS), "ctc"])
def test_moe_qformer_and_ctc_give_the_same_run_under_ddp_zero2_zero3(launch, kind):
    """The routed MoE (auxiliary losses in the gradient), the Q-Former (attention, learned queries) and the
    auxiliary CTC loss (a head outside the projector, in the same optimizer) train identically under each
    backend; the auxiliary losses and the MoE's expert utilisation agree too."""
    ddp = launch(kind, "ddp")
    m = metrics(ddp)
    assert len({m[s]["loss"] for s in range(1, STEPS + 1)}) == STEPS
    extra = {"moe": ["aux_balance", "aux_z"], "ctc": ["aux_ctc"]}.get(kind, [])
    assert all(k in m[STEPS] for k in extra)
    if kind == "ctc":  # the head is in the checkpoint, so assert_same_run compares it under every backend
        assert "ctc_head.weight" in load_file(ddp / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors")
    util = [k for k in m[STEPS] if k.startswith("util_expert")]
    assert len(util) == (4 if kind == "moe" else 0)
    for backend in ("zero2", "zero3"):
        other = launch(kind, backend)
        assert_same_run(ddp, other)
        mo = metrics(other)
        for k in extra:
            assert all(abs(m[s][k] - mo[s][k]) < TOL for s in range(1, STEPS + 1)), k
        assert all(abs(m[STEPS][k] - mo[STEPS][k]) < TOL for k in util)


@pytest.mark.slow
def test_zero3_adapter_loads_with_peft_and_gives_the_trained_logits(launch):
    """The adapter/ folder written from ZeRO-3-gathered weights is a PEFT adapter of the base LLM that
    reproduces the trained model's logits; its B matrices were trained (they start at zero)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tatk.train.checkpoint import load_trained

    ckpt = launch(2, "zero3") / "checkpoints" / f"step-{STEPS:06d}"
    _, trained = load_trained(ckpt)
    base_llm = AutoModelForCausalLM.from_pretrained(str(launch.base / "llm"), dtype=torch.float32)
    peft = PeftModel.from_pretrained(base_llm, str(ckpt / "adapter")).eval()
    adapter = load_file(ckpt / "adapter" / "adapter_model.safetensors")
    assert adapter and all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    ids = torch.randint(0, 200, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = trained.llm(input_ids=ids).logits, peft(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-5)
    with torch.no_grad(), peft.disable_adapter():
        plain = peft(input_ids=ids).logits
    assert (plain - got).abs().max() > 1e-4  # the adapter changes the LLM's output


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["zero2", "zero3"])
def test_resume_reaches_the_uninterrupted_loss(launch, backend):
    """A run resumed from its step-2 checkpoint (DeepSpeed optimizer shards, scheduler, RNG, data position)
    logs the uninterrupted run's losses at steps 3 and 4."""
    whole = launch(2, backend)
    root = launch.root
    resumed = root / "runs" / f"s2-{backend}-resumed"
    shutil.copytree(whole / "checkpoints" / "step-000002", resumed / "checkpoints" / "step-000002")
    recipe = root / f"s2-{backend}-resumed.toml"
    recipe.write_text((root / f"s2-{backend}.toml").read_text().replace(f'name = "s2-{backend}"', f'name = "s2-{backend}-resumed"'))
    accelerate_launch(backend, recipe, next(launch.port), "--resume")
    want, got = metrics(whole), metrics(resumed)
    assert min(got) == 3  # it went on from step 2
    for step in (3, 4):
        assert abs(got[step]["loss"] - want[step]["loss"]) < 1e-6, step
    assert abs(got[STEPS]["val_loss"] - want[STEPS]["val_loss"]) < 1e-6


def test_stage2_starts_from_the_stage1_projector(tmp_path):
    """Stage chaining in one process: stage 2 with the projector's LR at 0 ends with stage 1's projector
    exactly (a fresh projector would differ: stage 1 moved it away from the seeded init), while its LoRA trains."""
    base = prepare_tiny(tmp_path)
    short = {"train": {"steps": 2, "log_every": 1, "save_every": 2, "eval_every": 0}, "data": {"workers": 0},
             "eval": {"max_samples": 8, "wer_samples": 1, "max_new_tokens": 2}}
    (tmp_path / "s1.toml").write_text(tiny_recipe(base, tmp_path / "runs" / "s1", **short))
    train = [sys.executable, "tatk", "train"]
    done = subprocess.run([*train, str(tmp_path / "s1.toml")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    stage1 = tmp_path / "runs" / "s1" / "checkpoints" / "step-000002"
    (tmp_path / "s2.toml").write_text(tiny_recipe(
        base, tmp_path / "runs" / "s2", **short, model={"decoder": "lora", "init_from": str(stage1)},
        optim={"lr": 0.0, "norm_lr": 0.0, "llm_lr": 3e-3, "warmup_steps": 1}))
    done = subprocess.run([*train, str(tmp_path / "s2.toml")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    w1 = load_file(stage1 / "model.safetensors")
    w2 = load_file(tmp_path / "runs" / "s2" / "checkpoints" / "step-000002" / "model.safetensors")
    assert w1.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    lora_b = [v for k, v in w2.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    base = prepare_tiny(tmp_path)
    runs = {}
    for flag in (False, True):
        name = f"gc-{flag}".lower()
        (tmp_path / f"{name}.toml").write_text(tiny_recipe(
            base, tmp_path / "runs" / name, model={"decoder": "full"}, data={"workers": 0},
            train={"steps": 3, "log_every": 1, "save_every": 3, "eval_every": 0, "gradient_checkpointing": flag},
            eval={"max_samples": 8, "wer_samples": 1, "max_new_tokens": 2}))
        done = subprocess.run([sys.executable, "tatk", "train", str(tmp_path / f"{name}.toml")], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[flag] = metrics(tmp_path / "runs" / name)
    for step in (1, 2, 3):
        assert abs(runs[True][step]["loss"] - runs[False][step]["loss"]) < 1e-5

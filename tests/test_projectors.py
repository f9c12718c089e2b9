"""The six projectors: shapes and ``output_length`` for 1..200 frames against independent formulas, a row's
output independent of the batch's padding, each new kind learning on the tiny fixture under ``tatk train``,
the MoE's auxiliary losses in the gradient and in the log, and the per-kind recipe tables checked in one line."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import ENV, ROOT, metrics, prepare_tiny, tiny_recipe

from tatk.errors import UserError
from tatk.model.projectors import PROJECTORS, build_projector
from tatk.model.speech import IGNORE
from tatk.train.projector_config import MoeConfig
from tatk.train.recipe import load_recipe, render_recipe

STACK = {"conv": 4, "qformer": 3}  # conv downsamples by exactly 4; qformer: window 6 / 2 queries
OPTIONS = {"qformer": {"window": 6, "queries": 2, "heads": 4}, "mosa": {"expert_hidden": 24, "router_hidden": 8}}
# the tiny fixture's recipe (stack 2, hidden 64) with small per-kind tables
TABLES = {"mosa": {"experts": 3, "expert_hidden": 32, "router_hidden": 16},
          "moe": {"experts": 4, "top_k": 2, "expert_hidden": 32},
          "qformer": {"window": 4, "queries": 2, "layers": 1, "heads": 4}}


def expected_length(kind: str, t: int) -> int:
    """LLM positions for t frames, worked out independently of the projectors' own formulas."""
    if kind == "conv":  # two convs of kernel 3, stride 2, padding 1: each keeps ceil(n / 2)
        return math.ceil(math.ceil(t / 2) / 2)
    if kind == "qformer":  # every started window of 6 frames gives 2 queries
        return math.ceil(t / 6) * 2
    return t // STACK.get(kind, 2)  # whole runs of k frames


def small(kind: str):
    torch.manual_seed(0)
    return build_projector(kind, 8, 12, 16, STACK.get(kind, 2), OPTIONS.get(kind)).eval()


@pytest.mark.parametrize("kind", sorted(PROJECTORS))
def test_shapes_and_output_length_for_1_to_200_frames(kind):
    proj = small(kind)
    x = torch.randn(1, 200, 8)
    with torch.no_grad():
        for t in range(1, 201):
            assert proj.output_length(t) == expected_length(kind, t), t
            y = proj(x[:, :t], torch.tensor([t]))
            assert y.shape == (1, expected_length(kind, t), 12), t
            assert torch.isfinite(y).all()


@pytest.mark.parametrize("kind", sorted(PROJECTORS))
def test_a_rows_output_does_not_depend_on_padding(kind):
    """Rows of one batch, zero-padded past their lengths (as FeatureNorm leaves them), equal each row alone."""
    proj = small(kind)
    lens = [37, 5, 64, 13]
    x = torch.randn(len(lens), max(lens), 8)
    for i, n in enumerate(lens):
        x[i, n:] = 0
    with torch.no_grad():
        batched = proj(x, torch.tensor(lens))
        for i, n in enumerate(lens):
            alone = proj(x[i : i + 1, :n], torch.tensor([n]))
            m = proj.output_length(n)
            assert torch.allclose(batched[i, :m], alone[0], atol=1e-5), (kind, n)


def test_moe_routes_top_k_and_balance_is_one_when_uniform():
    """The balance loss is N·Σ f_e·P_e: 1 for uniform routing, computed here by hand from the router."""
    proj = small("moe")
    x = torch.randn(2, 40, 8)
    proj(x, torch.tensor([40, 17]))
    assert proj.routed.sum() == (20 + 8) * 2  # valid stacked frames × top_k
    h = proj.pre_norm(torch.cat([x[0, :40].reshape(20, 16), x[1, :16].reshape(8, 16)]))
    probs = proj.router(h).softmax(-1)
    chosen = probs.topk(2, -1).indices
    share = torch.stack([(chosen == e).sum() for e in range(4)]).float() / (28 * 2)
    assert torch.allclose(proj.aux_losses["balance"], 4 * (share * probs.mean(0)).sum(), atol=1e-6)
    assert torch.allclose(proj.aux_losses["z"], (torch.logsumexp(proj.router(h), -1) ** 2).mean(), atol=1e-5)
    with torch.no_grad():
        proj.router.weight.zero_()  # equal logits: every expert equally likely
    proj(x)
    assert proj.aux_losses["balance"].item() == pytest.approx(1.0, abs=1e-6)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("tiny"))


def kind_recipe(base: Path, run_dir: Path, kind: str, **sections) -> str:
    return tiny_recipe(base, run_dir, projector={"kind": kind, "stack": 2, "hidden": 64},
                       **{f"projector.{kind}": TABLES[kind], **sections})


@pytest.mark.parametrize("kind", ["mosa", "moe", "qformer"])
def test_each_kind_learns_under_tatk_train(base, tmp_path, kind):
    """30 steps of `tatk train` on the learnable fixture: the loss falls; the MoE logs its auxiliary losses at
    every logged step and expert utilisation (shares summing to 1) at validation."""
    (tmp_path / "r.toml").write_text(kind_recipe(
        base, tmp_path / "run", kind, train={"steps": 30, "log_every": 1, "save_every": 30, "eval_every": 30}))
    done = subprocess.run([sys.executable, "tatk", "train", str(tmp_path / "r.toml")], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    m = metrics(tmp_path / "run")
    losses = [m[s]["loss"] for s in range(1, 31)]
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.05, losses
    util = {k: v for k, v in m[30].items() if k.startswith("util_expert")}
    if kind == "moe":
        assert all("aux_balance" in m[s] and "aux_z" in m[s] for s in range(1, 31))
        assert all(0 < m[s]["aux_balance"] <= 4 and m[s]["aux_z"] > 0 for s in range(1, 31))  # N·Σ f·P ≤ N
        assert sorted(util) == [f"util_expert{e}" for e in range(4)] and sum(util.values()) == pytest.approx(1.0)
    else:
        assert not util and "aux_balance" not in m[1]


def test_moe_auxiliary_losses_are_in_the_gradient(base, tmp_path):
    """One Trainer.step over 2 micro-batches: the projector's gradients equal those of CE (over the window's
    label tokens) + balance_weight·balance + z_weight·z (per micro-batch, /grad_accum), computed here by hand,
    and differ from CE's alone."""
    from tatk.train.loop import Trainer

    (tmp_path / "r.toml").write_text(kind_recipe(
        base, tmp_path / "run", "moe", train={"steps": 2, "grad_accum": 2, "log_every": 1, "save_every": 2},
        optim={"lr": 3e-3, "grad_clip": 0.0}, **{"projector.moe": {**TABLES["moe"], "balance_weight": 0.5, "z_weight": 0.1}}))
    trainer = Trainer(load_recipe(tmp_path / "r.toml", []), resume=False)
    batches = [next(trainer.batches) for _ in range(2)]
    trainer.batches = iter(batches)
    trainer.window = torch.zeros(3, dtype=torch.float64)  # set by Trainer.run, which this test does not call
    model = trainer.accelerator.unwrap_model(trainer.model)
    params = dict(model.projector.named_parameters())
    n_labels = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
    ce, aux, balance = 0.0, 0.0, 0.0
    for b in batches:
        ce = ce + model({k: v for k, v in b.items() if torch.is_tensor(v)}, reduction="sum") / n_labels
        aux = aux + (0.5 * model.projector.aux_losses["balance"] + 0.1 * model.projector.aux_losses["z"]) / 2
        balance += model.projector.aux_losses["balance"].item() / 2
    want = dict(zip(params, torch.autograd.grad(ce + aux, list(params.values()), retain_graph=True, allow_unused=True)))
    ce_only = dict(zip(params, torch.autograd.grad(ce, list(params.values()), allow_unused=True)))
    got = {}
    step = trainer.updates.step
    trainer.updates.step = lambda check: (got.update({n: p.grad.clone() for n, p in params.items()}), step(check))[1]
    trainer.step(1)
    assert (want["router.weight"] - ce_only["router.weight"]).abs().max() > 1e-4  # the aux losses do move the router
    for name, g in want.items():
        assert torch.allclose(got[name], g if g is not None else torch.zeros_like(got[name]), atol=1e-6), name
    assert set(trainer.aux_step) == {"balance", "z"}  # what the log shows: the step's unweighted mean
    assert trainer.aux_step["balance"].item() == pytest.approx(balance, abs=1e-6)


@pytest.mark.parametrize("kind, overrides, message", [
    ("moe", ["projector.moe.top_k=5"], "projector.moe.top_k: 5 is more than the 4 experts"),
    ("moe", ["projector.moe.nope=1"], "projector.moe.nope: unknown recipe key"),
    ("moe", ["projector.moe.experts=0", "projector.moe.top_k=0"], "projector.moe.experts: must be >= 1"),
    ("moe", ["projector.kind=mlp"], "projector.moe: options for kind = \"moe\", but projector.kind is 'mlp'"),
    ("moe", ["projector.kind=qformer"], "projector.moe: options for kind = \"moe\", but projector.kind is 'qformer'"),
    ("qformer", ["projector.stack=4"], "projector.qformer.window: 4 frames for 2 queries is not projector.stack (4)"),
    ("qformer", ["projector.qformer.heads=5"], "projector.qformer.heads: 5 does not divide projector.hidden (64)"),
    ("qformer", ["projector.qformer.layers=0"], "projector.qformer.layers: must be >= 1"),
])
def test_bad_projector_tables_fail_with_the_key(base, tmp_path, kind, overrides, message):
    (tmp_path / "r.toml").write_text(kind_recipe(base, tmp_path / "run", kind))
    with pytest.raises(UserError) as e:
        load_recipe(tmp_path / "r.toml", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_kind_alone_gets_default_options_and_renders_them(base, tmp_path):
    (tmp_path / "r.toml").write_text(tiny_recipe(base, tmp_path / "run"))
    r = load_recipe(tmp_path / "r.toml", ["projector.kind=moe"])
    assert r.projector.moe == MoeConfig() and r.projector.qformer is None
    text = render_recipe(r)
    assert "[projector.moe]" in text and "[projector.qformer]" not in text
    (tmp_path / "again.toml").write_text(text)
    assert load_recipe(tmp_path / "again.toml", []) == r


def test_tatk_validate_names_the_bad_projector_table_in_one_line(base, tmp_path):
    (tmp_path / "r.toml").write_text(kind_recipe(base, tmp_path / "run", "mosa"))
    bad = subprocess.run([sys.executable, "tatk", "validate", str(tmp_path / "r.toml"), "--set", "projector.kind=moe"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "projector.mosa: options for kind" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

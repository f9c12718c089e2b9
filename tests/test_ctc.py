"""The auxiliary CTC loss (train.ctc_weight): its value against a CTC forward pass written here, its place in
the training log, checkpoints, stage chaining and exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_tatk
from train_fixtures import metrics, prepare_tiny, tiny_recipe

from tatk.errors import UserError
from tatk.export.build import _trained_weights
from tatk.model.speech import IGNORE
from tatk.train.checkpoint import load_trained, read_weights
from tatk.train.collate import Codec
from tatk.train.loop import Trainer
from tatk.train.position import DataPosition
from tatk.train.recipe import load_recipe
from tatk.train.speechlm import build_model
from tatk.train.stream import shard_sets, train_loader


def ctc_reference(log_probs: np.ndarray, target: list[int], blank: int) -> float:
    """-log p(target | frames) by the CTC forward recursion (Graves et al. 2006) over the blank-extended target;
    log_probs (T, V) of one row's valid frames."""
    ext = [blank]
    for token in target:
        ext += [token, blank]
    alpha = np.full(len(ext), -np.inf)
    alpha[:2] = log_probs[0, ext[:2]]
    for t in range(1, len(log_probs)):
        prev = alpha.copy()
        for s in range(len(ext)):
            terms = [prev[s]] + [prev[s - 1]] * (s >= 1)
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(prev[s - 2])  # skip the blank between two different tokens
            alpha[s] = np.logaddexp.reduce(terms) + log_probs[t, ext[s]]
    return -float(np.logaddexp(alpha[-1], alpha[-2]))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return prepare_tiny(tmp_path_factory.mktemp("tiny"))


def test_ctc_loss_is_the_ctc_of_each_transcript_per_token(base, tmp_path):
    (tmp_path / "r.toml").write_text(tiny_recipe(base, tmp_path / "run", train={"ctc_weight": 0.5}))
    recipe = load_recipe(tmp_path / "r.toml", [])
    model = build_model(recipe, None, torch.float32).train()
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length)
    position = DataPosition(0, 1, 0, 0, [c for _, c, _ in shard_sets(recipe)])
    batch = {k: v for k, v in next(iter(train_loader(recipe, codec, position, False))).items() if torch.is_tensor(v)}
    model(batch)
    with torch.no_grad():
        audio, n_out = model.project(batch["feats"], batch["feat_lens"])
        log_probs = model.ctc_head(audio).double().log_softmax(-1).numpy()
    vocab = model.llm.get_input_embeddings().weight.shape[0]
    total, tokens = 0.0, 0
    for b, labels in enumerate(batch["labels"].tolist()):
        *target, end = [t for t in labels if t != IGNORE]  # the transcript, then the reply's end token
        assert end == model.layout.end_id and model.tokenizer.decode(target).strip()
        total += ctc_reference(log_probs[b, : n_out[b]], target, blank=vocab)
        tokens += len(target)
    assert model.aux_losses["ctc"].item() == pytest.approx(total / tokens, rel=1e-5)
    model.eval()(batch)  # validation computes no CTC: the last training value stays
    assert model.aux_losses["ctc"].item() == pytest.approx(total / tokens, rel=1e-5)


def test_ctc_trains_is_checkpointed_and_left_out_of_the_next_stage_and_the_export(base, tmp_path):
    """20 steps with ctc_weight 1: the logged CTC loss falls; the checkpoint keeps the head and rebuilds with it;
    a LoRA stage 2 without CTC starts from that checkpoint; an export's weights have no head."""
    (tmp_path / "r.toml").write_text(tiny_recipe(base, tmp_path / "run", train={"ctc_weight": 1.0, "log_every": 1, "save_every": 20}))
    run_tatk("train", tmp_path / "r.toml", env={"OMP_NUM_THREADS": "1"})
    m = metrics(tmp_path / "run")
    ctc = [m[s]["aux_ctc"] for s in range(1, 21)]
    assert sum(ctc[-5:]) / 5 < 0.8 * sum(ctc[:5]) / 5, ctc
    ckpt = tmp_path / "run" / "checkpoints" / "step-000020"
    saved = read_weights(ckpt)
    recipe, model = load_trained(ckpt)
    vocab, width = model.llm.get_input_embeddings().weight.shape
    assert saved["ctc_head.weight"].shape == model.ctc_head.weight.shape == (vocab + 1, width)
    weights = _trained_weights(recipe, model)[0]
    assert any(k.startswith("projector.") for k in weights) and not any(k.startswith("ctc_head.") for k in weights)

    (tmp_path / "s2.toml").write_text(tiny_recipe(base, tmp_path / "s2", model={"init_from": str(ckpt), "decoder": "lora"},
                                                  train={"steps": 2}))
    stage2 = Trainer(load_recipe(tmp_path / "s2.toml", []), resume=False)
    model2 = stage2.accelerator.unwrap_model(stage2.model)
    assert model2.ctc_head is None and "ctc" not in model2.aux_losses and "ctc" not in stage2.aux_weights
    assert all(torch.equal(v, saved[f"projector.{k}"]) for k, v in model2.projector.state_dict().items())


def test_negative_ctc_weight_is_refused(base, tmp_path):
    (tmp_path / "r.toml").write_text(tiny_recipe(base, tmp_path / "run", train={"ctc_weight": -0.1}))
    with pytest.raises(UserError, match=r"train.ctc_weight: must be >= 0, got -0.1"):
        load_recipe(tmp_path / "r.toml", [])

"""Projectors, prompt layout, splice, label-position logits and greedy decoding on a tiny LLM."""

from __future__ import annotations


import pytest
import torch
from train_fixtures import prepare_tiny, tiny_recipe

from tatk.train.collate import Codec
from tatk.train.position import DataPosition
from tatk.train.stream import shard_sets, train_loader
from tatk.errors import UserError
from tatk.train.speechlm import AUDIO_TOKEN, FeatureNorm, build_model, render_prompt
from tatk.model.projectors import PROJECTORS, build_projector
from tatk.train.recipe import load_recipe


@pytest.mark.parametrize("kind", sorted(PROJECTORS))
def test_projector_output_length(kind):
    torch.manual_seed(0)
    proj = build_projector(kind, 8, 12, 16, 4)
    for t in (4, 5, 7, 8, 9, 33):
        y = proj(torch.randn(2, t, 8))
        assert y.shape == (2, proj.output_length(t), 12)
    if kind not in ("conv", "qformer"):  # frame-stacking rate; conv and qformer: tests/test_projectors.py
        assert [proj.output_length(t) for t in (4, 7, 8, 9)] == [(t - 4) // 4 + 1 for t in (4, 7, 8, 9)]


def test_utterance_norm_ignores_padding():
    norm = FeatureNorm("utterance", 3)
    x = torch.randn(1, 5, 3) * 7 + 2
    padded = torch.cat([x, torch.full((1, 4, 3), 99.0)], 1)
    a, b = norm(x, torch.tensor([5])), norm(padded, torch.tensor([5]))
    assert torch.allclose(a, b[:, :5], atol=1e-5) and (b[:, 5:] == 0).all()
    assert torch.allclose(a.mean(1), torch.zeros(1, 3), atol=1e-5)


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("m")
    base = prepare_tiny(tmp)
    (tmp / "r.toml").write_text(tiny_recipe(base, tmp / "run"))
    return tmp / "r.toml"


@pytest.fixture(scope="module")
def tiny(recipe_path):
    recipe = load_recipe(recipe_path, [])
    model = build_model(recipe, None, torch.float32)
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length)
    batch = next(iter(train_loader(recipe, codec, DataPosition(0, 1, 0, 0, [c for _, c, _ in shard_sets(recipe)]), False)))
    return model, {k: v for k, v in batch.items() if torch.is_tensor(v)}


def test_layout_uses_chat_template_without_thinking(tiny):
    model, _ = tiny
    tok, lay = model.tokenizer, model.layout
    assert tok.decode(lay.prefix) == "<|im_start|>user\nTranscribe: "
    assert tok.decode(lay.suffix) == "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tok.convert_ids_to_tokens(lay.end_id) == "<|im_end|>"
    assert lay.audio_id == tok.convert_tokens_to_ids(AUDIO_TOKEN)


def test_date_lines_are_removed_or_refused(tiny):
    tok = tiny[0].tokenizer
    original = tok.chat_template
    try:
        tok.chat_template = "<|im_start|>system\nToday Date: {{ strftime_now('%d %B %Y') }}\n<|im_end|>\n" + original
        assert "Today" not in render_prompt(tok, "hi") and render_prompt(tok, "hi").startswith("<|im_start|>system\n<|im_end|>")
        tok.chat_template = "{{ strftime_now('%Y-%m-%d') }}" + original
        with pytest.raises(UserError, match="model.llm: .*date"):
            render_prompt(tok, "hi")
    finally:
        tok.chat_template = original


def test_label_position_logits_match_full_logits(tiny):
    model, batch = tiny
    labels = batch["labels"]
    assert ((labels != -100).sum(1) > 0).all()
    # label positions are exactly transcript + end token; audio positions hold projected frames
    n_audio = (batch["input_ids"] == model.layout.audio_id).sum(1)
    assert n_audio.tolist() == [model.projector.output_length(int(n)) for n in batch["feat_lens"]]
    a, b = model(batch), model(batch, label_logits_only=False)
    assert torch.allclose(a, b, atol=1e-6)


def test_attention_implementations_agree(tiny, recipe_path):
    """train.attention reaches the LLM; eager (matmul + softmax) and sdpa give one loss and one gradient on a
    batch of rows of different lengths (padding masked)."""
    sdpa, batch = tiny
    assert sdpa.llm.config._attn_implementation == "sdpa"
    assert (batch["attention_mask"] == 0).any()
    eager = build_model(load_recipe(recipe_path, ["train.attention=eager"]), None, torch.float32)
    assert eager.llm.config._attn_implementation == "eager"
    eager.load_state_dict(sdpa.state_dict())
    losses, grads = [], []
    for model in (sdpa, eager):
        model.projector.zero_grad()
        loss = model(batch)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.projector.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6) and grads[0].abs().sum() > 0


def test_flash_attention_without_its_package_is_one_line(recipe_path):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(UserError, match="^train.attention: .*FlashAttention2"):
        build_model(load_recipe(recipe_path, ["train.attention=flash_attention_2"]), None, torch.float32)


def test_splice_gradient_reaches_projector_only(tiny):
    model, batch = tiny
    model.zero_grad()
    model(batch).backward()
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    model.zero_grad()


def test_greedy_generate_returns_text(tiny):
    model, batch = tiny
    out = model.generate(batch["feats"][:3], batch["feat_lens"][:3], max_new_tokens=5)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)


@pytest.mark.parametrize("decoder", ["frozen", "lora"])
def test_compiled_training_forward_matches_eager_and_decoding_stays_eager(tiny, recipe_path, decoder):
    """train.compile: a forward with gradients runs the LLM's layers compiled and gives eager's loss and gradients
    (projector; with LoRA, the adapters too); forwards without gradients (validation, generation) compile nothing;
    the weights keep their names."""
    from torch._dynamo.utils import counters

    model, batch = tiny
    if decoder == "lora":  # without dropout: no random masks between the two forwards
        model = build_model(load_recipe(recipe_path, ["model.decoder=lora", "lora.dropout=0"]), None, torch.float32)
    names = list(model.state_dict())

    def loss_and_grads():
        model.zero_grad()
        loss = model(batch)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])

    eager = loss_and_grads()
    graphs = counters["stats"]["unique_graphs"]
    model.compile_decoder()
    try:
        compiled = loss_and_grads()
        assert counters["stats"]["unique_graphs"] > graphs  # the compiled layers ran
        graphs = counters["stats"]["unique_graphs"]
        with torch.no_grad():
            model(batch)
        model.generate(batch["feats"][:2], batch["feat_lens"][:2], max_new_tokens=3)
        assert counters["stats"]["unique_graphs"] == graphs
        assert list(model.state_dict()) == names
    finally:
        model.compiled_body = None
        model.zero_grad()
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5) and eager[0] > 0
    assert torch.allclose(compiled[1], eager[1], rtol=1e-4, atol=1e-6) and eager[1].abs().sum() > 0

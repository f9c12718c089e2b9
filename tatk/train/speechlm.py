"""The speech LM: encoder features → normalisation → projector → spliced into a causal LM's prompt.

A training row is the LLM's own chat-template prompt with the audio in the user turn, then the transcript:

    <prefix: template up to the audio> <audio>×n <suffix: rest of user turn + assistant header> text <end>

``<audio>`` is a placeholder token added to the tokenizer; its positions are overwritten with projected
frames, so it never needs an embedding row (the LLM's vocabulary is left untouched). Loss covers the
transcript and the end token only, and logits are computed only there (see ``SpeechLM.forward``).
"""

from __future__ import annotations

import re
from datetime import date

import torch
import torch.nn.functional as F
from torch import nn

from tatk.errors import UserError
from tatk.model.projectors import build_projector
from tatk.model.speech import IGNORE, FeatureNorm, PromptLayout, SpeechDecoding
from tatk.train.projector_config import model_options

__all__ = ["AUDIO_TOKEN", "IGNORE", "FeatureNorm", "PromptLayout", "SpeechLM", "build_layout", "build_model", "render_prompt"]

AUDIO_TOKEN = "<|audio|>"

_DATE_LINE = re.compile(r"^.*today date.*\n?", re.IGNORECASE | re.MULTILINE)
_DATE_FORMATS = ("%d %B %Y", "%d %b %Y", "%Y-%m-%d", "%B %d, %Y", "%b %d, %Y", "%m/%d/%Y", "%d/%m/%Y")


def render_prompt(tokenizer, user_text: str) -> str:
    """The chat template's generation prompt for one user turn: thinking disabled, no date line.

    Some templates (SmolLM3, Llama 3) write today's date into a system block: a run would train on one
    date and serve on others. The "Today Date: ..." line is dropped, then the prompt is checked for any
    remaining rendering of today's date.
    """
    messages = [{"role": "user", "content": user_text}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    text = _DATE_LINE.sub("", text)
    today = date.today()
    for fmt in _DATE_FORMATS:
        if today.strftime(fmt) in text:
            raise UserError(f"model.llm: its chat template writes today's date ({today.strftime(fmt)}) into the prompt")
    return text


def build_layout(tokenizer, prompt: str) -> PromptLayout:
    """Split the rendered template at the audio placeholder and find the token that ends a reply."""
    encode = lambda s: tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not tokenizer.chat_template:  # a base LM: plain text prompt, reply ends with EOS
        return PromptLayout(encode(prompt), encode("\n"), tokenizer.eos_token_id, audio_id, pad_id)
    prefix, suffix = render_prompt(tokenizer, prompt + AUDIO_TOKEN).split(AUDIO_TOKEN)
    turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\x01"}]
    closing = tokenizer.apply_chat_template(turns, tokenize=False, enable_thinking=False).split("\x01")[-1]
    end = encode(closing)[:1] or [tokenizer.eos_token_id]
    return PromptLayout(encode(prefix), encode(suffix), end[0], audio_id, pad_id)


class SpeechLM(SpeechDecoding, nn.Module):
    """Feature normalisation + projector in front of a causal LM.

    ``decoder`` says what of the LLM trains: ``frozen`` (nothing), ``lora`` (``llm`` is a PEFT model
    whose adapters train) or ``full`` (every weight). ``encoder`` (tatk.train.tower.AudioTower, for audio
    shards) runs the audio encoder first: ``feats`` are then its prepared inputs (B, C, S), not features.
    ``ctc`` adds a CTC head on the projected frames (train.ctc_weight): a training forward leaves its loss in
    ``aux_losses``; checkpoints keep the head, exports leave it out.
    """

    def __init__(self, llm: nn.Module, tokenizer, layout: PromptLayout, norm: FeatureNorm, projector: nn.Module,
                 decoder: str = "frozen", encoder: nn.Module | None = None, ctc: bool = False):
        super().__init__()
        self.llm, self.tokenizer, self.layout = llm, tokenizer, layout
        self.norm, self.projector, self.decoder, self.encoder = norm, projector, decoder, encoder
        # train.ctc_weight: a linear CTC head over the LLM's vocabulary + blank on the projected frames, for training
        # only. Sizes from the embedding's attributes: under ZeRO-3 its weight is a partitioned, empty tensor.
        emb = llm.get_input_embeddings()
        self.ctc_head = nn.Linear(emb.embedding_dim, emb.num_embeddings + 1) if ctc else None
        self.ctc = torch.zeros(())
        self.compiled_body = None  # train.compile: see compile_decoder
        if decoder == "frozen":
            self.llm.requires_grad_(False)
            self.llm.eval()
        elif decoder == "full":
            self.llm.requires_grad_(True)

    def train(self, mode: bool = True) -> "SpeechLM":
        super().train(mode)
        if self.decoder == "frozen":
            self.llm.eval()  # frozen: no dropout, so a step's loss depends only on the batch
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights a checkpoint must keep: trained parameters, the normaliser's statistics, and the projector
        even when this stage froze it (``projector.train = false``): it was trained by an earlier stage, and
        a checkpoint must rebuild its model on its own, without that earlier checkpoint."""
        keep = {n for n, p in self.named_parameters() if p.requires_grad or n.startswith("projector.")}
        keep |= {f"norm.{n}" for n, _ in self.norm.named_buffers()}
        return {k: v for k, v in self.state_dict().items() if k in keep}

    def project(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As SpeechDecoding.project; with an encoder inside, ``feats`` (B, C, S) become its frames (B, T, D) first."""
        if self.encoder is not None:
            feats = self.encoder(feats, feat_lens)
        return super().project(feats, feat_lens)

    def compile_decoder(self) -> None:
        """train.compile: forwards with gradients run the LLM's transformer body with its layers compiled by
        Accelerate's ``compile_regions`` (the repeated decoder layer is one graph, whatever the depth), with dynamic
        shapes (every batch has its own width and length). Its layers are shallow copies sharing the weights and
        submodules, so call this once the LLM is set up (adapters, gradient checkpointing). Forwards without
        gradients (validation, generation) stay eager: each of their shapes and KV caches would be one more graph
        to compile, for a few hundred utterances."""
        from accelerate.utils import compile_regions

        self.compiled_body = compile_regions(self.llm.get_decoder(), dynamic=True).forward

    @property
    def aux_losses(self) -> dict[str, torch.Tensor]:
        """The last training forward's auxiliary losses (unweighted): the projector's (moe) and ``ctc``."""
        return {**getattr(self.projector, "aux_losses", {}), **({"ctc": self.ctc} if self.ctc_head is not None else {})}

    def ctc_loss(self, audio: torch.Tensor, n_out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CTC loss of each row's transcript tokens on its projected frames, per transcript token.

        audio (B, T', H) and n_out (B,) from ``project``; labels (B, L) as in a training row (IGNORE outside
        transcript + end token; the end token is not a CTC target). The blank is an extra class after the
        vocabulary. A row with more targets than frames cannot be aligned: it contributes 0 (zero_infinity).
        """
        has = labels != IGNORE
        count = has.sum(1)
        targets = labels[has & (has.cumsum(1) < count[:, None])]  # (ΣN,): every row's labels but its last
        log_probs = self.ctc_head(audio).float().log_softmax(-1).transpose(0, 1)  # (T', B, V + 1)
        loss = F.ctc_loss(log_probs, targets, n_out, count - 1, blank=self.ctc_head.out_features - 1,
                          reduction="sum", zero_infinity=True)
        return loss / (count - 1).sum().clamp_min(1)

    def forward(self, batch: dict[str, torch.Tensor], label_logits_only: bool = True, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy over transcript + end tokens of a batch from ``tatk.train.stream.collate``: their mean,
        or with ``reduction="sum"`` their sum (the loop divides by the whole accumulation window's count).

        The LM head maps H to the whole vocabulary (~152k for Qwen3): applying it at every position costs
        as much as a large share of the LLM. Only positions whose next token is a label need logits, so
        hidden states are gathered there first ((N, H) instead of (B, L, H)).
        """
        audio, n_out = self.project(batch["feats"], batch["feat_lens"])
        if self.ctc_head is not None and self.training:
            self.ctc = self.ctc_loss(audio, n_out, batch["labels"])
        embeds = self.splice(batch["input_ids"], audio, n_out)
        # get_decoder(): the transformer body without the LM head (reached through a PEFT wrapper too)
        body = self.compiled_body if self.compiled_body is not None and torch.is_grad_enabled() else self.llm.get_decoder()
        # use_cache=False: a training forward has no use for a KV cache (the config's default builds one)
        hidden = body(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
        targets = batch["labels"][:, 1:]
        at = targets != IGNORE  # (B, L-1): hidden state t predicts token t+1
        head = self.llm.get_output_embeddings()
        if label_logits_only:
            logits = head(hidden[:, :-1][at])  # (N, V)
        else:
            logits = head(hidden[:, :-1])[at]
        return F.cross_entropy(logits.float(), targets[at], reduction=reduction)

    def generate(self, feats: torch.Tensor, feat_lens: torch.Tensor, max_new_tokens: int, **options) -> list[str]:
        """Transcripts of a batch of features (B, T, D) with lengths (B,): greedy, or beam search with
        ``num_beams=N`` and the other ``options`` of SpeechDecoding.generate_ids."""
        out = self.generate_ids(feats, feat_lens, max_new_tokens, **options)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def build_model(recipe, stats: dict | None, llm_dtype: torch.dtype, allow_missing_stats: bool = False) -> SpeechLM:
    """Load the LLM and tokenizer by id or path and build a seeded projector for ``recipe`` (a tatk.train.recipe.Recipe).

    ``stats`` is the manifest's {"mean": [...], "std": [...]} (needed for features.normalize = "global");
    ``allow_missing_stats`` builds placeholders instead, for a model whose checkpoint holds them.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(recipe.model.llm)
        llm = AutoModelForCausalLM.from_pretrained(recipe.model.llm, dtype=llm_dtype, attn_implementation=recipe.train.attention)
    except OSError as e:
        raise UserError(f"model.llm: cannot load {recipe.model.llm!r} ({str(e).splitlines()[0]})") from None
    except ImportError as e:  # flash_attention_2 without the flash-attn package
        raise UserError(f"train.attention: {str(e).splitlines()[0]}") from None
    tokenizer.add_tokens([AUDIO_TOKEN], special_tokens=True)
    layout = build_layout(tokenizer, recipe.model.prompt)
    feats = recipe.features
    if feats.normalize == "global" and not stats:
        if not allow_missing_stats:
            raise UserError("features.normalize: 'global' needs feature stats in the shard manifest")
        stats = {"mean": [0.0] * feats.dim, "std": [1.0] * feats.dim}
    norm = FeatureNorm(feats.normalize, feats.dim, *((stats["mean"], stats["std"]) if stats else ()))
    torch.manual_seed(recipe.run.seed)  # same projector and adapter init on every rank and every run
    p = recipe.projector
    projector = build_projector(p.kind, feats.dim, llm.get_input_embeddings().embedding_dim, p.hidden, p.stack,
                                model_options(p))
    projector.requires_grad_(p.train)
    if recipe.model.decoder == "lora":
        from peft import LoraConfig, get_peft_model

        lora = recipe.lora
        targets = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                            task_type="CAUSAL_LM")
        try:
            llm = get_peft_model(llm, config)
        except ValueError as e:
            raise UserError(f"lora.target_modules: {str(e).splitlines()[0]}") from None
    encoder = None
    if recipe.data.content == "audio":  # the model runs the encoder itself (frozen, or with LoRA adapters)
        from tatk.train.tower import build_tower

        encoder = build_tower(recipe, llm_dtype)
    return SpeechLM(llm, tokenizer, layout, norm, projector, recipe.model.decoder, encoder, ctc=recipe.train.ctc_weight > 0)

"""An exported tatk speech recognizer: frozen encoder → feature norm → projector → causal LM.

Two layouts, one class:

- default: ``model.safetensors`` holds only what training changed (projector, normaliser statistics,
  LoRA adapter pairs or a fully trained decoder); the base encoder and LLM are loaded by id and
  revision with ``from_pretrained``, then the trained weights are applied. LoRA pairs are merged as
  ``W += scale · B @ A`` (scale = alpha / r), so peft is not needed at load time;
- ``merged``: every weight is in the export (LoRA already merged); nothing else is downloaded.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .configuration_tatk import TatkAsrConfig
from .encoder import (
    AudioEncoder,
    audio_model_from_config,
    conv_layers,
    load_audio_model,
)
from .projectors import build_projector
from .speech import FeatureNorm, PromptLayout, SpeechDecoding

WEIGHTS = "model.safetensors"
LORA_PREFIX = "lora."  # "lora.<LLM module path>.A" (r, in) and ".B" (out, r)
ENCODER_LORA_PREFIX = "encoder_lora."  # the same for adapters trained on the encoder (model.encoder = "lora")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def pinned(revision: str) -> str | None:
    """A revision ``from_pretrained`` can use: a Hub commit; content hashes of local folders are provenance only."""
    return revision if _COMMIT.match(revision or "") else None


def merge_lora(module: torch.nn.Module, pairs: dict[str, torch.Tensor], prefix: str, scale: float) -> None:
    """Add ``scale · B @ A`` to the weight of every Linear of ``module`` named in ``pairs`` ("<prefix><path>.A" /
    ".B"), computed in float32: what PEFT's ``merge_and_unload`` does, without needing peft."""
    paths = sorted({k[len(prefix):].rsplit(".", 1)[0] for k in pairs})
    for path in paths:
        a, b = pairs[f"{prefix}{path}.A"], pairs[f"{prefix}{path}.B"]
        weight = module.get_submodule(path).weight
        delta = scale * (b.float() @ a.float())  # (out, r) @ (r, in)
        weight.data = (weight.data.float() + delta.to(weight.device)).to(weight.dtype)


class MissingBaseModel(LookupError):
    """A base model this export names cannot be loaded. Not an OSError: transformers' ``pipeline`` catches those
    and retries other classes, burying the one line that says what is missing under several tracebacks."""


def _load_base(what: str, name: str, load):
    """``load()`` of the base ``what`` named ``name``, or one clear ``MissingBaseModel`` naming it and the fix."""
    fix = "re-export with `tatk export --merged` to store every weight in the export folder"
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_like_path and not os.path.isdir(os.path.expanduser(name)):
        raise MissingBaseModel(f"this tatk export needs its base {what} {name!r}, a folder that is not there; {fix}")
    try:
        return load()
    except (OSError, ValueError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MissingBaseModel(f"this tatk export needs its base {what} {name!r}, which cannot be loaded ({why}); {fix}") from None


def _dtype(value) -> torch.dtype:
    """``from_pretrained``'s dtype argument: None / "auto" → float32 (CPU-safe; pass bfloat16 for GPUs)."""
    if value is None or value == "auto":
        return torch.float32
    return getattr(torch, value) if isinstance(value, str) else value


class TatkAsrModel(SpeechDecoding, PreTrainedModel):
    """Transcribes features with ``transcribe`` (greedy); the pipeline in ``pipeline_tatk`` feeds it audio."""

    config_class = TatkAsrConfig
    base_model_prefix = "tatk"
    main_input_name = "input_features"

    def __init__(self, config: TatkAsrConfig, encoder: torch.nn.Module | None = None, llm: torch.nn.Module | None = None):
        super().__init__(config)
        if llm is None:  # built from the stored configs; from_pretrained then loads every weight (merged export)
            if not config.llm_config:
                raise ValueError("this tatk export holds only trained weights: load it with from_pretrained")
            if config.encoder_config:
                encoder = audio_model_from_config(config.encoder_config)
            llm_cfg = dict(config.llm_config)
            llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(llm_cfg.pop("model_type"), **llm_cfg))
        self.encoder = encoder
        self.norm = FeatureNorm(config.normalize, config.feature_dim)
        self.projector = build_projector(config.projector_kind, config.feature_dim, config.llm_hidden,
                                         config.projector_hidden, config.projector_stack, config.projector_options)
        self.llm = llm
        self.layout = PromptLayout(list(config.prompt_prefix), list(config.prompt_suffix), config.end_token_id,
                                   config.audio_token_id, config.pad_token_id)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Load an export by Hub id or folder. Without ``merged``, the base encoder and LLM come from their own
        ids (Hub or local folders, so ``HF_HUB_OFFLINE=1`` works when they are folders)."""
        from safetensors.torch import load_file
        from transformers.utils import cached_file

        name = str(pretrained_model_name_or_path)
        base = {k: kwargs[k] for k in ("token", "cache_dir", "local_files_only") if kwargs.get(k) is not None}
        here = dict(base, **({"revision": kwargs["revision"]} if kwargs.get("revision") else {}))
        if not isinstance(config, TatkAsrConfig):
            config = TatkAsrConfig.from_pretrained(name, **here)
        dtype = _dtype(kwargs.get("dtype", kwargs.get("torch_dtype")))
        if config.merged:
            kwargs.pop("torch_dtype", None)
            return super().from_pretrained(name, *model_args, config=config, **{**kwargs, "dtype": dtype}).eval()
        weights = load_file(cached_file(name, WEIGHTS, **here))
        encoder = None
        if config.encoder_kind != "mel":
            revision = pinned(config.encoder_revision)
            enc_config = _load_base("encoder", config.encoder, lambda: AutoConfig.from_pretrained(config.encoder, revision=revision, **base))
            encoder = load_audio_model(config.encoder, enc_config, dtype, revision=revision, **base)
        llm = _load_base("LLM", config.llm, lambda: AutoModelForCausalLM.from_pretrained(
            config.llm, revision=pinned(config.llm_revision), dtype=dtype, **base))
        model = cls(config, encoder=encoder, llm=llm)
        model.load_trained(weights)
        return model.to(dtype).eval()

    def load_trained(self, weights: dict[str, torch.Tensor]) -> None:
        """Apply an export's trained weights: projector and norm (all required), a full decoder's ``llm.*``,
        LoRA pairs merged into the base LLM and encoder."""
        lora = {k: v for k, v in weights.items() if k.startswith(LORA_PREFIX)}
        enc_lora = {k: v for k, v in weights.items() if k.startswith(ENCODER_LORA_PREFIX)}
        rest = {k: v for k, v in weights.items() if k not in lora and k not in enc_lora}
        missing, unexpected = self.load_state_dict(rest, strict=False)
        if unexpected:
            raise ValueError(f"{WEIGHTS}: weight {unexpected[0]!r} does not exist in this model")
        lacking = [k for k in missing if k.startswith(("projector.", "norm."))]
        if lacking:
            raise ValueError(f"{WEIGHTS}: trained weight {lacking[0]!r} is missing")
        if self.config.decoder == "lora" and not lora:
            raise ValueError(f"{WEIGHTS}: decoder is 'lora' but there are no adapter weights")
        merge_lora(self.llm, lora, LORA_PREFIX, self.config.lora_scale)
        if enc_lora and self.encoder is None:
            raise ValueError(f"{WEIGHTS}: encoder adapters but no encoder network")
        if enc_lora:
            merge_lora(self.encoder, enc_lora, ENCODER_LORA_PREFIX, self.config.encoder_lora_scale)

    def audio_encoder(self, extractor) -> AudioEncoder:
        """The encoder's two halves (prepare on CPU, encode on this model's device) around ``extractor``."""
        conv = conv_layers(self.encoder.config) if self.encoder is not None else []
        return AudioEncoder(self.config.encoder_kind, extractor, self.encoder, conv, self.device, self.dtype,
                            window=getattr(self.config, "encoder_window", "") or None)

    @torch.no_grad()
    def transcribe(self, feats: list[np.ndarray], max_new_tokens: int | None = None, **options) -> list[torch.Tensor]:
        """Reply token ids, one tensor per (frames_i, D) feature array; batched with left padding. Greedy unless
        ``options`` say otherwise (``num_beams``, ``length_penalty``, ``repetition_penalty``, a ``streamer``:
        see ``speech.GENERATE_OPTIONS``).

        An input too short for a single audio position gets no tokens.
        """
        lens = [len(f) for f in feats]
        keep = [i for i, n in enumerate(lens) if self.projector.output_length(n) >= 1]
        out = [torch.zeros(0, dtype=torch.long) for _ in feats]
        if not keep:
            return out
        x = torch.zeros(len(keep), max(lens[i] for i in keep), self.config.feature_dim)
        for row, i in enumerate(keep):
            x[row, : lens[i]] = torch.from_numpy(np.asarray(feats[i], dtype=np.float32))
        ids = self.generate_ids(x.to(self.device, self.dtype), torch.tensor([lens[i] for i in keep], device=self.device),
                                max_new_tokens or self.config.max_new_tokens, **options)
        for row, i in enumerate(keep):
            out[i] = ids[row].cpu()
        return out

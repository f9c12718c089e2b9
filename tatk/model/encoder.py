"""Frozen audio encoders: 16 kHz waveform → model input → (frames, dim) features.

Work is split in two so the expensive part runs alone on the accelerator:

- ``prepare(wave)`` is CPU work (log-mel, normalisation), done in data-loader workers;
- ``encode(batch)`` runs the network on a batch of prepared inputs under ``torch.inference_mode``.

Kinds: GLM-ASR-Nano's ``GlmAsrEncoder``, Whisper encoders, HuBERT / wav2vec2-style encoders, and
``mel`` (log-mel frames, no network). ``tatk shard`` (``tatk.shard.encoders.FrozenEncoder``) and the exported
model's pipeline use this same code, so served features equal the stored ones.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16_000
MEL_PER_SECOND = 100  # Whisper-style log-mel: one frame per 160 samples
WINDOWS = ("30s", "fit")
WAVEFORM_TYPES = ("hubert", "wav2vec2", "wavlm", "data2vec-audio")
MODEL_TYPES = ("glmasr", "glmasr_encoder", "whisper") + WAVEFORM_TYPES


def conv_out(n: int) -> int:
    """Frames after Whisper/GLM-ASR's conv stem (k3 s1, then k3 s2, padding 1) for ``n`` mel frames."""
    return (n - 1) // 2 + 1


def encoder_kind(model_type: str) -> str:
    """tatk's kind for a transformers ``model_type`` (GLM-ASR's composite and encoder-only types are one kind)."""
    return "glmasr" if model_type.startswith("glmasr") else model_type


def windows_for(kind: str) -> tuple[str, ...]:
    """The encoding windows a kind of encoder supports, its default first.

    GLM-ASR uses rotary positions, so it accepts any length: ``30s`` pads every clip to a 30-s window (its
    official processor's behaviour), ``fit`` pads each clip only up to its next whole second. Whisper's
    positions are absolute (always 30 s); waveform encoders and ``mel`` always encode the clip's own length.
    """
    if kind == "glmasr":
        return WINDOWS
    return ("30s",) if kind == "whisper" else ("fit",)


def window_error(kind: str, window: str) -> str | None:
    """Why ``window`` is not usable with a ``kind`` encoder, or None when it is."""
    allowed = windows_for(kind)
    if window in allowed:
        return None
    return f"{window!r} is not a window of {kind} encoders (they support {' or '.join(allowed)})"


def fit_mel_frames(audio_frames: int, window_frames: int = 30 * MEL_PER_SECOND) -> int:
    """Mel frames of a ``fit`` window for a clip covering ``audio_frames`` mel frames: the next whole second,
    at most one 30-s window (longer clips are cut to 30-s windows before they get here, as with ``30s``)."""
    seconds = max(1, -(-audio_frames // MEL_PER_SECOND))
    return min(seconds * MEL_PER_SECOND, window_frames)


def conv_layers(config) -> list[tuple[int, int]]:
    """(kernel, stride) of a waveform encoder's conv feature extractor; empty for mel-based encoders."""
    if getattr(config, "model_type", "") not in WAVEFORM_TYPES:
        return []
    return list(zip(config.conv_kernel, config.conv_stride))


class MissingEncoderWeights(ValueError):
    """A checkpoint lacks some of its encoder's tensors (tatk's commands report it as one line)."""


def load_audio_model(name: str, config, dtype: torch.dtype, **hub_kwargs) -> torch.nn.Module:
    """The encoder network of checkpoint ``name`` (its ``config`` already loaded). From a composite speech-to-text
    checkpoint (GLM-ASR, Whisper) only the encoder's own tensors are loaded (``encoder_of``)."""
    from transformers import AutoModel

    kind = config.model_type
    load = dict(dtype=dtype, **hub_kwargs)
    if kind in ("glmasr", "whisper"):
        return encoder_of(name, config, load)
    if kind == "glmasr_encoder":
        from transformers import GlmAsrEncoder

        return GlmAsrEncoder.from_pretrained(name, **load)
    return AutoModel.from_pretrained(name, **load)


def encoder_of(name: str, config, load: dict) -> torch.nn.Module:
    """The encoder of a GLM-ASR or Whisper checkpoint, built alone and given the checkpoint's ``audio_tower.*`` /
    ``encoder.*`` tensors. The rest is never materialised: GLM-ASR-Nano's LLM is 1.5 B of its 2.1 B parameters,
    and loading the whole model in fp32 to keep its encoder peaked at 13.2 GB against 4.2 (docs/real-sizes.md).
    A checkpoint whose encoder tensors are named otherwise loads whole, through transformers' own name mappings;
    one that lacks some of them is refused (MissingEncoderWeights) rather than encoded with random weights."""
    from transformers import GlmAsrEncoder, GlmAsrForConditionalGeneration, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    from transformers.utils import logging

    # the encoder's class and config, its checkpoint prefix, the whole model and the encoder's place in it
    if config.model_type == "glmasr":
        cls, part, prefix = GlmAsrEncoder, config.audio_config, "audio_tower"
        whole, path = GlmAsrForConditionalGeneration, "model.audio_tower"
    else:
        cls, part, prefix, whole, path = WhisperEncoder, config, "encoder", WhisperModel, "encoder"
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # every LLM / decoder tensor is "unexpected" here: a table of them helps no one
    try:
        model, info = cls.from_pretrained(name, config=part, key_mapping={rf"^(?:model\.)?{prefix}\.": ""},
                                          output_loading_info=True, **load)
        if not info["missing_keys"]:
            return model
        model, info = whole.from_pretrained(name, config=config, output_loading_info=True, **load)
    finally:
        logging.set_verbosity(verbosity)
    missing = sorted(k for k in info["missing_keys"] if k.startswith(path + "."))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise MissingEncoderWeights(f"{name}: the checkpoint has no weights for {len(missing)} of its encoder's "
                                    f"tensors ({shown})")
    return model.get_submodule(path)


def audio_model_from_config(config: dict) -> torch.nn.Module:
    """An encoder network with the architecture of ``config`` (a ``to_dict()`` of the network's own config),
    weights left to the caller (an exported model with every weight loads them after)."""
    import transformers
    from transformers import AutoConfig, AutoModel

    config = dict(config)
    model_type = config.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **config)
    if model_type == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return WhisperEncoder(cfg)
    if model_type == "glmasr_encoder":
        return transformers.GlmAsrEncoder(cfg)
    return AutoModel.from_config(cfg)


class AudioEncoder:
    """A frozen encoder's two halves. Subclasses or callers set ``kind``, ``extractor`` (a transformers
    feature extractor), ``model`` (None for ``mel``), ``conv`` (see ``conv_layers``), ``device`` and
    ``compute_dtype``."""

    def __init__(self, kind: str, extractor, model: torch.nn.Module | None = None, conv: list | None = None,
                 device: str | torch.device = "cpu", compute_dtype: torch.dtype = torch.float32, window: str | None = None):
        self.kind, self.extractor, self.model, self.conv = kind, extractor, model, conv or []
        self.device, self.compute_dtype = torch.device(device), compute_dtype
        self.window = window or windows_for(kind)[0]
        if window_error(kind, self.window):
            raise ValueError(window_error(kind, self.window))

    def prepare(self, wave: np.ndarray) -> np.ndarray:
        """Model input for one 16 kHz waveform: log-mel (n_mels, T) or a normalised waveform (samples,).

        Whisper and GLM-ASR pad every clip to a window decided by the clip alone: 30 s (3000 mel frames,
        as at inference) or, with GLM-ASR's ``fit`` window, its next whole second; so a clip's features do not
        depend on what else is in its batch. A mask row (n_mels + 1) marks the audio.
        """
        if self.kind in WAVEFORM_TYPES:
            return self.extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0].astype(np.float32)
        padding, length = ("longest", None) if self.kind == "mel" else ("max_length", self.extractor.n_samples)
        if self.window == "fit" and self.kind != "mel":  # the next whole second, at most the 30-s window
            length = min(max(1, -(-len(wave) // SAMPLE_RATE)) * SAMPLE_RATE, length)
        out = self.extractor(wave, sampling_rate=SAMPLE_RATE, padding=padding, max_length=length, truncation=True,
                             return_attention_mask=True, return_tensors="np")
        mel = out.input_features[0].astype(np.float32)
        return mel if self.kind == "mel" else np.concatenate([mel, out.attention_mask[0][None].astype(np.float32)])

    def n_frames(self, prepared: np.ndarray) -> int:
        """Number of output frames that cover the audio of one prepared input."""
        if self.kind == "mel":
            return prepared.shape[1]
        if self.kind in WAVEFORM_TYPES:
            n = prepared.shape[0]
            for kernel, stride in self.conv:  # as transformers' _get_feat_extract_output_lengths
                n = (n - kernel) // stride + 1
            return max(n, 0)
        return conv_out(int(prepared[-1].sum()))

    @torch.inference_mode()
    def encode(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """Features for a batch of prepared inputs: a list of float32 arrays of shape (frames_i, dim)."""
        lengths = [self.n_frames(p) for p in batch]
        if self.kind == "mel":
            return [p.T.copy() for p in batch]
        if self.kind in WAVEFORM_TYPES:
            longest = max(len(p) for p in batch)
            x = torch.zeros(len(batch), longest)
            mask = torch.zeros(len(batch), longest, dtype=torch.long)
            for i, p in enumerate(batch):
                x[i, : len(p)], mask[i, : len(p)] = torch.from_numpy(p), 1
            kwargs = {"attention_mask": mask.to(self.device)} if self.extractor.return_attention_mask else {}
            hidden = self.model(x.to(self.device, self.compute_dtype), **kwargs).last_hidden_state
        else:  # one forward per window length (one under 30 s), so no clip is padded past its own window
            out: list[np.ndarray | None] = [None] * len(batch)
            for width in sorted({p.shape[-1] for p in batch}):
                idx = [i for i, p in enumerate(batch) if p.shape[-1] == width]
                mel = torch.from_numpy(np.stack([batch[i][:-1] for i in idx]))
                hidden = self.model(mel.to(self.device, self.compute_dtype)).last_hidden_state.float().cpu().numpy()
                for j, i in enumerate(idx):
                    out[i] = hidden[j, : lengths[i]]
            return out
        hidden = hidden.float().cpu().numpy()
        return [hidden[i, :n] for i, n in enumerate(lengths)]

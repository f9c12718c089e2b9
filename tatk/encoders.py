"""Frozen audio encoders: waveform → (frames, dim) features, computed once and stored in shards.

Work is split in two so the expensive part runs alone on the accelerator:

- ``prepare(wave)`` runs in CPU worker processes (log-mel, normalisation);
- ``encode(batch)`` runs the network on a length-sorted batch under ``torch.inference_mode``.

Kinds: GLM-ASR-Nano's ``GlmAsrEncoder`` (default), Whisper encoders, HuBERT / wav2vec2-style
encoders, and ``mel`` (log-mel frames, no network) for tests and CPU demos.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tatk.audio import SAMPLE_RATE
from tatk.errors import UserError, first_line

WAVEFORM_TYPES = ("hubert", "wav2vec2", "wavlm", "data2vec-audio")


@dataclass
class EncoderInfo:
    """What the manifest records about the encoder that made a shard set."""

    kind: str  # glmasr | whisper | hubert | wav2vec2 | ... | mel
    id: str  # Hub id, local folder or "mel:N"
    revision: str  # Hub commit, or sha256 of a local folder's weights
    dim: int
    frame_rate: float  # output frames per second
    dtype: str = "float16"  # dtype of the stored features
    feature_extractor: dict = field(default_factory=dict)


def _conv_out(n: int) -> int:
    """Frames after Whisper/GLM-ASR's conv stem (k3 s1, then k3 s2, padding 1) for ``n`` mel frames."""
    return (n - 1) // 2 + 1


class FrozenEncoder:
    """A frozen encoder. ``prepare`` is picklable work for workers; ``encode`` runs the network."""

    def __init__(self, name: str, device: str | torch.device = "cpu", dtype: str = "float16"):
        self.device = torch.device(device)
        # bf16 on GPU halves memory traffic; CPU stays fp32 (CPU bf16 matmuls are slow and inexact).
        self.compute_dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model = None
        if name == "mel" or name.startswith("mel:"):
            self._init_mel(name)
        else:
            self._init_pretrained(name)
        self.info.dtype = dtype

    # -- loading ---------------------------------------------------------------------------------
    def _init_mel(self, name: str) -> None:
        from transformers import WhisperFeatureExtractor

        n_mels = int(name.split(":")[1]) if ":" in name else 80
        self.kind, self.extractor = "mel", WhisperFeatureExtractor(feature_size=n_mels)
        self.info = EncoderInfo("mel", f"mel:{n_mels}", "log-mel", n_mels, SAMPLE_RATE / self.extractor.hop_length,
                                feature_extractor=self.extractor.to_dict())

    def _init_pretrained(self, name: str) -> None:
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
            raise UserError(f"--encoder {name!r}: no such folder")
        try:
            config = AutoConfig.from_pretrained(name)
            self.extractor = AutoFeatureExtractor.from_pretrained(name)
        except Exception as e:
            raise UserError(f"--encoder {name!r}: not a loadable model (Hub id or local folder): {first_line(e)}") from None
        kind = config.model_type
        load = dict(dtype=self.compute_dtype)
        if kind == "glmasr":
            from transformers import GlmAsrForConditionalGeneration

            model = GlmAsrForConditionalGeneration.from_pretrained(name, **load).model.audio_tower
        elif kind == "glmasr_encoder":
            from transformers import GlmAsrEncoder

            model = GlmAsrEncoder.from_pretrained(name, **load)
        elif kind == "whisper":
            model = AutoModel.from_pretrained(name, **load).get_encoder()
        elif kind in WAVEFORM_TYPES:
            model = AutoModel.from_pretrained(name, **load)
        else:
            raise UserError(f"--encoder {name!r}: model type {kind!r} is not a supported audio encoder")
        self.kind = "glmasr" if kind.startswith("glmasr") else kind
        self.model = model.to(self.device).eval().requires_grad_(False)
        dim = self.model.config.hidden_size if self.kind in WAVEFORM_TYPES + ("glmasr",) else self.model.config.d_model
        rate = SAMPLE_RATE / int(np.prod(self.model.config.conv_stride)) if self.kind in WAVEFORM_TYPES else 50.0
        self.info = EncoderInfo(self.kind, name, _revision(name, config), dim, rate,
                                feature_extractor=self.extractor.to_dict())

    # -- the two halves of encoding ---------------------------------------------------------------
    def prepare(self, wave: np.ndarray) -> np.ndarray:
        """Model input for one 16 kHz waveform: log-mel (n_mels, T) or a normalised waveform (samples,).

        Whisper and GLM-ASR pad every clip to 30 s (3000 mel frames), exactly as at inference, so a
        clip's features do not depend on what else is in its batch.
        """
        if self.kind in WAVEFORM_TYPES:
            return self.extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0].astype(np.float32)
        padding = "longest" if self.kind == "mel" else "max_length"
        out = self.extractor(wave, sampling_rate=SAMPLE_RATE, padding=padding, return_attention_mask=True, return_tensors="np")
        mel = out.input_features[0].astype(np.float32)
        return mel if self.kind == "mel" else np.concatenate([mel, out.attention_mask[0][None].astype(np.float32)])

    def n_frames(self, prepared: np.ndarray) -> int:
        """Number of output frames that cover the audio of one prepared input."""
        if self.kind == "mel":
            return prepared.shape[1]
        if self.kind in WAVEFORM_TYPES:
            return int(self.model._get_feat_extract_output_lengths(torch.tensor(prepared.shape[0])))
        return _conv_out(int(prepared[-1].sum()))

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
        else:
            mel = torch.from_numpy(np.stack([p[:-1] for p in batch]))
            hidden = self.model(mel.to(self.device, self.compute_dtype)).last_hidden_state
        hidden = hidden.float().cpu().numpy()
        return [hidden[i, :n] for i, n in enumerate(lengths)]


def _revision(name: str, config) -> str:
    """Hub commit hash when loaded from the Hub; otherwise a content hash of the local weights."""
    if getattr(config, "_commit_hash", None):
        return config._commit_hash
    folder = Path(name)
    digest = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.json")):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]

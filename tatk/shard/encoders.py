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

from tatk.data.audio import SAMPLE_RATE
from tatk.errors import UserError, first_line
from tatk.model.encoder import (
    MODEL_TYPES,
    WAVEFORM_TYPES,
    AudioEncoder,
    MissingEncoderWeights,
    conv_layers,
    encoder_kind,
    load_audio_model,
    window_error,
    windows_for,
)


@dataclass
class EncoderInfo:
    """What the manifest records about the encoder that made a shard set."""

    kind: str  # glmasr | whisper | hubert | wav2vec2 | ... | mel
    id: str  # Hub id, local folder or "mel:N"
    revision: str  # Hub commit, or sha256 of a local folder's weights
    dim: int
    frame_rate: float  # output frames per second
    dtype: str = "float16"  # dtype of the stored features
    window: str = "30s"  # 30s (every clip padded to 30 s) | fit (next whole second; GLM-ASR); see windows_for
    feature_extractor: dict = field(default_factory=dict)


def manifest_window(encoder: dict) -> str:
    """The window a manifest's ``encoder`` entry was made with (manifests from before windows: the kind's default)."""
    return encoder.get("window") or windows_for(encoder.get("kind", "mel"))[0]


class FrozenEncoder(AudioEncoder):
    """A frozen encoder loaded by name. ``prepare`` is picklable work for workers; ``encode`` runs the network
    (both from ``tatk.model.encoder.AudioEncoder``, the code exported models run too)."""

    def __init__(self, name: str, device: str | torch.device = "cpu", dtype: str = "float16", network: bool = True,
                 window: str | None = None):
        """``network=False`` loads only the config and preprocessing (``prepare``, ``n_frames``, ``info``):
        enough to store audio, or to prepare inputs in worker processes, without loading the weights.
        ``window``: ``30s`` | ``fit`` (see ``windows_for``); None takes the kind's default."""
        self.device = torch.device(device)
        # bf16 on GPU halves memory traffic; CPU stays fp32 (CPU bf16 matmuls are slow and inexact).
        self.compute_dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model, self.conv = None, []
        self.window = window
        if name == "mel" or name.startswith("mel:"):
            self._init_mel(name)
        else:
            self._init_pretrained(name, network)
        self.info.dtype = dtype

    @property
    def window_option(self) -> str | None:
        """The window as a shard option: None when it is the kind's default (as in folders made before windows
        existed, which then still resume), else its name."""
        return None if self.window == windows_for(self.kind)[0] else self.window

    def _check_window(self) -> None:
        """Resolve and check the window once the kind is known, before any weights are loaded."""
        self.window = self.window or windows_for(self.kind)[0]
        if window_error(self.kind, self.window):
            raise UserError(f"--window: {window_error(self.kind, self.window)}")
        self.info.window = self.window

    # -- loading ---------------------------------------------------------------------------------
    def _init_mel(self, name: str) -> None:
        from transformers import WhisperFeatureExtractor

        n_mels = int(name.split(":")[1]) if ":" in name else 80
        self.kind, self.extractor = "mel", WhisperFeatureExtractor(feature_size=n_mels)
        self.info = EncoderInfo("mel", f"mel:{n_mels}", "log-mel", n_mels, SAMPLE_RATE / self.extractor.hop_length,
                                feature_extractor=self.extractor.to_dict())
        self._check_window()

    def _init_pretrained(self, name: str, network: bool) -> None:
        """A Hub id or folder: config and feature extractor, then (``network``) the weights."""
        from transformers import AutoConfig, AutoFeatureExtractor

        if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
            raise UserError(f"--encoder {name!r}: no such folder")
        try:
            config = AutoConfig.from_pretrained(name)
            self.extractor = AutoFeatureExtractor.from_pretrained(name)
        except Exception as e:
            raise UserError(f"--encoder {name!r}: not a loadable model (Hub id or local folder): {first_line(e)}") from None
        kind = config.model_type
        if kind not in MODEL_TYPES:
            raise UserError(f"--encoder {name!r}: model type {kind!r} is not a supported audio encoder")
        self.kind = encoder_kind(kind)
        enc_config = config.audio_config if kind == "glmasr" else config
        dim = enc_config.d_model if kind == "whisper" else enc_config.hidden_size
        # Waveform encoders: one frame per product-of-conv-strides samples; computed from the config,
        # so frame counts need no weights (see n_frames).
        self.conv = conv_layers(config)
        rate = SAMPLE_RATE / int(np.prod(config.conv_stride)) if self.kind in WAVEFORM_TYPES else 50.0
        self.info = EncoderInfo(self.kind, name, _revision(name, config), dim, rate,
                                feature_extractor=self.extractor.to_dict())
        self._check_window()
        self._source = (name, config)
        if network:
            self.load_weights()

    def load_weights(self) -> None:
        """Load the network of an encoder made with ``network=False`` (nothing to do once loaded, or for ``mel``):
        one ``tatk shard`` command loads it once for all its splits, and only if a split has work left."""
        if self.model is not None or self.kind == "mel":
            return
        try:
            model = load_audio_model(*self._source, self.compute_dtype)
        except MissingEncoderWeights as e:
            raise UserError(str(e)) from None
        self.model = model.to(self.device).eval().requires_grad_(False)


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

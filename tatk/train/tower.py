"""The encoder inside the model, for audio shards: run at every training step, frozen or with LoRA adapters.

Feature shards hold a frozen encoder's output, so training never runs the encoder. Audio shards
(``tatk shard --store audio``, recipe ``data.content = "audio"``) hold 16 kHz FLAC instead; the SpeechLM
then carries the encoder and runs it on every batch, in two halves like ``tatk shard``:

- ``TowerInputs`` (DataLoader workers): FLAC → waveform → the encoder's input, prepared exactly as
  ``tatk shard`` prepares it (``FrozenEncoder.prepare``: log-mel padded to 30 s, or a normalised
  waveform), and a list of those → one zero-padded batch (B, C, S);
- ``AudioTower`` (the model): that batch → frames (B, T, D), T the longest clip's frame count. Frames
  past a clip's own count are not zeroed here: FeatureNorm, next in line, zeroes them.

``model.encoder = "lora"`` adds PEFT LoRA adapters (``[encoder_lora]``) to the network's attention
projections and trains only those; the encoder's own weights stay frozen, so a checkpoint stores the
adapters alone. The attention Linear layers are named ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``
(GLM-ASR) or ``out_proj`` (Whisper, HuBERT, wav2vec2) in transformers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tatk.data.audio import decode
from tatk.model.encoder import fit_mel_frames
from tatk.shard.encoders import WAVEFORM_TYPES, FrozenEncoder
from tatk.errors import UserError, first_line


class TowerInputs:
    """The worker-side half: no weights, cheap to copy into DataLoader worker processes."""

    def __init__(self, name: str, window: str | None = None):
        self.prep = FrozenEncoder(name, network=False, window=window)
        self.kind = self.prep.kind

    def prepare(self, flac: bytes) -> np.ndarray:
        """One stored clip → the encoder's input: log-mel (+ mask row) (C, S), or a waveform (S,)."""
        return self.prep.prepare(decode(flac))

    def batch(self, prepared: list[np.ndarray]) -> torch.Tensor:
        """Prepared inputs → (B, C, S) float32, zero-padded along time.

        GLM-ASR / Whisper inputs already end with their mel attention-mask row (30 s long, or with GLM-ASR's
        ``fit`` window each its own whole number of seconds: the tower cuts each back to its window);
        a waveform (S,) becomes (2, S): the samples, then a row of ones that padding turns into a mask.
        """
        if self.kind in WAVEFORM_TYPES:
            prepared = [np.stack([p, np.ones_like(p)]) for p in prepared]
        out = torch.zeros(len(prepared), prepared[0].shape[0], max(p.shape[-1] for p in prepared))
        for i, p in enumerate(prepared):
            out[i, :, : p.shape[-1]] = torch.from_numpy(p)
        return out


class AudioTower(nn.Module):
    """The network half: prepared inputs (B, C, S) and frame counts (B,) → frames (B, max count, D) float32.

    ``train_encoder`` false keeps the network in eval mode whatever the model's mode (no dropout, no
    HuBERT/wav2vec2 built-in time masking), so its output equals what feature shards would hold. With the
    ``fit`` window each clip runs at its own window length (clips of one length together), as ``tatk shard`` does.
    """

    def __init__(self, kind: str, network: nn.Module | None, use_mask: bool, train_encoder: bool, window: str = "30s"):
        super().__init__()
        self.kind, self.network, self.use_mask, self.train_encoder = kind, network, use_mask, train_encoder
        self.window = window
        self.dtype = next(network.parameters()).dtype if network is not None else torch.float32

    def train(self, mode: bool = True) -> "AudioTower":
        return super().train(mode and self.train_encoder)

    def forward(self, inputs: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        if self.kind == "mel":  # log-mel frames are the features: no network
            hidden = inputs.transpose(1, 2)
        elif self.kind in WAVEFORM_TYPES:
            mask = inputs[:, -1].long() if self.use_mask else None
            hidden = self.network(inputs[:, 0].to(self.dtype), attention_mask=mask).last_hidden_state
        elif self.window == "fit":
            return self._fit_forward(inputs, int(n_frames.max()))
        else:
            hidden = self.network(inputs[:, :-1].to(self.dtype)).last_hidden_state
        return hidden[:, : int(n_frames.max())].float()

    def _fit_forward(self, inputs: torch.Tensor, longest: int) -> torch.Tensor:
        """One forward per window width (read back from each clip's mask row), so padding added by batching
        never reaches the network."""
        widths = [fit_mel_frames(int(m)) for m in inputs[:, -1].sum(dim=1).tolist()]
        parts, rows = [], []
        for width in sorted(set(widths)):
            idx = [i for i, w in enumerate(widths) if w == width]
            hidden = self.network(inputs[idx, :-1, :width].to(self.dtype)).last_hidden_state[:, :longest].float()
            parts.append(nn.functional.pad(hidden, (0, 0, 0, longest - hidden.shape[1])))
            rows += idx
        out = torch.cat(parts)
        return out[torch.argsort(torch.tensor(rows, device=out.device))]


def _check_targets(network: nn.Module, targets: list[str], kind: str) -> None:
    """Every target must name Linear layers of the encoder (PEFT only fails when *none* match)."""
    linear = {n.rsplit(".", 1)[-1] for n, m in network.named_modules() if isinstance(m, nn.Linear)}
    for t in targets:
        if t not in linear:
            raise UserError(f"encoder_lora.target_modules: {t!r} is not a Linear layer of the {kind} encoder "
                            f"(it has {', '.join(sorted(linear))})")


def build_tower(recipe, dtype: torch.dtype) -> AudioTower:
    """The encoder named by ``features.encoder``, frozen in ``dtype``, with LoRA adapters (fp32) when
    ``model.encoder = "lora"``; its worker-side half is ``tower.inputs``."""
    try:
        frozen = FrozenEncoder(recipe.features.encoder, dtype="float32", window=recipe.features.window or None)
    except UserError as e:
        raise UserError(f"features.encoder: {e}") from None
    if frozen.info.dim != recipe.features.dim:
        raise UserError(f"features.dim: is {recipe.features.dim} but {recipe.features.encoder} makes {frozen.info.dim}-dim frames")
    network = frozen.model.to(dtype) if frozen.model is not None else None
    lora = recipe.model.encoder == "lora"
    if lora:
        from peft import LoraConfig, get_peft_model

        if network is None:
            raise UserError(f"model.encoder: 'lora' needs an encoder network; {frozen.info.id} is a fixed log-mel")
        cfg = recipe.encoder_lora
        _check_targets(network, cfg.target_modules, frozen.kind)
        config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules)
        try:
            network = get_peft_model(network, config)  # freezes the base weights; adapters are fp32
        except ValueError as e:
            raise UserError(f"encoder_lora.target_modules: {first_line(e)}") from None
        if recipe.train.gradient_checkpointing:  # a 30-s window's activations × every layer: recompute them
            network.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tower = AudioTower(frozen.kind, network, bool(getattr(frozen.extractor, "return_attention_mask", False)), lora,
                       frozen.window)
    tower.inputs = TowerInputs(recipe.features.encoder, frozen.window)
    return tower

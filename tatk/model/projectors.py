"""Projectors: map encoder frames (B, T, D) to LLM input embeddings (B, T', H) at a lower frame rate.

Every projector has ``output_length(n_frames)``: the number of LLM positions an utterance of
``n_frames`` encoder frames occupies. The batcher uses it to budget tokens and the model to splice.

- ``mlp``:    stack k frames → Linear → RMSNorm → GELU → Linear → RMSNorm (GLM-ASR / tiny-audio).
- ``swiglu``: stack k frames → RMSNorm → SiLU(gate)·up → down → RMSNorm (tiny-audio's SmolLM3 model).
- ``conv``:   two stride-2 Conv1d (k must be 4) → RMSNorm; sees neighbouring frames across stack edges.
- ``mosa``:   Conv1d downsampler → router-weighted sum of every expert adapter → RMSNorm (mixtures.py).
- ``moe``:    stack k frames → shared expert + top-k routed experts, auxiliary losses (mixtures.py).
- ``qformer``: learned queries cross-attend to windows of frames, a few transformer layers (qformer.py).

``forward(x, lens)`` takes the batch's frames (B, T, D) and each row's frame count (B,); projectors whose
outputs see only their own frames ignore ``lens``. Per-kind options (``experts``, ``window``...) are keyword
arguments of the constructor, given by the recipe's ``[projector.<kind>]`` table and the exported config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mixtures import MoeProjector, MosaProjector
from .qformer import QFormerProjector


def stack_frames(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T, D) → (B, (T-k)//k+1, k·D): concatenate each run of k frames; a partial tail is dropped."""
    b, t, d = x.shape
    n = max((t - k) // k + 1, 0)
    return x[:, : n * k].reshape(b, n, k * d)


class StackedMLP(nn.Module):
    """Frame stacking then a 2-layer MLP with RMSNorm after each Linear, as in GLM-ASR's adapter."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, stack: int):
        super().__init__()
        self.stack = stack
        self.fc1 = nn.Linear(in_dim * stack, hidden)
        self.norm1 = nn.RMSNorm(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)
        self.norm2 = nn.RMSNorm(out_dim)

    def output_length(self, n_frames: int) -> int:
        return (n_frames - self.stack) // self.stack + 1

    def forward(self, x: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) → (B, output_length(T), out_dim)."""
        h = F.gelu(self.norm1(self.fc1(stack_frames(x, self.stack))))
        return self.norm2(self.fc2(h))


class StackedSwiGLU(nn.Module):
    """Frame stacking then a Llama-style SwiGLU block with pre- and post-RMSNorm (tiny-audio)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, stack: int):
        super().__init__()
        self.stack = stack
        self.pre_norm = nn.RMSNorm(in_dim * stack)
        self.gate_proj = nn.Linear(in_dim * stack, hidden, bias=False)
        self.up_proj = nn.Linear(in_dim * stack, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, out_dim, bias=False)
        self.post_norm = nn.RMSNorm(out_dim)

    def output_length(self, n_frames: int) -> int:
        return (n_frames - self.stack) // self.stack + 1

    def forward(self, x: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) → (B, output_length(T), out_dim)."""
        h = self.pre_norm(stack_frames(x, self.stack))
        return self.post_norm(self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h)))


class ConvDownsampler(nn.Module):
    """Two Conv1d(kernel 3, stride 2, padding 1) with GELU between: 4x fewer frames, local context."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, stack: int):
        super().__init__()
        if stack != 4:
            raise ValueError("the conv projector downsamples by exactly 4 (two stride-2 convs)")
        self.conv1 = nn.Conv1d(in_dim, hidden, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(hidden, out_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.RMSNorm(out_dim)

    def output_length(self, n_frames: int) -> int:
        half = (n_frames - 1) // 2 + 1
        return (half - 1) // 2 + 1

    def forward(self, x: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) → (B, output_length(T), out_dim). Frames past an utterance's end must be zero.

        The first conv's outputs past a row's end (``lens``) are zeroed too: they are its bias, not zeros, and
        the second conv's last window would otherwise see them only when the batch padded the row."""
        h = F.gelu(self.conv1(x.transpose(1, 2)))  # (B, hidden, T/2)
        if lens is not None:
            half = (lens.to(h.device) - 1) // 2 + 1
            h = h * (torch.arange(h.shape[2], device=h.device)[None, :] < half[:, None]).unsqueeze(1)
        return self.norm(self.conv2(h).transpose(1, 2))


PROJECTORS: dict[str, type[nn.Module]] = {"mlp": StackedMLP, "swiglu": StackedSwiGLU, "conv": ConvDownsampler,
                                          "mosa": MosaProjector, "moe": MoeProjector, "qformer": QFormerProjector}


def build_projector(kind: str, in_dim: int, out_dim: int, hidden: int, stack: int, options: dict | None = None) -> nn.Module:
    """Instantiate projector ``kind`` (a key of ``PROJECTORS``) mapping in_dim features to out_dim embeddings;
    ``options`` are its own keyword arguments (mosa, moe, qformer)."""
    return PROJECTORS[kind](in_dim, out_dim, hidden, stack, **(options or {}))

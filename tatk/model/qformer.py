"""The ``qformer`` projector: learned queries read fixed windows of encoder frames (BLIP-2's Q-Former, as
windowed in SALMONN / tiny-audio). Each window of ``window`` frames becomes ``queries`` LLM positions, so
the frame rate falls by window / queries (15 → 3 is ×5) and ``output_length(n) = ceil(n / window) · queries``:
the last, partial window is kept (its missing frames masked out), so no speech at the end is dropped.
"""

from __future__ import annotations

import torch
from torch import nn


class QFormerLayer(nn.Module):
    """Pre-norm block: self-attention among a window's queries, cross-attention to its frames, feed-forward."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_norm, self.cross_norm, self.frame_norm, self.ffn_norm = (nn.LayerNorm(dim) for _ in range(4))
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, q: torch.Tensor, frames: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
        """q (W, Q, dim) queries of W windows, frames (W, window, dim), ignore (W, window) True = masked."""
        h = self.self_norm(q)
        q = q + self.self_attn(h, h, h, need_weights=False)[0]
        kv = self.frame_norm(frames)
        q = q + self.cross_attn(self.cross_norm(q), kv, kv, key_padding_mask=ignore, need_weights=False)[0]
        return q + self.ffn(self.ffn_norm(q))


class QFormerProjector(nn.Module):
    """Linear to ``hidden`` + a learned position per frame of the window → ``layers`` Q-Former layers over
    ``queries`` learned queries per window → LayerNorm → Linear to the LLM width → RMSNorm (like every tatk
    projector, so its output has the scale of the other projectors')."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, stack: int, window: int = 12, queries: int = 3,
                 layers: int = 2, heads: int = 8):
        super().__init__()
        self.window, self.queries = window, queries
        self.frame_proj = nn.Linear(in_dim, hidden)
        self.position = nn.Parameter(torch.randn(window, hidden) * 0.02)
        self.query = nn.Parameter(torch.randn(queries, hidden) * 0.02)
        self.layers = nn.ModuleList(QFormerLayer(hidden, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, out_dim)
        self.norm = nn.RMSNorm(out_dim)

    def output_length(self, n_frames: int) -> int:
        return -(-max(n_frames, 0) // self.window) * self.queries

    def forward(self, x: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) → (B, output_length(T), out_dim); ``lens`` (B,) frames per row (None: all T are valid).

        Frames at or past a row's length are masked in the cross-attention, so a row's output does not
        depend on how much padding the batch gave it. A window with no valid frame (past the row's end) may
        attend to all its frames instead (a fully masked softmax is NaN); its outputs are dropped anyway.
        """
        b, t, _ = x.shape
        n_win = -(-t // self.window)
        x = nn.functional.pad(x, (0, 0, 0, n_win * self.window - t))
        frames = (self.frame_proj(x).reshape(b, n_win, self.window, -1) + self.position).flatten(0, 1)
        lens = torch.full((b,), t, device=x.device) if lens is None else lens.to(x.device)
        index = torch.arange(n_win * self.window, device=x.device).reshape(n_win, self.window)
        ignore = index[None] >= lens[:, None, None]  # (B, n_win, window)
        ignore = (ignore & ~ignore.all(-1, keepdim=True)).flatten(0, 1)
        q = self.query.expand(b * n_win, -1, -1)
        for layer in self.layers:
            q = layer(q, frames, ignore)
        return self.norm(self.out_proj(self.final_norm(q))).reshape(b, n_win * self.queries, -1)

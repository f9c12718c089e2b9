"""Mixture-of-experts projectors: ``mosa`` (a dense mixture, every expert runs on every frame) and ``moe``
(a shared expert plus top-k routed experts, with auxiliary losses that keep the routing balanced).

Both keep the frame rate of frame stacking (``output_length(n) = (n - k) // k + 1``) so the batcher,
the splice and the pipeline treat them exactly like ``mlp``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def stacked_length(n_frames: int, stack: int) -> int:
    """LLM positions of ``n_frames`` frames cut into runs of ``stack``; a partial tail is dropped."""
    return max((n_frames - stack) // stack + 1, 0)


class MosaProjector(nn.Module):
    """Conv1d downsampler (kernel = stride = stack) → GELU → per-frame router (ReLU MLP, softmax over experts)
    → the router-weighted sum of every expert adapter's output → RMSNorm.

    Dense: every expert runs on every frame, so the router cannot collapse onto one expert by starving the
    others of gradient, and no auxiliary loss is needed (the price is compute for all experts).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, stack: int, experts: int = 4, expert_hidden: int = 512,
                 router_hidden: int = 256):
        super().__init__()
        self.stack = stack
        self.down = nn.Conv1d(in_dim, hidden, kernel_size=stack, stride=stack)
        self.router = nn.Sequential(nn.Linear(hidden, router_hidden), nn.ReLU(), nn.Linear(router_hidden, experts))
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, expert_hidden), nn.GELU(), nn.Linear(expert_hidden, out_dim)) for _ in range(experts))
        self.norm = nn.RMSNorm(out_dim)

    def output_length(self, n_frames: int) -> int:
        return stacked_length(n_frames, self.stack)

    def forward(self, x: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) → (B, output_length(T), out_dim). ``lens`` is unused: each output frame sees only its own k inputs."""
        if x.shape[1] < self.stack:  # Conv1d refuses inputs shorter than its kernel
            return x.new_zeros(x.shape[0], 0, self.norm.weight.shape[0])
        h = F.gelu(self.down(x.transpose(1, 2)).transpose(1, 2))  # (B, T', hidden)
        gate = self.router(h).softmax(-1)  # (B, T', E)
        mixed = torch.stack([expert(h) for expert in self.experts], -1)  # (B, T', out, E)
        return self.norm((mixed * gate.unsqueeze(2)).sum(-1))


class SwiGLU(nn.Module):
    """One expert: SiLU(gate)·up → down, as in Llama's MLP."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.gate = nn.Linear(in_dim, hidden, bias=False)
        self.up = nn.Linear(in_dim, hidden, bias=False)
        self.down = nn.Linear(hidden, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoeProjector(nn.Module):
    """Frame stacking → RMSNorm → shared SwiGLU expert + top-k of N routed SwiGLU experts → RMSNorm.

    The router's softmax picks ``top_k`` experts per stacked frame; their outputs are mixed with the chosen
    probabilities renormalised to sum to 1 (Mixtral) and added to the shared expert's. Each forward leaves
    ``aux_losses`` for the training loop, over valid frames only (``lens``; padding would look balanced):

    - ``balance``: N · Σ_e f_e · P_e (Switch Transformer), f_e the share of top-k assignments to expert e,
      P_e its mean router probability; 1 when routing is uniform, up to N when one expert takes all;
    - ``z``: mean squared log-sum-exp of the router logits (ST-MoE), which keeps the logits small.

    ``routed`` holds the last forward's top-k assignments per expert (valid frames), for utilisation logs.
    Every expert runs on every forward, on an empty batch when no frame chose it, so all parameters get a
    gradient (zero) on every step: DDP and ZeRO then need no unused-parameter search.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, stack: int, experts: int = 4, top_k: int = 2,
                 expert_hidden: int = 0):
        super().__init__()
        self.stack, self.top_k = stack, top_k
        wide = in_dim * stack
        self.pre_norm = nn.RMSNorm(wide)
        self.shared = SwiGLU(wide, hidden, out_dim)
        self.router = nn.Linear(wide, experts, bias=False)
        # default width: the routed experts together are as wide as the shared one
        width = expert_hidden or max(hidden // experts, 1)
        self.experts = nn.ModuleList(SwiGLU(wide, width, out_dim) for _ in range(experts))
        self.post_norm = nn.RMSNorm(out_dim)
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.routed = torch.zeros(experts)

    def output_length(self, n_frames: int) -> int:
        return stacked_length(n_frames, self.stack)

    def forward(self, x: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) → (B, output_length(T), out_dim); ``lens`` (B,) input frames per row (None: all valid)."""
        n = max((x.shape[1] - self.stack) // self.stack + 1, 0)
        h = self.pre_norm(x[:, : n * self.stack].reshape(x.shape[0], n, self.stack * x.shape[2]))
        flat = h.reshape(-1, h.shape[-1])  # (B·T', k·D)
        logits = self.router(flat).float()
        probs = logits.softmax(-1)
        weight, chosen = probs.topk(self.top_k, dim=-1)  # (N, top_k)
        weight = weight / weight.sum(-1, keepdim=True)
        out = self.shared(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            # under autocast the experts' outputs are bf16 and the weights fp32: add in the output's dtype
            out = out.index_add(0, rows, (expert(flat[rows]) * weight[rows, slot, None]).to(out.dtype))
        valid = torch.ones(h.shape[:2], dtype=torch.bool, device=x.device) if lens is None else (
            torch.arange(n, device=x.device)[None, :] < ((lens - self.stack) // self.stack + 1)[:, None])
        self._aux(logits[valid.reshape(-1)], probs[valid.reshape(-1)], chosen[valid.reshape(-1)])
        return self.post_norm(out).reshape(h.shape[0], n, out.shape[-1])

    def _aux(self, logits: torch.Tensor, probs: torch.Tensor, chosen: torch.Tensor) -> None:
        n_experts = probs.shape[-1]
        counts = F.one_hot(chosen, n_experts).sum((0, 1)).float()  # (E,) top-k assignments per expert
        frames = max(len(probs), 1)
        share = counts / (frames * self.top_k)
        self.aux_losses = {"balance": n_experts * (share * probs.sum(0) / frames).sum(),
                           "z": (torch.logsumexp(logits, -1) ** 2).sum() / frames}
        self.routed = counts.detach()

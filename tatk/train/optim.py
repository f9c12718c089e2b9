"""The optimizer's view of a run: which parameters train at which learning rate, and the LR schedule."""

from __future__ import annotations

import math


def param_groups(model, o) -> list[dict]:
    """AdamW groups for the trainable parameters only (frozen weights never reach the optimizer).

    Matrices decay; norm gains and biases do not (decaying them just shrinks the scale). LLM weights
    (LoRA adapters or the full decoder) get their own, usually much lower, learning rate ``o.llm_lr``,
    and the encoder's LoRA adapters theirs, ``o.encoder_lr``.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    part = lambda n: n.split(".", 1)[0] if n.startswith(("llm.", "encoder.")) else "adapter"  # noqa: E731
    groups = []
    for name, lr, norm_lr in (("adapter", o.lr, o.norm_lr), ("llm", o.llm_lr, o.llm_lr), ("encoder", o.encoder_lr, o.encoder_lr)):
        mine = [p for n, p in trainable if part(n) == name]
        groups += [{"name": f"{name}_matrices", "params": [p for p in mine if p.ndim >= 2], "lr": lr, "weight_decay": o.weight_decay},
                   {"name": f"{name}_norms_biases", "params": [p for p in mine if p.ndim < 2], "lr": norm_lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_cosine(warmup: int, total: int, floor: float):
    """LR multiplier for optimizer step s (0-based): linear warmup, then cosine down to ``floor``."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        progress = min((s - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor

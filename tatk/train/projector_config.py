"""Per-kind projector options: the recipe's ``[projector.mosa]``, ``[projector.moe]`` and ``[projector.qformer]``
tables, each read into its own typed dataclass. Only the table of the chosen ``projector.kind`` may be
given (tatk/train/checks.py); it is filled with defaults when absent, so a run's recipe.toml shows every
option it used. Its architecture fields become the projector's keyword arguments
(tatk/model/mixtures.py, qformer.py) and travel into the exported config; the rest are training weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class MosaConfig:
    """A dense mixture of adapters (every expert runs); see tatk/model/mixtures.py."""

    experts: int = 4  #: expert adapters mixed per frame
    expert_hidden: int = 512  #: each expert's hidden width (projector.hidden → expert_hidden → LLM width)
    router_hidden: int = 256  #: hidden width of the per-frame router (ReLU MLP → softmax over experts)


@dataclass
class MoeConfig:
    """A shared expert plus top-k routed experts on stacked frames; see tatk/model/mixtures.py."""

    experts: int = 4  #: routed SwiGLU experts (a shared expert of width projector.hidden always runs besides)
    top_k: int = 2  #: routed experts per stacked frame (at most experts)
    expert_hidden: int = 0  #: each routed expert's hidden width (0: projector.hidden / experts, so all routed experts together are as wide as the shared one)
    balance_weight: float = 0.01  #: weight of the load-balancing loss (1 when routing is uniform) added to the training loss
    z_weight: float = 0.001  #: weight of the router z-loss (mean squared log-sum-exp of router logits) added to the training loss


@dataclass
class QformerConfig:
    """Learned queries cross-attending to windows of frames; see tatk/model/qformer.py. Width: projector.hidden."""

    window: int = 12  #: encoder frames per window; must equal projector.stack × queries
    queries: int = 3  #: learned queries per window = LLM positions per window
    layers: int = 2  #: Q-Former layers (self-attention, cross-attention, feed-forward)
    heads: int = 8  #: attention heads; must divide projector.hidden


KIND_TABLES = {"mosa": MosaConfig, "moe": MoeConfig, "qformer": QformerConfig}
TRAINING_ONLY = {"balance_weight", "z_weight"}  # loss weights: not part of the architecture


def model_options(projector) -> dict:
    """The keyword arguments of ``projector.kind``'s constructor from its table ({} for mlp, swiglu, conv)."""
    table = getattr(projector, projector.kind, None) if projector.kind in KIND_TABLES else None
    if table is None:
        return {}
    return {k: v for k, v in dataclasses.asdict(table).items() if k not in TRAINING_ONLY}


def aux_weights(projector) -> dict[str, float]:
    """Weights of the auxiliary losses the projector leaves in ``aux_losses`` ({} when it has none)."""
    if projector.kind != "moe":
        return {}
    return {"balance": projector.moe.balance_weight, "z": projector.moe.z_weight}

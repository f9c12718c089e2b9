"""DeepSpeed ZeRO under Accelerate: the recipe's batch settings into DeepSpeed's config, and trained weights
out of sharded parameters.

The launch config picks DeepSpeed (``accelerate/zero2.yaml``, ``accelerate/zero3.yaml``); the training
loop stays the same apart from what this module and the few ``deepspeed_stage`` branches in train.py do:

- DeepSpeed wants a micro-batch size, accumulation steps and a clipping norm in its own config. A tatk
  micro-batch is a token budget (``data.max_tokens``) holding a varying number of rows, so DeepSpeed is
  told "1" (it uses the number for its throughput counters and the train_batch_size consistency check
  only); accumulation and clipping are copied from the recipe. The recipe is the one source of truth.
- The DeepSpeed engine reduces gradients, clips and steps the optimizer itself, at the accumulation
  boundary the loop marks (``engine.set_gradient_accumulation_boundary``).
- ZeRO-3 partitions every parameter across ranks: a checkpoint's ``model.safetensors`` and PEFT
  ``adapter/`` folder are written from parameters gathered to full size first.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate.utils import DistributedType


def deepspeed_stage(accelerator) -> int | None:
    """The ZeRO stage (0-3) when Accelerate runs DeepSpeed, else None (DDP or one process)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def configure(accelerator, recipe) -> None:
    """Write the recipe's accumulation and clipping into the DeepSpeed config; call before ``prepare``."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = 1  # one token-budget batch; its row count varies
    ds["gradient_accumulation_steps"] = recipe.train.grad_accum
    ds["train_batch_size"] = recipe.train.grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = recipe.optim.grad_clip  # 0 disables clipping in DeepSpeed as in the recipe
    accelerator.gradient_accumulation_steps = recipe.train.grad_accum  # Accelerate's copy must agree
    if ds.get("bf16", {}).get("enabled"):
        # DeepSpeed's bf16 mode casts every weight to bf16, so fp32 features would meet bf16 projector weights.
        # tatk trains in bf16 *autocast* with fp32 trained weights (as under DDP): DeepSpeed's torch_autocast.
        ds["bf16"] = {"enabled": False}
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}


def trained_weights(accelerator, model) -> dict[str, torch.Tensor]:
    """Full-size CPU copies of the weights ``model.trainable_state_dict()`` names (``model``: the unwrapped
    SpeechLM), under the same names. Collective under ZeRO-3 (every rank must call it): the trained
    parameters are all-gathered from their shards for the copy and re-partitioned afterwards."""
    names = list(model.trainable_state_dict())  # under ZeRO-3 its tensors are empty shards: only names are used
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    if deepspeed_stage(accelerator) == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([tensors[n] for n in names if isinstance(tensors[n], torch.nn.Parameter)],
                                                   modifier_rank=None)
    else:
        gather = nullcontext()
    with gather:
        return {n: tensors[n].detach().to("cpu", copy=True).contiguous() for n in names}


def save_adapter(model, weights: dict[str, torch.Tensor], out: Path) -> None:
    """Write the LoRA adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors) loadable with
    ``PeftModel.from_pretrained(base_llm, out)``; ``weights`` are ``trained_weights`` (full size)."""
    lora = {k.removeprefix("llm."): v for k, v in weights.items() if k.startswith("llm.") and "lora_" in k}
    model.llm.save_pretrained(str(out), state_dict=lora)

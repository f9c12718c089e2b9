"""DeepSpeed ZeRO under Accelerate, and the one place where the loop's DDP and ZeRO paths differ
(``Updates``): the recipe's batch settings into DeepSpeed's config, backward / step, and trained weights
out of sharded parameters.

The launch config picks DeepSpeed (``accelerate/zero2.yaml``, ``accelerate/zero3.yaml``); the training
loop (loop.py) is the same for both apart from what this module does:

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

from tatk.errors import UserError


def deepspeed_stage(accelerator) -> int | None:
    """The ZeRO stage (0-3) when Accelerate runs DeepSpeed, else None (DDP or one process)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def configure(accelerator, recipe) -> None:
    """Write the recipe's accumulation and clipping into the DeepSpeed config; call before ``prepare``."""
    if recipe.train.compile:  # never tried: ZeRO-3's hooks gather each layer's weights inside the compiled layers
        raise UserError("train.compile: not under DeepSpeed; train with DDP (`accelerate launch --multi_gpu`) or without it")
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


class Updates:
    """Backward passes and optimizer steps for one run, under DDP (or one process) or a DeepSpeed engine.

    A step is ``grad_accum`` micro-batches: run each one's forward and backward inside ``micro(last)``,
    call ``backward(loss)`` with the loss already divided by the whole window's label tokens, then
    ``step(check)``, which clips, steps and returns the gradient norm. ``check(norm, when)`` raises on a
    non-finite loss or norm, before the update where the norm is known in time.
    """

    def __init__(self, accelerator, model, optimizer, grad_clip: float):
        self.accelerator, self.model, self.optimizer, self.grad_clip = accelerator, model, optimizer, grad_clip
        self.zero = deepspeed_stage(accelerator)

    def micro(self, last: bool):
        """Context for one micro-batch's forward + backward."""
        if self.zero is not None:  # the engine reduces gradients (ZeRO-2/3: every micro-batch) up to this boundary
            self.model.set_gradient_accumulation_boundary(last)
            return nullcontext()
        # DDP all-reduces gradients only on the last micro-batch: the others just accumulate locally
        return nullcontext() if last else self.accelerator.no_sync(self.model)

    def backward(self, loss: torch.Tensor) -> None:
        if self.zero is None:
            self.accelerator.backward(loss)
        else:  # the loss is already scaled for the whole window: DeepSpeed must not divide it again
            self.model.backward(loss, scale_wrt_gas=False)

    def step(self, check) -> float:
        if self.zero is None:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf")))
            check(grad_norm, "before")
            self.optimizer.step()
        else:  # the engine clips (optim.grad_clip) and steps; its gradient norm is known only afterwards
            check(0.0, "before")
            self.model.step()
            grad_norm = float(self.model.get_global_grad_norm())
            check(grad_norm, "after")  # not saved: the last checkpoint stays the last good one
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def load_state(self, folder: Path) -> None:
        """Resume Accelerate's state; not strict: the frozen LLM is not in the checkpoint."""
        strict = {"strict": False} if self.zero is None else {"load_module_strict": False}
        self.accelerator.load_state(str(folder), **strict)


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

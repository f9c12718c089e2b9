"""Checkpoints: what a training run leaves behind, and how eval, export and the next stage read it back.

A checkpoint is a folder ``<run>/checkpoints/step-NNNNNN/`` holding

- Accelerate's full training state (optimizer, scheduler, RNG, data position) for ``--resume``;
- ``model.safetensors``: the trained weights only (projector, normaliser statistics, LoRA adapters or a
  fully trained decoder), keyed by their ``SpeechLM`` names; never the frozen encoder or LLM;
- ``recipe.toml``: the resolved recipe, so the checkpoint alone says how to rebuild the model;
- ``adapter/`` (LoRA decoders only): the LLM adapter as a PEFT folder, for ``PeftModel.from_pretrained``.

Under DeepSpeed, Accelerate's state is the engine's (optimizer shards per rank, frozen weights excluded) and
``model.safetensors`` is written here from the trained weights, gathered to full size under ZeRO-3.

Folders are written as ``step-N.tmp`` and renamed when complete, so a run killed mid-save leaves the
previous checkpoint as the newest one.

With ``train.keep_best``, the best validated checkpoint's weights and recipe are also kept (hard links where
the filesystem allows) as ``<run>/best/step-N/`` (with ``best.json``: metric, value), outside the rotation of
``keep_checkpoints``; ``RUN:best`` names it wherever a checkpoint is taken (``tatk eval``, ``tatk export``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch

from tatk.errors import UserError, first_line
from tatk.files import atomic_write_text

WEIGHTS = "model.safetensors"
RECIPE = "recipe.toml"
BEST = "best"
DATA = "data.json"  # the processes × workers the data position was saved with (readable before loading state)


def checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a ``.tmp`` folder is one a killed run did not finish)."""
    return sorted(p for p in Path(root).glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def save_checkpoint(accelerator, position, recipe_text: str, root: Path, step: int, keep: int, model) -> Path:
    """Write Accelerate's state plus recipe.toml to ``step-N`` atomically; keep the newest ``keep`` checkpoints.

    Collective: every rank calls it. ``position`` (tatk.train.position.DataPosition) is gathered first so the
    saved data position covers all ranks. ``model`` is the unwrapped SpeechLM.
    """
    from safetensors.torch import save_file

    from tatk.train.zero import deepspeed_stage, save_adapter, trained_weights

    position.gather(accelerator)
    tmp, final = root / f"step-{step:06d}.tmp", root / f"step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    deepspeed = deepspeed_stage(accelerator) is not None
    # DeepSpeed saves its engine's module too: leave the frozen LLM out of it (it is loaded from model.llm)
    accelerator.save_state(str(tmp), **({"exclude_frozen_parameters": True} if deepspeed else {}))
    weights = trained_weights(accelerator, model) if deepspeed or model.decoder == "lora" else None  # collective
    if accelerator.is_main_process:
        if deepspeed:  # Accelerate writes model.safetensors only outside DeepSpeed (filtered by keep_trainable)
            save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if model.decoder == "lora":
            save_adapter(model, weights, tmp / "adapter")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(tmp / RECIPE, recipe_text)
        atomic_write_text(tmp / DATA, json.dumps({"processes": position.world, "workers": position.workers}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # checkpoint files are never rewritten in place: a link is a safe, free copy
    except OSError:
        shutil.copy2(src, dst)


def keep_best(ckpt: Path, run_dir: Path, metric: str, value: float) -> Path:
    """Keep checkpoint ``ckpt``'s weights, recipe and adapter as the run's best (main process only)."""
    root = Path(run_dir) / BEST
    tmp, final = root / f"{ckpt.name}.tmp", root / ckpt.name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (WEIGHTS, RECIPE, "adapter"):
        if (ckpt / name).is_dir():
            shutil.copytree(ckpt / name, tmp / name, copy_function=_link_or_copy)
        elif (ckpt / name).exists():
            _link_or_copy(str(ckpt / name), str(tmp / name))
    atomic_write_text(tmp / "best.json", json.dumps({"metric": metric, "value": value}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoints(root):
        if old != final:
            shutil.rmtree(old)
    return final


def best_value(run_dir: Path) -> float:
    """The kept best checkpoint's metric value (inf when there is none yet)."""
    found = checkpoints(Path(run_dir) / BEST)
    return json.loads((found[-1] / "best.json").read_text())["value"] if found else math.inf


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint path, a run folder (→ its newest checkpoint) or ``RUN:best``."""
    if str(path).endswith(":best"):
        run = Path(str(path)[: -len(":best")])
        found = checkpoints(run / BEST)
        if not found:
            raise UserError(f"{path}: {run} has no best checkpoint (train with train.keep_best = \"wer\" or \"val_loss\")")
        path = found[-1]
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint or run folder")
    if (path / RECIPE).is_file() and (path / "checkpoints").is_dir():  # a run folder
        found = checkpoints(path / "checkpoints")
        if not found:
            raise UserError(f"{path}: run folder has no finished checkpoint")
        path = found[-1]
    if not (path / RECIPE).is_file():
        raise UserError(f"{path}: not a tatk checkpoint (no {RECIPE})")
    if not (path / WEIGHTS).is_file():
        raise UserError(f"{path}: checkpoint has no {WEIGHTS} (incomplete or not written by tatk train)")
    return path


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The trained weights of checkpoint folder ``path`` (safetensors only: nothing is unpickled)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(Path(path) / WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise UserError(f"{Path(path) / WEIGHTS}: cannot read weights ({first_line(e)})") from None


def load_weights(model, path: Path, allow_new: bool = False) -> None:
    """Load a checkpoint's trained weights into ``model`` (a SpeechLM), checking names and shapes.

    Every weight in the file must exist in the model with the same shape. Unless ``allow_new`` (a later
    stage adding LoRA adapters to an earlier stage's projector), every trained weight of the model must
    be in the file.
    """
    weights = read_weights(path)
    own = model.state_dict()
    if allow_new:  # an earlier stage's CTC head (train.ctc_weight) is training-only: a stage without one leaves it
        weights = {k: v for k, v in weights.items() if k in own or not k.startswith("ctc_head.")}
    unknown = sorted(set(weights) - set(own))
    if unknown:
        raise UserError(f"{path}: weight {unknown[0]!r} does not exist in the model this recipe builds")
    for k, v in weights.items():
        if own[k].shape != v.shape:
            raise UserError(f"{path}: weight {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    missing = sorted(set(model.trainable_state_dict()) - set(weights))
    if missing and not allow_new:
        raise UserError(f"{path}: checkpoint lacks trained weight {missing[0]!r}")
    model.load_state_dict(weights, strict=False)


def load_trained(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(recipe, SpeechLM in eval mode) rebuilt from a checkpoint or run folder, ready to transcribe features."""
    from tatk.train.speechlm import build_model
    from tatk.train.recipe import load_recipe

    ckpt = resolve(path)
    recipe = load_recipe(ckpt / RECIPE, [], check_shards=False)
    model = build_model(recipe, stats=None, llm_dtype=dtype, allow_missing_stats=True)
    load_weights(model, ckpt)
    return recipe, model.to(device).eval()

"""Recipe checks that need more than a type: allowed choices, positive sizes, option combinations, and
the shard folders and checkpoints a recipe names (their manifests must match its encoder and dim)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tatk.errors import UserError
from tatk.model.projectors import PROJECTORS
from tatk.shard.encoders import manifest_window
from tatk.shard.format import read_manifest

if TYPE_CHECKING:
    from tatk.train.recipe import FeaturesConfig, ProjectorConfig, Recipe


def _check_shards(key: str, path: str, split: str, features: FeaturesConfig, content: str) -> dict:
    """The shard folder's manifest, once checked against the recipe."""
    if not Path(path).is_dir():
        raise UserError(f"{key}.path: shard folder {path} does not exist (run `tatk shard --out {path} ...` first)")
    try:
        manifest = read_manifest(path)
    except UserError as e:
        raise UserError(f"{key}.path: {e}") from None
    encoder, held = manifest["encoder"], manifest.get("content", "features")
    if held != content:
        raise UserError(f"data.content: is {content!r} but {path} holds {held} (made with `tatk shard --store {held}`)")
    if encoder["id"] != features.encoder:
        raise UserError(f"features.encoder: is {features.encoder!r} but {path} was made with {encoder['id']!r}")
    if encoder["dim"] != features.dim:
        raise UserError(f"features.dim: is {features.dim} but {path} holds {encoder['dim']}-dim features")
    window = manifest_window(encoder)
    if features.window and features.window != window:
        raise UserError(f"features.window: is {features.window!r} but {path} was made with {window!r} windows "
                        f"(`tatk shard --window {window}`); exports must encode audio exactly as the shards were made")
    features.window = window  # resolved here, so the run's recipe.toml (and every export) records it
    if split not in manifest["splits"]:
        raise UserError(f"{key}.split: {path} has no split {split!r} (has {sorted(manifest['splits'])})")
    return manifest


def check_recipe(r: Recipe, check_shards: bool) -> None:
    """Raise one UserError naming the first bad key: values, then combinations, then the files named."""
    _check_values(r)
    _check_projector(r.projector)
    _check_combinations(r)
    if check_shards:
        _check_files(r)


def _check_values(r: Recipe) -> None:
    choices = {"features.normalize": (r.features.normalize, ("none", "utterance", "global")),
               "model.decoder": (r.model.decoder, ("frozen", "lora", "full")),
               "model.encoder": (r.model.encoder, ("frozen", "lora")),
               "data.content": (r.data.content, ("features", "audio")),
               "features.window": (r.features.window, ("", "30s", "fit")),
               "projector.kind": (r.projector.kind, tuple(PROJECTORS)),
               "log.wandb": (r.log.wandb, ("auto", "offline", "off")),
               "train.keep_best": (r.train.keep_best, ("", "wer", "val_loss")),
               "train.precision": (r.train.precision, ("auto", "bf16", "fp32")),
               "train.attention": (r.train.attention, ("sdpa", "eager", "flash_attention_2"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    positive = {"features.dim": r.features.dim, "projector.stack": r.projector.stack,
                "projector.hidden": r.projector.hidden, "data.max_tokens": r.data.max_tokens,
                "data.group_size": r.data.group_size, "data.shuffle_buffer": r.data.shuffle_buffer,
                "data.round_shards": r.data.round_shards, "train.steps": r.train.steps,
                "train.grad_accum": r.train.grad_accum, "train.log_every": r.train.log_every,
                "train.save_every": r.train.save_every, "train.keep_checkpoints": r.train.keep_checkpoints,
                "lora.r": r.lora.r, "lora.alpha": r.lora.alpha,
                "encoder_lora.r": r.encoder_lora.r, "encoder_lora.alpha": r.encoder_lora.alpha}
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"{key}: must be > 0, got {value}")
    for key, value in {"eval.max_samples": r.eval.max_samples, "eval.wer_samples": r.eval.wer_samples,
                       "train.ctc_weight": r.train.ctc_weight, "data.short_first_epochs": r.data.short_first_epochs}.items():
        if value < 0:
            raise UserError(f"{key}: must be >= 0, got {value}")
    if r.data.short_first_epochs and r.data.short_first_seconds <= 0:
        raise UserError(f"data.short_first_seconds: must be > 0 with data.short_first_epochs = {r.data.short_first_epochs}, "
                        f"got {r.data.short_first_seconds}")
    if r.data.short_first_seconds and not r.data.short_first_epochs:  # a knob that would silently do nothing
        raise UserError(f"data.short_first_seconds = {r.data.short_first_seconds} does nothing without "
                        "data.short_first_epochs (the epochs that train only clips that short)")
    if r.data.short_first_epochs and r.data.resample:
        raise UserError("data.short_first_epochs: needs epochs (data.resample = false): resampled rounds have none")
    if r.data.max_bad_tars < -1:
        raise UserError(f"data.max_bad_tars: must be >= 0 (or -1: 1 % of the tars), got {r.data.max_bad_tars}")
    a = r.augment
    for key, value in {"augment.time_masks": a.time_masks, "augment.time_width": a.time_width,
                       "augment.freq_masks": a.freq_masks, "augment.freq_width": a.freq_width}.items():
        if value < 0:
            raise UserError(f"{key}: must be >= 0, got {value}")
    if not 0 <= a.token_swap < 1:
        raise UserError(f"augment.token_swap: must be in [0, 1), got {a.token_swap}")


def _check_projector(p: ProjectorConfig) -> None:
    """The per-kind table: only the chosen kind's, sizes positive, and consistent with stack and hidden."""
    from dataclasses import asdict

    for kind in ("mosa", "moe", "qformer"):
        if getattr(p, kind) is not None and p.kind != kind:
            raise UserError(f"projector.{kind}: options for kind = \"{kind}\", but projector.kind is {p.kind!r} "
                            f"(remove [projector.{kind}] or set the kind)")
    table = getattr(p, p.kind, None) if p.kind in ("mosa", "moe", "qformer") else None
    for key, value in (asdict(table) if table is not None else {}).items():
        least = 0 if key in ("expert_hidden", "balance_weight", "z_weight") and p.kind == "moe" else 1
        if value < least:
            raise UserError(f"projector.{p.kind}.{key}: must be >= {least}, got {value}")
    if p.kind == "moe" and p.moe.top_k > p.moe.experts:
        raise UserError(f"projector.moe.top_k: {p.moe.top_k} is more than the {p.moe.experts} experts")
    if p.kind == "qformer":
        q = p.qformer
        if p.hidden % q.heads:
            raise UserError(f"projector.qformer.heads: {q.heads} does not divide projector.hidden ({p.hidden})")
        if q.window != p.stack * q.queries:
            raise UserError(f"projector.qformer.window: {q.window} frames for {q.queries} queries is not projector.stack "
                            f"({p.stack}) frames per LLM position; set window = {p.stack * q.queries} or stack to match")


def _check_combinations(r: Recipe) -> None:
    a = r.augment
    if a.freq_masks and r.features.dim and a.freq_width >= r.features.dim:
        raise UserError(f"augment.freq_width: must be below features.dim ({r.features.dim}), got {a.freq_width}")
    if r.projector.kind == "conv" and r.projector.stack != 4:
        raise UserError("projector.stack: the conv projector downsamples by exactly 4 (two stride-2 convs)")
    if not r.features.encoder:
        raise UserError("features.encoder: required (the encoder id the shards were made with)")
    if len(r.optim.betas) != 2:
        raise UserError(f"optim.betas: expected two numbers, got {r.optim.betas}")
    if not r.projector.train and not r.model.init_from:
        raise UserError("projector.train: false needs model.init_from (a frozen projector must come from an earlier stage)")
    if r.train.gradient_checkpointing and r.model.decoder == "frozen":
        raise UserError("train.gradient_checkpointing: needs model.decoder = lora or full (a frozen LLM runs in eval mode, "
                        "where transformers does not checkpoint)")
    if r.model.encoder == "lora" and r.data.content != "audio":
        raise UserError("model.encoder: 'lora' trains the encoder, so it needs audio shards (data.content = \"audio\", "
                        "`tatk shard --store audio`); feature shards hold its frozen output")
    if r.data.content == "audio" and r.features.normalize == "global":
        raise UserError("features.normalize: 'global' needs the statistics of feature shards; audio shards have none "
                        "(use \"utterance\")")
    if r.data.content == "audio" and (r.augment.time_masks or r.augment.freq_masks):
        key = "augment.time_masks" if r.augment.time_masks else "augment.freq_masks"
        raise UserError(f"{key}: masks stored features in the data workers; with audio shards the features "
                        "exist only inside the model (set it to 0)")
    if r.train.keep_best and r.data.val is None:
        raise UserError(f"train.keep_best: {r.train.keep_best!r} needs validation data ([data.val])")
    if not r.encoder_lora.target_modules:
        raise UserError("encoder_lora.target_modules: name at least one encoder Linear layer, e.g. [\"q_proj\", \"k_proj\"]")
    if not r.lora.target_modules:
        raise UserError("lora.target_modules: name at least one LLM Linear layer, e.g. [\"q_proj\", \"v_proj\"]")


def _check_files(r: Recipe) -> None:
    if r.model.init_from and not (Path(r.model.init_from) / "model.safetensors").is_file():
        raise UserError(f"model.init_from: {r.model.init_from} is not a checkpoint folder (no model.safetensors)")
    if not r.data.train:
        raise UserError("data.train: add at least one [[data.train]] table with a shard folder path")
    for i, s in enumerate(r.data.train):
        if s.weight <= 0:
            raise UserError(f"data.train[{i}].weight: must be > 0, got {s.weight}")
        manifest = _check_shards(f"data.train[{i}]", s.path, s.split, r.features, r.data.content)
        if not sum(t["samples"] for t in manifest["splits"][s.split]["shards"]):
            raise UserError(f"data.train[{i}].path: split {s.split!r} of {s.path} holds no samples")
    if r.data.val is not None:
        _check_shards("data.val", r.data.val.path, r.data.val.split, r.features, r.data.content)

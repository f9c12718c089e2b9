"""``tatk export``: a checkpoint → a Hub-ready folder that transformers loads with

    pipeline("automatic-speech-recognition", model=FOLDER_OR_ID, trust_remote_code=True)

The folder holds ``config.json`` (with ``auto_map`` and ``custom_pipelines``), the model code of
``tatk/model`` (copied verbatim), ``model.safetensors``, the feature extractor, the tokenizer (with the
``<|audio|>`` token) and a model card. By default the weights are only what training changed and the
base encoder and LLM are referenced by id and revision; ``merged`` stores every weight instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from tatk.errors import UserError, first_line
from tatk.export.aligner import bundle_aligner, check_aligner, config_fields
from tatk.export.card import model_card
from tatk.files import is_hub_id

HUB_DIR = Path(__file__).parents[1] / "model"
CODE_FILES = ("configuration_tatk.py", "modeling_tatk.py", "pipeline_tatk.py", "encoder.py", "projectors.py", "mixtures.py",
              "qformer.py", "speech.py", "align.py")
AUTO_MAP = {"AutoConfig": "configuration_tatk.TatkAsrConfig", "AutoModel": "modeling_tatk.TatkAsrModel"}
CUSTOM_PIPELINES = {"automatic-speech-recognition": {"impl": "pipeline_tatk.TatkAsrPipeline", "pt": ["AutoModel"], "type": "audio"}}
REQUIRED = ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json", *CODE_FILES)


def _lora_pairs(peft_model, prefix: str, what: str) -> tuple[dict[str, torch.Tensor], float]:
    """A PEFT model's adapters as "<prefix><module path>.A" / ".B" tensors, and their one scale (alpha / r)."""
    from peft.tuners.lora import LoraLayer

    pairs, scales = {}, set()
    for name, module in peft_model.base_model.model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module.get_base_layer(), torch.nn.Linear) or module.use_dora.get("default"):
            raise UserError(f"{what}: adapter on {name!r} is not a plain Linear LoRA; export supports those only")
        pairs[f"{prefix}{name}.A"] = module.lora_A["default"].weight
        pairs[f"{prefix}{name}.B"] = module.lora_B["default"].weight
        scales.add(float(module.scaling["default"]))
    if len(scales) != 1:
        raise UserError(f"{what}: expected one adapter scale, found {sorted(scales)}")
    return pairs, scales.pop()


def _trained_weights(recipe, model) -> tuple[dict[str, torch.Tensor], float, float]:
    """The export's trained weights in ``TatkAsrModel`` names, and the LLM's and encoder's LoRA scales (0: none)."""
    from tatk.model.modeling_tatk import ENCODER_LORA_PREFIX, LORA_PREFIX

    state = model.state_dict()
    weights = {k: v for k, v in state.items() if k.startswith(("projector.", "norm."))}
    scale = enc_scale = 0.0
    if recipe.model.decoder == "full":
        seen = set()
        for k, v in state.items():  # tied embeddings share storage: keep one name (the loader re-ties)
            if k.startswith("llm.") and v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                weights[k] = v
    elif recipe.model.decoder == "lora":
        pairs, scale = _lora_pairs(model.llm, LORA_PREFIX, "lora")
        weights.update(pairs)
    if getattr(recipe.model, "encoder", "frozen") == "lora":
        pairs, enc_scale = _lora_pairs(model.encoder.network, ENCODER_LORA_PREFIX, "encoder_lora")
        weights.update(pairs)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}, scale, enc_scale


def _encoder_revision(recipe, computed: str) -> str:
    """The revision the shards were made with (manifest), else the one of the encoder as found now."""
    from tatk.shard.format import read_manifest

    for shard_set in recipe.data.train:
        try:
            enc = read_manifest(shard_set.path)["encoder"]
        except (UserError, OSError, KeyError, ValueError):
            continue
        if enc.get("id") == recipe.features.encoder and enc.get("revision"):
            return enc["revision"]
    return computed


def _datasets(recipe) -> list[str]:
    """Hub dataset ids the training shards came from (``--dataset`` of the manifests' commands)."""
    from tatk.shard.format import read_manifest

    found = []
    for shard_set in recipe.data.train:
        try:
            command = read_manifest(shard_set.path).get("command", "")
        except (UserError, OSError, ValueError):
            continue
        m = re.search(r"--dataset[= ](\S+)", command)
        if m and not m.group(1).startswith((".", "/", "~")) and not Path(m.group(1)).exists() and m.group(1) not in found:
            found.append(m.group(1))
    return found


def _read_summary(path: str | Path | None) -> dict | None:
    if path is None:
        return None
    try:
        summary = json.loads(Path(path).read_text())
        float(summary["wer"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--eval {path}: not a tatk eval summary.json ({first_line(e)})") from None
    return summary


def _prepare_out(out: Path) -> Path:
    """A fresh temporary folder next to ``out``; ``out`` may be missing, empty, or an earlier tatk export."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out}: exists and is a file")
        config = out / "config.json"
        is_export = config.is_file() and '"tatk_asr"' in config.read_text(errors="replace")
        if any(out.iterdir()) and not is_export:
            raise UserError(f"{out}: exists and is not a tatk export; choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _local_folder(name: str) -> str | None:
    """``name`` as an absolute path when it is a local folder (not a Hub id, not "mel:N"), else None."""
    if name == "mel" or name.startswith("mel:"):
        return None
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else None


def _encoder_part(recipe, merged: bool) -> tuple:
    """(encoder network or None, kind, feature extractor, window, revision) of the recipe's encoder; the
    network's weights are loaded only for a merged export."""
    from transformers import WhisperFeatureExtractor

    from tatk.shard.encoders import FrozenEncoder

    name = recipe.features.encoder
    if name == "mel" or name.startswith("mel:"):
        n_mels = int(name.split(":")[1]) if ":" in name else 80
        return None, "mel", WhisperFeatureExtractor(feature_size=n_mels), "fit", "log-mel"
    frozen = FrozenEncoder(name, dtype="float32", network=merged, window=recipe.features.window or None)
    return frozen.model, frozen.kind, frozen.extractor, frozen.window, _encoder_revision(recipe, frozen.info.revision)


def _portable(config) -> dict:
    """A base's config as a dict, without ``_name_or_path`` (where the base was on this machine)."""
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def _save_weights(tmp: Path, cfg, recipe, model, weights: dict, encoder, enc_scale: float | None) -> None:
    """config.json and model.safetensors: the trained weights only, or (``cfg.merged``) every weight of the
    model a default export loads, LoRA pairs merged."""
    from safetensors.torch import save_file

    from tatk.model.modeling_tatk import TatkAsrModel

    if not cfg.merged:
        cfg.save_pretrained(tmp)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        return
    llm = model.llm.unload() if recipe.model.decoder == "lora" else model.llm  # base LLM; pairs merged below
    if enc_scale:
        encoder = model.encoder.network.unload()
    cfg.encoder_config = _portable(encoder.config) if encoder is not None else None
    cfg.llm_config = _portable(llm.config)
    full = TatkAsrModel(cfg, encoder=encoder, llm=llm)
    full.load_trained(weights)
    full.save_pretrained(tmp)


def export(checkpoint: str | Path, out_dir: str | Path, merged: bool | None = None, eval_summary: str | Path | None = None,
           license: str = "apache-2.0", aligner: str | None = None) -> Path:
    """Write a Hub-ready model folder for a checkpoint (or a run folder's newest checkpoint); returns the folder.

    ``merged=None`` (the default) stores every weight when a base model is a local folder, since a folder does not
    travel with the export (another machine, another working directory); Hub-id bases stay references.
    ``merged=False`` keeps references even to folders, recorded as absolute paths (such an export cannot be
    pushed: ``tatk push`` refuses it).
    ``aligner``: a CTC model's Hub id or folder for word timestamps (a folder is copied into the export).
    """
    from transformers import AutoConfig

    from tatk.train.checkpoint import load_trained, read_weights, resolve
    from tatk.train.projector_config import model_options
    from tatk.shard.encoders import _revision
    from tatk.model.configuration_tatk import TatkAsrConfig

    out = Path(out_dir)
    summary = _read_summary(eval_summary)
    aligner_choice = check_aligner(aligner) if aligner else None
    read_weights(resolve(checkpoint))  # a missing or corrupt checkpoint fails here, in one line, before any loading
    recipe, model = load_trained(checkpoint)
    weights, scale, enc_scale = _trained_weights(recipe, model)
    name = recipe.features.encoder
    local = {n: _local_folder(n) for n in (name, recipe.model.llm)}
    if merged is None:
        merged = any(local.values())
    encoder, kind, extractor, window, enc_rev = _encoder_part(recipe, merged)
    llm_rev = _revision(recipe.model.llm, AutoConfig.from_pretrained(recipe.model.llm))
    lay = model.layout
    # A merged export records a local base by its folder's name and content hash only: it loads nothing from
    # there, and a pushed export should not publish where it was made. Unmerged, the path is where it loads from.
    base = {n: (Path(p).name if merged else p) if p else n for n, p in local.items()}
    cfg = TatkAsrConfig(
        encoder=base[name], encoder_revision=enc_rev, encoder_kind=kind, encoder_window=window,
        feature_dim=recipe.features.dim, normalize=recipe.features.normalize, llm=base[recipe.model.llm],
        llm_revision=llm_rev,
        llm_hidden=model.llm.get_input_embeddings().embedding_dim, projector_kind=recipe.projector.kind,
        projector_stack=recipe.projector.stack, projector_hidden=recipe.projector.hidden,
        projector_options=model_options(recipe.projector), decoder=recipe.model.decoder,
        lora_scale=scale, encoder_lora_scale=enc_scale, prompt_prefix=lay.prefix, prompt_suffix=lay.suffix, audio_token_id=lay.audio_id,
        end_token_id=lay.end_id, pad_token_id=lay.pad_id, max_new_tokens=recipe.eval.max_new_tokens, merged=merged,
        auto_map=AUTO_MAP, custom_pipelines=CUSTOM_PIPELINES, architectures=["TatkAsrModel"],
        **config_fields(aligner_choice),
    )
    tmp = _prepare_out(out)
    try:
        _save_weights(tmp, cfg, recipe, model, weights, encoder, enc_scale)
        for f in CODE_FILES:
            shutil.copyfile(HUB_DIR / f, tmp / f)
        extractor.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        if aligner_choice:
            bundle_aligner(aligner_choice, tmp)
        card_name = out.name if not is_hub_id(str(out)) else str(out)
        (tmp / "README.md").write_text(model_card(cfg, recipe, _datasets(recipe), license, summary, card_name))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

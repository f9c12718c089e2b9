"""``tatk export`` / ``tatk push``: a checkpoint → a Hub-ready folder that transformers loads with

    pipeline("automatic-speech-recognition", model=FOLDER_OR_ID, trust_remote_code=True)

The folder holds ``config.json`` (with ``auto_map`` and ``custom_pipelines``), the model code of
``tatk/hub`` (copied verbatim), ``model.safetensors``, the feature extractor, the tokenizer (with the
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

HUB_DIR = Path(__file__).parent / "hub"
CODE_FILES = ("configuration_tatk.py", "modeling_tatk.py", "pipeline_tatk.py", "encoder.py", "projectors.py", "speech.py")
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
    from tatk.hub.modeling_tatk import ENCODER_LORA_PREFIX, LORA_PREFIX

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
    from tatk.shards import read_manifest

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
    from tatk.shards import read_manifest

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


def _is_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def model_card(cfg, recipe, datasets: list[str], license: str, summary: dict | None, name: str) -> str:
    """README.md with Hub metadata (YAML; values are JSON-quoted, which YAML reads as-is)."""
    q = json.dumps
    bases = [b for b in (cfg.encoder, cfg.llm) if _is_hub_id(b)]
    lines = ["---", "library_name: transformers", "pipeline_tag: automatic-speech-recognition", f"license: {q(license)}"]
    if bases:
        lines += ["base_model:"] + [f"- {q(b)}" for b in bases]
    if datasets:
        lines += ["datasets:"] + [f"- {q(d)}" for d in datasets]
    lines += ["tags:", "- tatk", "- speech", "- asr", "- custom_code"]
    if summary:
        data = str(summary.get("data", "eval"))
        lines += ["model-index:", f"- name: {q(name)}", "  results:", "  - task:", "      type: automatic-speech-recognition",
                  "      name: Automatic Speech Recognition", "    dataset:", f"      name: {q(data)}", f"      type: {q(data)}"]
        if summary.get("split"):
            lines.append(f"      split: {q(summary['split'])}")
        lines += ["    metrics:", "    - type: wer", f"      value: {round(100 * float(summary['wer']), 2)}", "      name: WER (%)"]
    lines.append("---")
    rev = lambda r: f" @ `{r}`" if r else ""
    body = f"""
# {name}

A speech recognizer trained with tatk (the Tiny Audio Training Kit): a frozen audio encoder, a trained
projector, and an LLM decoder ({cfg.decoder}).

| part | what |
|---|---|
| encoder | `{cfg.encoder}`{rev(cfg.encoder_revision)} ({cfg.encoder_kind}, {cfg.feature_dim}-dim features, {cfg.normalize} normalisation) |
| projector | {cfg.projector_kind}, {cfg.projector_stack} frames per LLM position, hidden {cfg.projector_hidden} |
| LLM | `{cfg.llm}`{rev(cfg.llm_revision)}, decoder {cfg.decoder} |
| weights | {"every weight (merged)" if cfg.merged else "trained weights only; the encoder and LLM load from their own repositories"} |

## Use

```python
from transformers import pipeline

asr = pipeline("automatic-speech-recognition", model="{name}", trust_remote_code=True)
asr("speech.wav")["text"]
asr({{"raw": wave, "sampling_rate": 44100}})            # any rate, resampled to 16 kHz
asr(["a.wav", "b.flac"], batch_size=8)                  # batched
asr("long.wav", return_timestamps=True)["chunks"]       # > {cfg.chunk_seconds:g} s is cut at pauses
```

Needs `soundfile` to decode files and `soxr` to resample audio that is not at 16 kHz.
Decoding is greedy, at most {cfg.max_new_tokens} new tokens per chunk (`max_new_tokens=` to change).
"""
    if summary:
        body += f"""
## Evaluation

| data | split | utterances | audio (h) | WER | RTFx |
|---|---|---|---|---|---|
| {summary.get('data', '')} | {summary.get('split', '')} | {summary.get('n', '')} | {float(summary.get('audio_hours', 0)):.3f} | {100 * float(summary['wer']):.2f} % | {float(summary.get('rtfx', 0)):.1f} |
"""
    body += f"\nTraining recipe: run `{recipe.run.name}`, {recipe.train.steps} steps.\n"
    return "\n".join(lines) + "\n" + body


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


def export(checkpoint: str | Path, out_dir: str | Path, merged: bool = False, eval_summary: str | Path | None = None,
           license: str = "apache-2.0") -> Path:
    """Write a Hub-ready model folder for a checkpoint (or a run folder's newest checkpoint); returns the folder."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, WhisperFeatureExtractor

    from tatk.checkpoint import load_trained, read_weights, resolve
    from tatk.encoders import FrozenEncoder, _revision
    from tatk.hub.configuration_tatk import TatkAsrConfig
    from tatk.hub.modeling_tatk import TatkAsrModel

    out = Path(out_dir)
    summary = _read_summary(eval_summary)
    read_weights(resolve(checkpoint))  # a missing or corrupt checkpoint fails here, in one line, before any loading
    recipe, model = load_trained(checkpoint)
    weights, scale, enc_scale = _trained_weights(recipe, model)
    name = recipe.features.encoder
    if name == "mel" or name.startswith("mel:"):
        n_mels = int(name.split(":")[1]) if ":" in name else 80
        encoder, kind, extractor, enc_rev = None, "mel", WhisperFeatureExtractor(feature_size=n_mels), "log-mel"
    else:
        frozen = FrozenEncoder(name, dtype="float32", network=merged)
        encoder, kind, extractor = frozen.model, frozen.kind, frozen.extractor
        enc_rev = _encoder_revision(recipe, frozen.info.revision)
    llm_rev = _revision(recipe.model.llm, AutoConfig.from_pretrained(recipe.model.llm))
    lay = model.layout
    cfg = TatkAsrConfig(
        encoder=name, encoder_revision=enc_rev, encoder_kind=kind, feature_dim=recipe.features.dim,
        normalize=recipe.features.normalize, llm=recipe.model.llm, llm_revision=llm_rev,
        llm_hidden=model.llm.get_input_embeddings().embedding_dim, projector_kind=recipe.projector.kind,
        projector_stack=recipe.projector.stack, projector_hidden=recipe.projector.hidden, decoder=recipe.model.decoder,
        lora_scale=scale, encoder_lora_scale=enc_scale, prompt_prefix=lay.prefix, prompt_suffix=lay.suffix, audio_token_id=lay.audio_id,
        end_token_id=lay.end_id, pad_token_id=lay.pad_id, max_new_tokens=recipe.eval.max_new_tokens, merged=merged,
        auto_map=AUTO_MAP, custom_pipelines=CUSTOM_PIPELINES, architectures=["TatkAsrModel"],
    )
    tmp = _prepare_out(out)
    try:
        if merged:  # the same model a default export loads, with every weight saved
            llm = model.llm.unload() if recipe.model.decoder == "lora" else model.llm  # base LLM; pairs merged below
            if enc_scale:
                encoder = model.encoder.network.unload()
            cfg.encoder_config = encoder.config.to_dict() if encoder is not None else None
            cfg.llm_config = llm.config.to_dict()
            full = TatkAsrModel(cfg, encoder=encoder, llm=llm)
            full.load_trained(weights)
            full.save_pretrained(tmp)
        else:
            cfg.save_pretrained(tmp)
            save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for f in CODE_FILES:
            shutil.copyfile(HUB_DIR / f, tmp / f)
        extractor.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        card_name = out.name if not _is_hub_id(str(out)) else str(out)
        (tmp / "README.md").write_text(model_card(cfg, recipe, _datasets(recipe), license, summary, card_name))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_export(folder: str | Path) -> list[tuple[str, int]]:
    """Validate an export folder (config with auto_map, code, readable weights, tokenizer, preprocessor);
    returns (relative path, bytes) of every file that would be uploaded."""
    from safetensors import safe_open

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder}: not a tatk export (missing {missing[0]})")
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as e:
        raise UserError(f"{folder / 'config.json'}: not valid JSON ({first_line(e)})") from None
    if config.get("auto_map", {}).get("AutoModel") != AUTO_MAP["AutoModel"] or "custom_pipelines" not in config:
        raise UserError(f"{folder / 'config.json'}: no tatk auto_map / custom_pipelines (not written by tatk export)")
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):  # checks the header against the file's size
                pass
        except Exception as e:  # noqa: BLE001  safetensors raises its own types for truncated or garbled files
            raise UserError(f"{f}: cannot read weights ({first_line(e)})") from None
    return [(str(p.relative_to(folder)), p.stat().st_size) for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def push(export_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         message: str = "Upload tatk model", dry_run: bool = False) -> list[tuple[str, int]]:
    """Upload an export folder to a Hub model repository (created if missing); returns the files.

    The token comes from huggingface_hub's usual places (``HF_TOKEN``, a cached login); it is never printed.
    """
    files = check_export(export_dir)
    if dry_run:
        return files
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
    )

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(folder_path=str(export_dir), repo_id=repo_id, revision=revision, commit_message=message,
                          ignore_patterns=[".*", "**/.*"])
    except OfflineModeIsEnabled:
        raise UserError("cannot push: HF_HUB_OFFLINE is set (unset it to reach the Hub)") from None
    except LocalTokenNotFoundError:
        raise UserError("cannot push: no Hugging Face token (set HF_TOKEN or run `hf auth login`)") from None
    except HfHubHTTPError as e:
        raise UserError(f"cannot push to {repo_id}: {first_line(e)}") from None
    except (OSError, ValueError) as e:  # connection failures, bad repo ids
        raise UserError(f"cannot push to {repo_id}: {first_line(e)}") from None
    return files


def load_pipeline(model: str, device: str = "cpu"):
    """A transformers ASR pipeline for a checkpoint or run folder (exported to a temporary folder first, so
    it is exactly what users get), an export folder or a Hub id. Call it with paths, arrays or
    ``{"raw": wave, "sampling_rate": sr}`` dicts, or lists of those with ``batch_size``."""
    from transformers import pipeline

    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    path = Path(model)

    def build(where: str):
        try:
            return pipeline("automatic-speech-recognition", model=where, trust_remote_code=True, device=device, dtype=dtype)
        except OSError as e:
            raise UserError(f"{model}: cannot load the model ({first_line(e)})") from None

    if path.is_dir() and (path / "recipe.toml").is_file():
        with tempfile.TemporaryDirectory(prefix="tatk-export-") as tmp:
            return build(str(export(path, Path(tmp) / "model")))
    if path.is_dir():
        check_export(path)
    return build(model)

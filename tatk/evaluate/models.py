"""What ``tatk eval`` evaluates, loaded once for all its test sets:

- a tatk **checkpoint** or run folder: stored features through ``SpeechLM.generate`` (shard sets), or audio
  through the pipeline of ``tatk.export.load_pipeline`` (audio sets);
- a tatk **export** (folder or Hub id): audio through ``load_pipeline``;
- any other **transformers** ASR model (folder or Hub id: Whisper, wav2vec2-CTC, ...), a baseline: audio
  through transformers' own ``pipeline("automatic-speech-recognition")``, on the same rows, scored the same way.

``open_shards`` / ``open_audio`` check a test set (cheap, before any model is loaded) and return a function
that builds its runner: (batch function, facts for the summary, items, skip counts).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tatk.errors import UserError, first_line
from tatk.evaluate.reading import Item, audio_items, shard_items
from tatk.files import is_hub_id

DEFAULT_MAX_NEW_TOKENS = 128  # tatk exports and Hub ids carry no recipe
Runner = tuple[Callable[[list[Item]], list[str]], dict, Iterator[Item], dict[str, int]]


def checkpoint_step(ckpt: Path) -> int | None:
    m = re.fullmatch(r"step-(\d+)", ckpt.name)
    return int(m.group(1)) if m else None


def check_weights(ckpt: Path) -> None:
    """Fail in a second on an unreadable model.safetensors, before the LLM is loaded (which takes minutes for big ones)."""
    from safetensors import safe_open

    from tatk.train.checkpoint import WEIGHTS

    try:
        with safe_open(str(ckpt / WEIGHTS), "pt"):  # parses the header and checks it against the file size
            pass
    except Exception as e:  # noqa: BLE001  safetensors raises its own types for truncated or garbled files
        raise UserError(f"{ckpt / WEIGHTS}: cannot read weights ({first_line(e)})") from None


def model_kind(name: str) -> str:
    """``checkpoint`` (a tatk checkpoint or run folder), ``tatk`` (a tatk export, or anything ``load_pipeline``
    must judge) or ``transformers`` (a folder or Hub id whose config is another model type)."""
    path = Path(name)
    if name.endswith(":best") or (path.is_dir() and (path / "recipe.toml").is_file()):  # RUN:best: train.keep_best
        return "checkpoint"
    if path.is_dir():
        config = path / "config.json"
        text = config.read_text(errors="replace") if config.is_file() else ""
    else:
        try:
            from transformers.utils import cached_file

            text = Path(cached_file(name, "config.json")).read_text(errors="replace")
        except (OSError, ValueError):  # not found or not an id: load_pipeline says so in one line
            return "tatk"
    try:
        model_type = json.loads(text).get("model_type") if text else "tatk_asr"
    except ValueError:
        return "tatk"
    return "tatk" if model_type == "tatk_asr" else "transformers"


class Evaluated:
    """The model of one ``tatk eval`` run; each of its parts is loaded on first use, then shared by every test set."""

    def __init__(self, name: str, device: str, max_new_tokens: int | None, num_beams: int):
        self.name, self.device, self.max_new_tokens, self.num_beams = name, device, max_new_tokens, num_beams
        self.kind = model_kind(name)
        self._trained = self._pipe = None

    def _checkpoint(self) -> Path:
        from tatk.train.checkpoint import resolve

        ckpt = resolve(self.name)
        check_weights(ckpt)
        return ckpt

    def open_shards(self, folder: Path, split: str, limit: int | None) -> Callable[[], Runner]:
        """Shard mode: check the folder, split and encoder against the checkpoint's recipe; nothing loaded yet."""
        from tatk.shard.encoders import manifest_window
        from tatk.shard.format import read_manifest, read_split
        from tatk.train.recipe import load_recipe

        path = Path(self.name)
        if is_hub_id(self.name) or (path.is_dir() and not (path / "recipe.toml").is_file()):
            raise UserError(f"{self.name}: shard mode (--data) needs a tatk checkpoint or run folder "
                            "(export folders, baselines and Hub ids: evaluate on audio with --dataset or --local)")
        ckpt = self._checkpoint()
        if not Path(folder).is_dir():
            raise UserError(f"--data {folder}: no such shard folder")
        manifest = read_manifest(folder)
        read_split(folder, split)  # one-line error for a missing split
        recipe = load_recipe(ckpt / "recipe.toml", [], check_shards=False)
        enc = manifest["encoder"]
        if enc["id"] != recipe.features.encoder or enc["dim"] != recipe.features.dim:
            raise UserError(f"--data {folder}: features of {enc['id']!r} ({enc['dim']}-dim), but {ckpt} was trained on "
                            f"{recipe.features.encoder!r} ({recipe.features.dim}-dim)")
        if recipe.features.window and manifest_window(enc) != recipe.features.window:
            raise UserError(f"--data {folder}: made with {manifest_window(enc)!r} encoder windows, but {ckpt} was "
                            f"trained on {recipe.features.window!r} windows")
        return lambda: self._shard_runner(ckpt, Path(folder), split, limit)

    def _shard_runner(self, ckpt: Path, folder: Path, split: str, limit: int | None) -> Runner:
        import torch

        from tatk.shard.format import read_split
        from tatk.train.checkpoint import load_trained

        if self._trained is None:
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
            self._trained = load_trained(ckpt, self.device, dtype)
        recipe, model = self._trained
        max_new = self.max_new_tokens or recipe.eval.max_new_tokens

        def run_batch(batch: list[Item]) -> list[str]:
            width = max(it.payload.shape[0] for it in batch)
            feats = np.zeros((len(batch), width, batch[0].payload.shape[1]), dtype=np.float32)
            for i, it in enumerate(batch):
                feats[i, : it.payload.shape[0]] = it.payload
            lens = torch.tensor([it.payload.shape[0] for it in batch], device=self.device)
            return model.generate(torch.from_numpy(feats).to(self.device), lens, max_new, num_beams=self.num_beams)

        skipped: dict[str, int] = {}
        facts = {"model": str(ckpt), "model_kind": "tatk", "step": checkpoint_step(ckpt), "max_new_tokens": max_new,
                 "num_beams": self.num_beams, "rows": min(read_split(folder, split)["samples"], limit or float("inf"))}
        return run_batch, facts, shard_items(folder, split, limit, skipped, model.projector.output_length), skipped

    def open_audio(self, spec, limit: int | None) -> Callable[[], Runner]:
        """Audio mode: open the corpus (its columns are checked here) and, for a checkpoint, check its weights."""
        from tatk.data.corpus import Corpus

        corpus = Corpus(spec)
        ckpt = self._checkpoint() if self.kind == "checkpoint" else None
        if self.kind == "transformers":
            return lambda: self._baseline_runner(corpus, limit)
        return lambda: self._tatk_audio_runner(ckpt, corpus, limit)

    def _tatk_audio_runner(self, ckpt: Path | None, corpus, limit: int | None) -> Runner:
        from tatk.export import load_pipeline
        from tatk.train.recipe import load_recipe

        max_new = self.max_new_tokens
        if ckpt is not None:
            max_new = max_new or load_recipe(ckpt / "recipe.toml", [], check_shards=False).eval.max_new_tokens
        max_new = max_new or DEFAULT_MAX_NEW_TOKENS
        if self._pipe is None:
            self._pipe = load_pipeline(str(ckpt or self.name), self.device)
        pipe, options = self._pipe, {"max_new_tokens": max_new, "num_beams": self.num_beams}

        def run_batch(batch: list[Item]) -> list[str]:
            inputs = [{"raw": it.payload, "sampling_rate": 16_000} for it in batch]
            return [o["text"].strip() for o in pipe(inputs, batch_size=len(batch), generate_kwargs=options)]

        skipped: dict[str, int] = {}
        facts = {"model": str(ckpt or self.name), "model_kind": "tatk", "step": checkpoint_step(ckpt) if ckpt else None,
                 "max_new_tokens": max_new, "num_beams": self.num_beams, "rows": corpus.count(limit)}
        return run_batch, facts, audio_items(corpus, limit, skipped), skipped

    def _baseline_runner(self, corpus, limit: int | None) -> Runner:
        """Another ASR model, exactly as ``transformers.pipeline`` runs it; decoding options only where given
        (``--max-new-tokens``, ``--num-beams`` > 1), so the model's own generation config decides the rest."""
        import torch
        from transformers import pipeline

        if self._pipe is None:
            dtype = torch.bfloat16 if self.device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
            try:
                self._pipe = pipeline("automatic-speech-recognition", model=self.name, device=self.device, dtype=dtype)
            except (OSError, ValueError, KeyError) as e:
                raise UserError(f"{self.name}: cannot load as a transformers ASR model ({first_line(e)})") from None
        pipe = self._pipe
        options = {k: v for k, v in (("max_new_tokens", self.max_new_tokens), ("num_beams", self.num_beams)) if v and v != 1}
        if options and pipe.type.startswith("ctc"):
            raise UserError(f"{self.name}: a CTC model takes no decoding options ({sorted(options)}); drop them")
        kwargs = {"generate_kwargs": options} if options else {}

        def run_batch(batch: list[Item]) -> list[str]:
            inputs = [{"raw": it.payload, "sampling_rate": 16_000} for it in batch]
            return [o["text"].strip() for o in pipe(inputs, batch_size=len(batch), **kwargs)]

        skipped: dict[str, int] = {}
        facts = {"model": self.name, "model_kind": "transformers", "model_type": pipe.model.config.model_type,
                 "step": None, "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                 "rows": corpus.count(limit)}
        return run_batch, facts, audio_items(corpus, limit, skipped), skipped

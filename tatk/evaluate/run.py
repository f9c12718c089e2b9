"""``tatk eval``: transcribe a test set with a trained model and measure normalised WER and speed (RTFx).

Two modes, one scoring and output path:

- **shards** (``--data``): stored encoder features of a ``tatk shard`` folder go straight through the
  checkpoint's ``SpeechLM.generate`` (batched greedy or beam decoding, left padding, KV cache). Fast, and exactly
  what training validated on, but it trusts the features were made by the encoder the model trained on.
- **audio** (``--dataset`` / ``--local``): corpus rows read as ``tatk shard`` reads them, decoded to
  16 kHz, and run end to end (frozen encoder included) through the transformers pipeline of
  ``tatk.export.load_pipeline``: what a user of the model gets.

Utterances are read in windows, sorted by length inside a window and transcribed in batches of
``batch_size`` (similar lengths pad little), then put back in input order. ``wall_s`` and ``rtfx`` time
the transcription calls only (not model loading, reading or scoring). Outputs, written atomically:
``utterances.jsonl`` (one object per scored utterance, most errors first) and ``summary.json``.
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tatk import __version__
from tatk.errors import UserError, first_line
from tatk.files import atomic_write_text
from tatk.wer import score

UTTERANCES, SUMMARY = "utterances.jsonl", "summary.json"
WINDOW_BATCHES = 8  # batches read before sorting by length: bounds memory, keeps padding low
DEFAULT_MAX_NEW_TOKENS = 128  # when the model carries no recipe (export folders, Hub ids)


@dataclass
class EvalOptions:
    """What ``tatk eval`` runs (see ``tatk eval --help``). Exactly one of data / dataset / local is set."""

    model: str  # checkpoint or run folder; export folder or Hub id in audio mode
    data: Path | None = None  # shard folder (shard mode)
    dataset: str | None = None  # Hub dataset id or local dataset folder (audio mode)
    subset: str | None = None  # dataset config
    local: Path | None = None  # local corpus folder (audio mode)
    split: str = "test"
    max_samples: int | None = None  # first N utterances (shard mode) or input rows (audio mode)
    batch_size: int = 16
    max_new_tokens: int | None = None  # None: the recipe's eval.max_new_tokens, else DEFAULT_MAX_NEW_TOKENS
    num_beams: int = 1  # 1: greedy; N > 1: beam search with N beams (transformers' generate)
    out: Path | None = None  # None: <checkpoint>/eval-<data name>-<split>
    device: str | None = None  # None: cuda when available, else cpu


@dataclass
class Item:
    """One utterance to transcribe; ``payload`` is (frames, dim) features or a 16 kHz waveform."""

    index: int  # input order
    id: str
    reference: str
    duration: float  # seconds of audio
    payload: np.ndarray


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "data"


# -- reading -------------------------------------------------------------------------------------

def shard_items(folder: Path, split: str, limit: int | None, skipped: dict[str, int],
                output_length: Callable[[int], int]) -> Iterator[Item]:
    """Utterances of a shard split in manifest order; clips too short to project are counted in ``skipped``."""
    from tatk.shard.format import read_shard
    from tatk.shard.format import shard_paths

    index = 0
    for path in shard_paths(folder, split):
        for raw in read_shard(path):
            if limit is not None and index >= limit:
                return
            feats = np.load(io.BytesIO(raw["feats.npy"]))
            meta = json.loads(raw["json"])
            if output_length(feats.shape[0]) < 1:  # too short to give the projector one position
                skipped["too_short"] = skipped.get("too_short", 0) + 1
            else:
                yield Item(index, str(meta.get("id", raw["__key__"])), raw["txt"].decode("utf-8"),
                           float(meta["duration"]), feats)
            index += 1


def audio_items(corpus, limit: int | None, skipped: dict[str, int]) -> Iterator[Item]:
    """Corpus rows decoded to 16 kHz mono; unusable rows are counted in ``skipped`` by reason."""
    from tatk.data.audio import SAMPLE_RATE, BadAudio, decode

    for row in corpus.rows(limit=limit):
        if not row.text:
            skipped["empty_text"] = skipped.get("empty_text", 0) + 1
            continue
        try:
            wave = decode(row.audio, row.duration)
        except BadAudio as e:
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
            continue
        yield Item(row.index, row.id, row.text, len(wave) / SAMPLE_RATE, wave)


def transcribe(items: Iterator[Item], run_batch: Callable[[list[Item]], list[str]], batch_size: int,
               progress=None) -> tuple[list[Item], list[str], float]:
    """All items (payloads dropped) in input order, their transcripts, and seconds spent in ``run_batch``.

    Items are taken ``batch_size * WINDOW_BATCHES`` at a time and sorted longest first inside the window,
    so each batch holds similar lengths and the largest batch (the memory peak) comes first.
    """
    done: list[tuple[Item, str]] = []
    spent = 0.0
    window: list[Item] = []

    def flush() -> None:
        nonlocal spent
        window.sort(key=lambda it: -it.payload.shape[0])
        for b in range(0, len(window), batch_size):
            batch = window[b:b + batch_size]
            t = time.perf_counter()
            texts = run_batch(batch)
            spent += time.perf_counter() - t
            for it, text in zip(batch, texts):
                it.payload = None  # features / audio are not needed any more
                done.append((it, text))
            if progress is not None:
                progress(batch)
        window.clear()

    for item in items:
        window.append(item)
        if len(window) >= batch_size * WINDOW_BATCHES:
            flush()
    flush()
    done.sort(key=lambda d: d[0].index)
    return [it for it, _ in done], [text for _, text in done], spent


# -- models --------------------------------------------------------------------------------------

def _checkpoint_step(ckpt: Path) -> int | None:
    m = re.fullmatch(r"step-(\d+)", ckpt.name)
    return int(m.group(1)) if m else None


def _check_weights(ckpt: Path) -> None:
    """Fail in a second on an unreadable model.safetensors, before the LLM is loaded (which takes minutes for big ones)."""
    from safetensors import safe_open

    from tatk.train.checkpoint import WEIGHTS

    try:
        with safe_open(str(ckpt / WEIGHTS), "pt"):  # parses the header and checks it against the file size
            pass
    except Exception as e:  # noqa: BLE001  safetensors raises its own types for truncated or garbled files
        raise UserError(f"{ckpt / WEIGHTS}: cannot read weights ({first_line(e)})") from None


def _shard_runner(opt: EvalOptions, device: str) -> tuple[Callable, dict, Iterator[Item], dict[str, int]]:
    """Shard mode: (batch function, facts for the summary, items, skip counts)."""
    import torch

    from tatk.train.checkpoint import load_trained, resolve
    from tatk.shard.format import read_manifest, read_split

    path = Path(opt.model)
    hub_id = not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", opt.model) and not opt.model.startswith((".", "~"))
    if hub_id or (path.is_dir() and not (path / "recipe.toml").is_file()):
        raise UserError(f"{opt.model}: shard mode (--data) needs a tatk checkpoint or run folder "
                        "(export folders and Hub ids: evaluate on audio with --dataset or --local)")
    ckpt = resolve(opt.model)
    _check_weights(ckpt)
    if not Path(opt.data).is_dir():
        raise UserError(f"--data {opt.data}: no such shard folder")
    manifest = read_manifest(opt.data)
    read_split(opt.data, opt.split)  # one-line error for a missing split
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    recipe, model = load_trained(ckpt, device, dtype)
    enc = manifest["encoder"]
    if enc["id"] != recipe.features.encoder or enc["dim"] != recipe.features.dim:
        raise UserError(f"--data {opt.data}: features of {enc['id']!r} ({enc['dim']}-dim), but {ckpt} was trained on "
                        f"{recipe.features.encoder!r} ({recipe.features.dim}-dim)")
    max_new = opt.max_new_tokens or recipe.eval.max_new_tokens

    def run_batch(batch: list[Item]) -> list[str]:
        width = max(it.payload.shape[0] for it in batch)
        feats = np.zeros((len(batch), width, batch[0].payload.shape[1]), dtype=np.float32)
        for i, it in enumerate(batch):
            feats[i, : it.payload.shape[0]] = it.payload
        lens = torch.tensor([it.payload.shape[0] for it in batch], device=device)
        return model.generate(torch.from_numpy(feats).to(device), lens, max_new, num_beams=opt.num_beams)

    skipped: dict[str, int] = {}
    facts = {"model": str(ckpt), "step": _checkpoint_step(ckpt), "max_new_tokens": max_new, "num_beams": opt.num_beams}
    items = shard_items(Path(opt.data), opt.split, opt.max_samples, skipped, model.projector.output_length)
    return run_batch, facts, items, skipped


def _audio_runner(opt: EvalOptions, device: str) -> tuple[Callable, dict, Iterator[Item], dict[str, int]]:
    """Audio mode: the end-to-end pipeline of tatk.export over decoded corpus rows."""
    from tatk.data.corpus import Corpus, CorpusSpec

    try:
        from tatk.export import load_pipeline
    except ImportError:
        raise UserError("audio mode (--dataset / --local) needs tatk.export, which this install lacks; "
                        "evaluate on shards with --data") from None
    corpus = Corpus(CorpusSpec(dataset=opt.dataset, subset=opt.subset, local=opt.local, split=opt.split))
    ckpt, step, max_new = None, None, opt.max_new_tokens
    if Path(opt.model).is_dir() and (Path(opt.model) / "recipe.toml").is_file():  # a checkpoint or run folder
        from tatk.train.checkpoint import resolve
        from tatk.train.recipe import load_recipe

        ckpt = resolve(opt.model)
        _check_weights(ckpt)
        step = _checkpoint_step(ckpt)
        max_new = max_new or load_recipe(ckpt / "recipe.toml", [], check_shards=False).eval.max_new_tokens
    max_new = max_new or DEFAULT_MAX_NEW_TOKENS
    pipe = load_pipeline(str(ckpt or opt.model), device)

    def run_batch(batch: list[Item]) -> list[str]:
        inputs = [{"raw": it.payload, "sampling_rate": 16_000} for it in batch]
        out = pipe(inputs, batch_size=len(batch), generate_kwargs={"max_new_tokens": max_new, "num_beams": opt.num_beams})
        return [o["text"].strip() for o in out]

    skipped: dict[str, int] = {}
    facts = {"model": str(ckpt or opt.model), "step": step, "max_new_tokens": max_new, "num_beams": opt.num_beams}
    return run_batch, facts, audio_items(corpus, opt.max_samples, skipped), skipped


# -- the command ---------------------------------------------------------------------------------

def _data_name(opt: EvalOptions) -> str:
    if opt.data is not None:
        return Path(opt.data).resolve().name
    if opt.local is not None:
        return Path(opt.local).resolve().name
    return _safe(opt.dataset.rstrip("/").split("/")[-1] + (f"-{opt.subset}" if opt.subset else ""))


def _check(opt: EvalOptions) -> None:
    given = [name for name in ("data", "dataset", "local") if getattr(opt, name) is not None]
    if len(given) != 1:
        raise UserError("give exactly one of --data (shard folder), --dataset or --local (audio)")
    for name in ("batch_size", "max_samples", "max_new_tokens", "num_beams"):
        value = getattr(opt, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


def run_eval(opt: EvalOptions) -> dict:
    """Transcribe, score, write utterances.jsonl and summary.json into the output folder; returns the summary."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers.utils.logging import disable_progress_bar

    _check(opt)
    disable_progress_bar()  # our own progress bar says what is happening; no "Loading weights" bars per model part
    device = opt.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device!r}: {first_line(e)}") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device!r}: this machine has no CUDA GPU (torch {torch.__version__})")
    if opt.data is not None:
        run_batch, facts, items, skipped = _shard_runner(opt, device)
    else:
        run_batch, facts, items, skipped = _audio_runner(opt, device)
    model_path = Path(facts["model"])
    # next to the checkpoint or export folder; a Hub id's results go under ./evals/<id>
    home = model_path if model_path.is_dir() else Path("evals") / _safe(opt.model)
    out = Path(opt.out) if opt.out else home / f"eval-{_data_name(opt)}-{opt.split}"

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.completed:,.0f}[/] utt"), BarColumn(bar_width=None),
                  TextColumn("{task.fields[audio]:.0f} s audio"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("eval", total=None, audio=0.0)

        def tick(batch: list[Item]) -> None:
            bar.update(task, advance=len(batch), audio=bar.tasks[0].fields["audio"] + sum(i.duration for i in batch))

        done, hyps, wall = transcribe(items, run_batch, opt.batch_size, tick)
    if not done:
        raise UserError(f"{_data_name(opt)} split {opt.split!r}: no utterance to evaluate (skipped: {skipped or 'none'})")

    s = score([it.reference for it in done], hyps)
    if s.empty_references:
        skipped["empty_reference"] = s.empty_references
    rows = [{"id": it.id, "reference": it.reference, "hypothesis": h, "norm_reference": nr, "norm_hypothesis": nh,
             "errors": u.errors, "ref_words": u.ref_words, "sub": u.sub, "del": u.dels, "ins": u.ins,
             "duration": round(it.duration, 4)}
            for it, h, nr, nh, u in zip(done, hyps, s.norm_references, s.norm_hypotheses, s.utterances) if u is not None]
    rows.sort(key=lambda r: -r["errors"])  # stable: ties keep input order
    audio_s = sum(it.duration for it in done)
    summary = {
        **facts, "mode": "shards" if opt.data is not None else "audio",
        "data": str(opt.data or opt.dataset or opt.local), "subset": opt.subset, "split": opt.split,
        "n": s.n, "skipped": skipped, "audio_hours": audio_s / 3600, "wall_s": wall,
        "rtfx": audio_s / wall if wall > 0 else float("inf"),
        "wer": s.wer, "sub": s.sub, "del": s.dels, "ins": s.ins, "ref_words": s.ref_words,
        "batch_size": opt.batch_size, "device": device, "tatk_version": __version__,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / UTTERANCES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        atomic_write_text(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
    except OSError as e:
        raise UserError(f"--out {str(out)!r}: cannot write ({e.strerror or e})") from None
    print_summary(Console(), summary, out)
    return summary


def print_summary(console, s: dict, out: Path) -> None:
    """The headline table: WER and its parts, how much was evaluated, how fast."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"tatk eval → {out}"), show_header=False)
    table.add_row("model", escape(s["model"] + (f" (step {s['step']})" if s.get("step") is not None else "")))
    table.add_row("data", escape(f"{s['data']} [{s['split']}], {s['mode']} mode"))
    table.add_row("WER", f"[bold]{s['wer']:.2%}[/]  (sub {s['sub']}, del {s['del']}, ins {s['ins']} / {s['ref_words']} words)")
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(s["skipped"].items())) or "none"
    table.add_row("utterances", f"{s['n']:,} (skipped: {skipped})")
    table.add_row("audio", f"{s['audio_hours']:.3f} h")
    table.add_row("RTFx", f"{s['rtfx']:.1f}  ({s['wall_s']:.1f} s, batch {s['batch_size']}, {s['device']})")
    console.print(table)

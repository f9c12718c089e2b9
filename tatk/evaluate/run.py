"""``tatk eval``: transcribe test sets with a model and measure normalised WER, CER and speed (RTFx).

Two modes, one scoring and output path (several test sets in one run, each with its own folder and table row):

- **shards** (``--data``): stored encoder features of a ``tatk shard`` folder go straight through the
  checkpoint's ``SpeechLM.generate`` (batched greedy or beam decoding, left padding, KV cache). Fast, and exactly
  what training validated on, but it trusts the features were made by the encoder the model trained on.
- **audio** (``--dataset`` / ``--local``): corpus rows read as ``tatk shard`` reads them, decoded to
  16 kHz, and run end to end (frozen encoder included) through the transformers pipeline of
  ``tatk.export.load_pipeline``: what a user of the model gets. Any other transformers ASR model (a
  baseline) runs through transformers' own ASR pipeline on the same rows (``models.py``).

Utterances are read (``reading.py``) in windows, sorted by length inside a window and transcribed in batches of
``batch_size`` (similar lengths pad little), then put back in input order. ``wall_s`` and ``rtfx`` time
the transcription calls only (not model loading, reading or scoring). Outputs, written atomically:
``utterances.jsonl`` (one object per scored utterance, most errors first) and ``summary.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tatk import __version__
from tatk.errors import UserError, first_line
from tatk.evaluate.models import Evaluated
from tatk.evaluate.reading import transcribe
from tatk.evaluate.tables import METRICS, print_table
from tatk.files import atomic_write_text
from tatk.wer import score

UTTERANCES, SUMMARY = "utterances.jsonl", "summary.json"


def _paths(value) -> list:
    """An option given once (a value), several times (a list), or not at all (None / [])."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class EvalOptions:
    """What ``tatk eval`` runs (see ``tatk eval --help``). ``data``, ``dataset``, ``local`` and ``split`` each take one
    value or a list: every source given, read at every split given, is a test set, evaluated in turn with the same
    model (one summary and table row each)."""

    model: str  # checkpoint or run folder; in audio mode also an export folder, a Hub id or any transformers ASR model
    data: Path | list[Path] | None = None  # shard folder(s) (shard mode)
    dataset: str | list[str] | None = None  # Hub dataset id(s) or local dataset folder(s) (audio mode)
    subset: str | None = None  # dataset config, for every --dataset
    local: Path | list[Path] | None = None  # local corpus folder(s) (audio mode)
    split: str | list[str] = "test"  # the split(s) read from every source
    max_samples: int | None = None  # first N utterances (shard mode) or input rows (audio mode), per test set
    batch_size: int = 16
    max_new_tokens: int | None = None  # None: the recipe's eval.max_new_tokens, else 128 for tatk exports (models.DEFAULT_MAX_NEW_TOKENS)
    num_beams: int = 1  # 1: greedy; N > 1: beam search with N beams (transformers' generate)
    out: Path | None = None  # one test set: its folder; several: their parent. None: next to the model
    device: str | None = None  # None: cuda when available, else cpu
    metrics: tuple[str, ...] = ("wer",)  # columns of the console table; summary.json always has wer and cer
    # corpus columns and text transform, as `tatk shard` takes them (audio mode)
    audio_column: str = "wav"
    text_column: str = "text"
    id_column: str = "ID"
    speaker_column: str = "spk_id"
    text_transform: str = "lower"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "data"


def _test_sets(opt: EvalOptions) -> list[tuple[str, str, str, str]]:
    """(mode, source, name, split) of every test set, in the order given: shard folders, datasets, local folders,
    each at every split in turn."""
    sources = [("shards", str(d), Path(d).resolve().name) for d in _paths(opt.data)]
    sources += [("audio", d, _safe(str(d).rstrip("/").split("/")[-1] + (f"-{opt.subset}" if opt.subset else "")))
                for d in _paths(opt.dataset)]
    sources += [("audio-local", str(d), Path(d).resolve().name) for d in _paths(opt.local)]
    return [(mode, source, name, split) for mode, source, name in sources for split in _paths(opt.split)]


def _check(opt: EvalOptions) -> list[tuple[str, str, str, str]]:
    sets = _test_sets(opt)
    if not sets:
        raise UserError("give a test set: --data (shard folder), --dataset or --local (audio), and a --split; "
                        "each may be repeated")
    folders = [f"eval-{name}-{split}" for _, _, name, split in sets]
    twice = sorted({f for f in folders if folders.count(f) > 1})
    if twice:
        raise UserError(f"two test sets would both write {twice[0]}; give them different folder names or splits")
    for name in ("batch_size", "max_samples", "max_new_tokens", "num_beams"):
        value = getattr(opt, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    bad = [m for m in opt.metrics if m not in METRICS]
    if bad or not opt.metrics:
        raise UserError(f"--metric: expected some of {', '.join(METRICS)}, got {','.join(opt.metrics)}")
    return sets


def _device(opt: EvalOptions) -> str:
    import torch

    device = opt.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device!r}: {first_line(e)}") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device!r}: this machine has no CUDA GPU (torch {torch.__version__})")
    return device


def run_evals(opt: EvalOptions) -> list[dict]:
    """Every test set of ``opt``: transcribe, score, write utterances.jsonl and summary.json into its folder; print
    one table with a row per set; returns the summaries. Every set is checked before any model is loaded."""
    from rich.console import Console
    from transformers.utils.logging import disable_progress_bar

    from tatk.data.corpus import CorpusSpec

    sets = _check(opt)
    disable_progress_bar()  # our own progress bar says what is happening; no "Loading weights" bars per model part
    device = _device(opt)
    model = Evaluated(opt.model, device, opt.max_new_tokens, opt.num_beams)
    starts = []
    for mode, source, _, split in sets:
        if mode == "shards":
            starts.append(model.open_shards(Path(source), split, opt.max_samples))
        else:
            spec = CorpusSpec(dataset=source if mode == "audio" else None, subset=opt.subset if mode == "audio" else None,
                              local=Path(source) if mode == "audio-local" else None, split=split,
                              audio_column=opt.audio_column, text_column=opt.text_column, id_column=opt.id_column,
                              speaker_column=opt.speaker_column, text_transform=opt.text_transform)
            starts.append(model.open_audio(spec, opt.max_samples))
    summaries, outs = [], []
    for (mode, source, name, split), start in zip(sets, starts):
        run_batch, facts, items, skipped = start()
        model_path = Path(facts["model"])
        # next to the checkpoint or model folder; a Hub id's results go under ./evals/<id>
        home = model_path if model_path.is_dir() else Path("evals") / _safe(opt.model)
        folder = f"eval-{name}-{split}"
        out = (Path(opt.out) if len(sets) == 1 else Path(opt.out) / folder) if opt.out else home / folder
        summaries.append(_evaluate(opt, mode, source, name, split, run_batch, facts, items, skipped, device, out))
        outs.append(out)
    print_table(Console(), summaries, outs, opt.metrics)
    return summaries


def run_eval(opt: EvalOptions) -> dict:
    """``run_evals`` for a single test set; returns its summary."""
    summaries = run_evals(opt)
    if len(summaries) != 1:
        raise UserError("run_eval takes one test set; use run_evals for several")
    return summaries[0]


def _evaluate(opt, mode, source, name, split, run_batch, facts, items, skipped, device, out: Path) -> dict:
    """One test set: transcribe with a progress bar, score, write the two files atomically; returns the summary."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    total = facts.pop("rows", None)  # input rows when known without reading them (capped at --max-samples): an ETA
    done_of = "{task.completed:,.0f}" + (" / {task.total:,.0f}" if total is not None else "") + " utt"
    eta = [TextColumn("eta"), TimeRemainingColumn()] if total is not None else []
    with Progress(TextColumn(f"[bold]{name}[/] " + done_of), BarColumn(bar_width=None),
                  TextColumn("{task.fields[audio]:.0f} s audio"), TimeElapsedColumn(), *eta,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("eval", total=total, audio=0.0)

        def tick(batch) -> None:
            bar.update(task, advance=len(batch), audio=bar.tasks[0].fields["audio"] + sum(i.duration for i in batch))

        done, hyps, wall = transcribe(items, run_batch, opt.batch_size, tick)
    if not done:
        raise UserError(f"{name} split {split!r}: no utterance to evaluate (skipped: {skipped or 'none'})")
    s = score([it.reference for it in done], hyps)
    if s.empty_references:
        skipped["empty_reference"] = s.empty_references
    rows = [{"id": it.id, "reference": it.reference, "hypothesis": h, "norm_reference": nr, "norm_hypothesis": nh,
             "errors": u.errors, "ref_words": u.ref_words, "sub": u.sub, "del": u.dels, "ins": u.ins,
             "char_errors": u.char_errors, "ref_chars": u.ref_chars, "duration": round(it.duration, 4)}
            for it, h, nr, nh, u in zip(done, hyps, s.norm_references, s.norm_hypotheses, s.utterances) if u is not None]
    rows.sort(key=lambda r: -r["errors"])  # stable: ties keep input order
    audio_s = sum(it.duration for it in done)
    summary = {
        **facts, "mode": "shards" if mode == "shards" else "audio", "data": source,
        "subset": opt.subset if mode == "audio" else None, "split": split,
        "n": s.n, "skipped": skipped, "audio_hours": audio_s / 3600, "wall_s": wall,
        "rtfx": audio_s / wall if wall > 0 else float("inf"),
        "wer": s.wer, "sub": s.sub, "del": s.dels, "ins": s.ins, "ref_words": s.ref_words,
        "cer": s.cer, "char_errors": s.char_errors, "ref_chars": s.ref_chars,
        "batch_size": opt.batch_size, "device": device, "tatk_version": __version__,
    }
    if mode != "shards":
        summary["columns"] = {"audio": opt.audio_column, "text": opt.text_column, "id": opt.id_column,
                              "text_transform": opt.text_transform}
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / UTTERANCES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        atomic_write_text(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
    except OSError as e:
        raise UserError(f"--out {str(out)!r}: cannot write ({e.strerror or e})") from None
    return summary

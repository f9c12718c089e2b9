"""``tatk report``: a run's report folder, rebuilt from what the run already wrote.

``<run>/report/`` holds

- ``training.png``: training loss and validation WER / loss against optimizer steps, from
  ``<run>/metrics.jsonl`` (the records ``tatk train`` appends);
- ``eval-summary.json``: a copy of ``tatk eval``'s ``summary.json`` (WER, utterances, audio hours, RTFx);
- ``report.md``: the headline numbers, the plot, and the 10 worst and 10 best utterances (reference
  vs hypothesis) from ``tatk eval``'s ``utterances.jsonl``.

Given several ``tatk eval`` folders (e.g. the in-grammar test split and held-out splits of unseen word
orders or unseen voices), the report also sets their WERs side by side: a table in ``report.md``, a bar
chart ``held-out.png`` and ``eval-summaries.json``; the worst and best utterances are the first folder's.

Nothing is recomputed: re-running the command on the same logs gives the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

from tatk.errors import UserError, first_line
from tatk.files import atomic_write_text

N_SHOWN = 10  # worst and best utterances listed


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``<run>/metrics.jsonl``, in the order written (a resumed run appends again)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a tatk run folder, or training never logged a step)")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON lines ({first_line(e)})") from None


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key``; a step logged twice (a resumed run redoing it) keeps its last value."""
    last = {r["step"]: r[key] for r in records if key in r}
    steps = sorted(last)
    return steps, [last[s] for s in steps]


def _save(fig, out: Path) -> Path:
    """Write a matplotlib figure as a PNG to ``out`` atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(out)
    return out


def plot_training(records: list[dict], out: Path) -> Path:
    """Training loss (left) and validation WER and loss (right) against steps, written as a PNG to ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    steps, loss = _series(records, "loss")
    left.plot(steps, loss, color="tab:blue")
    left.set(title="training loss", xlabel="step", ylabel="cross-entropy per token")
    left.grid(alpha=0.3)
    steps, wer = _series(records, "wer")
    right.plot(steps, [100 * w for w in wer], "o-", color="tab:red", label="validation WER")
    right.set(title="validation", xlabel="step", ylabel="WER (%)")
    right.set_ylim(bottom=0)
    right.grid(alpha=0.3)
    steps, val_loss = _series(records, "val_loss")
    if val_loss:
        twin = right.twinx()
        twin.plot(steps, val_loss, "s--", color="tab:gray", label="validation loss")
        twin.set_ylabel("validation loss")
        right.legend(handles=right.get_lines() + twin.get_lines(), loc="upper right")
    return _save(fig, out)


def find_evals(run_dir: Path) -> list[Path]:
    """The ``tatk eval`` output folders of a run, oldest first: every ``<run>/eval*/`` (the main job writes
    one per held-out split), else the newest ``<run>/checkpoints/*/eval-*/``; [] when there is none."""
    made = lambda p: (p / "summary.json").stat().st_mtime
    top = sorted((p.parent for p in Path(run_dir).glob("eval*/summary.json")), key=made)
    if top:
        return top
    nested = [p.parent for p in Path(run_dir).glob("checkpoints/*/eval-*/summary.json")]
    return [max(nested, key=made)] if nested else []


def _read_eval(eval_dir: Path) -> tuple[dict, list[dict]]:
    try:
        summary = json.loads((eval_dir / "summary.json").read_text())
        rows = [json.loads(line) for line in (eval_dir / "utterances.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--eval {eval_dir}: not a readable `tatk eval` output folder ({first_line(e)})") from None
    return summary, rows


def _table(rows: list[dict]) -> list[str]:
    cell = lambda s: str(s).replace("|", "\\|") or "∅"  # an empty hypothesis stays visible
    lines = ["| id | errors / words | reference | hypothesis |", "|---|---|---|---|"]
    lines += [f"| {r['id']} | {r['errors']} / {r.get('ref_words', '?')} | {cell(r['reference'])} | {cell(r['hypothesis'])} |"
              for r in rows]
    return lines


def plot_splits(names: list[str], wers: list[float], out: Path) -> Path:
    """A bar chart of WER (%) per evaluated split, written as a PNG to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5), dpi=100)
    bars = ax.bar(names, [100 * w for w in wers], color="tab:red")
    ax.bar_label(bars, fmt="%.1f %%")
    ax.set(title="held-out WER", ylabel="WER (%)")
    ax.set_ylim(bottom=0)
    return _save(fig, out)


def _splits_section(evals: list[tuple[Path, dict]], out: Path) -> list[str]:
    """The side-by-side table of several evaluations (and its plot), as report lines."""
    names = [f"{s.get('split', '?')}" for _, s in evals]
    if len(set(names)) < len(names):  # the same split of different data: name them by folder instead
        names = [p.name for p, _ in evals]
    plot_splits(names, [s["wer"] for _, s in evals], out / "held-out.png")
    summaries = {n: s for n, (_, s) in zip(names, evals)}
    atomic_write_text(out / "eval-summaries.json", json.dumps(summaries, indent=1) + "\n")
    first = evals[0][1]["wer"]
    lines = ["## Held-out splits side by side", "", "| split | data | utterances | WER | vs " + names[0] + " |",
             "|---|---|---|---|---|"]
    for name, (path, s) in zip(names, evals):
        lines.append(f"| {name} | {s.get('data', path)} | {s['n']} | {100 * s['wer']:.2f} % | "
                     f"{100 * (s['wer'] - first):+.2f} |")
    return [*lines, "", "![WER per held-out split](held-out.png)", ""]


def write_report(run_dir: str | Path, eval_dirs: list[str | Path] | str | Path | None = None) -> Path:
    """Write ``<run>/report/`` (see the module docstring) and return its path.

    ``eval_dirs``: ``tatk eval`` output folders (one, or several to set side by side); None takes those
    inside the run (see ``find_evals``), and with none at all the report holds the training curves only.
    """
    run = Path(run_dir)
    records = read_metrics(run)
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_training(records, out / "training.png")
    if isinstance(eval_dirs, (str, Path)):
        eval_dirs = [eval_dirs]
    paths = [Path(d) for d in eval_dirs] if eval_dirs else find_evals(run)
    for path in paths:
        if not path.is_dir():
            raise UserError(f"--eval {path}: no such folder")
    evals = [(path, *_read_eval(path)) for path in paths]  # every folder checked before anything is written

    steps, loss = _series(records, "loss")
    lines = [f"# Report: {run}", ""]
    if loss:
        lines.append(f"Training: {steps[-1]} steps, loss {loss[0]:.3f} at step {steps[0]} → {loss[-1]:.3f} "
                     f"at step {steps[-1]}.")
    wsteps, wer = _series(records, "wer")
    if wer:
        lines.append(f"Validation WER during training: {100 * wer[-1]:.1f} % at step {wsteps[-1]} "
                     f"(best {100 * min(wer):.1f} %).")
    lines += ["", "![training loss and validation WER](training.png)", ""]
    if not evals:
        lines.append("No `tatk eval` output found: run `tatk eval` and then `tatk report RUN --eval DIR`.")
    else:
        if len(evals) > 1:
            lines += _splits_section([(p, s) for p, s, _ in evals], out)
        eval_path, summary, rows = evals[0]
        atomic_write_text(out / "eval-summary.json", json.dumps(summary, indent=1) + "\n")
        worst = sorted(rows, key=lambda r: -r["errors"])[:N_SHOWN]  # stable: ties keep eval's order
        best = sorted(rows, key=lambda r: r["errors"])[:N_SHOWN]
        lines += [f"## Evaluation: {summary.get('data', '?')} split {summary.get('split', '?')} ({eval_path})", "",
                  (f"WER **{100 * summary['wer']:.2f} %** on {summary['n']} utterances "
                   f"({summary.get('audio_hours', 0) * 3600:.0f} s of audio), "
                   f"{summary.get('rtfx', float('nan')):.3g}× real time on {summary.get('device', '?')}."), "",
                  f"### {N_SHOWN} worst utterances", "", *_table(worst), "",
                  f"### {N_SHOWN} best utterances", "", *_table(best), ""]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out

"""The console table of ``tatk eval``: one row per test set, the chosen metrics with their parts, how much was
evaluated and how fast."""

from __future__ import annotations

from pathlib import Path

METRICS = ("wer", "cer")


def parse_metrics(text: str) -> tuple[str, ...]:
    """``--metric wer,cer`` → ("wer", "cer"); an unknown name is refused."""
    from tatk.errors import UserError

    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"--metric {text!r}: expected a comma-separated list of {', '.join(METRICS)}")
    return names


def _percent(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.2%}"


def print_table(console, summaries: list[dict], outs: list[Path], metrics: tuple[str, ...] = ("wer",)) -> None:
    """One row per evaluated test set, under a title naming the model."""
    from rich.markup import escape
    from rich.table import Table

    first = summaries[0]
    model = first["model"] + (f" (step {first['step']})" if first.get("step") is not None else "")
    if first.get("model_kind") == "transformers":
        model += f" (transformers {first.get('model_type', '')} baseline)"
    decoding = f"beam {first['num_beams']}" if first.get("num_beams", 1) > 1 else "greedy"
    table = Table(title=escape(f"tatk eval: {model}, {decoding}"))
    for col in ("data", *(m.upper() for m in metrics), "sub/del/ins of words", "utterances", "audio h", "RTFx"):
        table.add_column(col, justify="left" if col == "data" else "right")
    for s in summaries:
        table.add_row(escape(f"{s['data']} [{s['split']}], {s['mode']}"), *(f"[bold]{_percent(s.get(m))}[/]" for m in metrics),
                      f"{s['sub']}/{s['del']}/{s['ins']} of {s['ref_words']}", f"{s['n']:,}", f"{s['audio_hours']:.3f}",
                      f"{s['rtfx']:.1f}")
    console.print(table)
    for s, out in zip(summaries, outs):
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(s["skipped"].items())) or "none"
        console.print(escape(f"{s['data']} [{s['split']}]: skipped {skipped}; written to {out}"), soft_wrap=True)
    last = summaries[-1]
    console.print(f"RTFx = audio seconds / transcription seconds (batch {last['batch_size']}, {last['device']})")

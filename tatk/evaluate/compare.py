"""``tatk eval --compare A B``: two evaluations side by side, with deltas and per-utterance changes.

A and B are ``summary.json`` files written by ``tatk eval`` (or their folders). When each has its
``utterances.jsonl`` next to it, utterances are matched by id and counted as better, worse or the same.
"""

from __future__ import annotations

import json
from pathlib import Path

from tatk.errors import UserError, first_line
from tatk.evaluate.run import SUMMARY, UTTERANCES


def _load_summary(path: Path) -> tuple[dict, Path]:
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY
    try:
        return json.loads(path.read_text()), path
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable eval summary ({first_line(e)})") from None


def _load_errors(summary_path: Path) -> dict[str, int] | None:
    path = summary_path.parent / UTTERANCES
    if not path.is_file():
        return None
    return {r["id"]: r["errors"] for r in map(json.loads, path.read_text().splitlines()) if r}


def compare(a: Path, b: Path) -> dict:
    """Two summaries side by side with deltas (b − a); per-utterance better/worse when both have utterances.jsonl."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    (sa, pa), (sb, pb) = _load_summary(a), _load_summary(b)
    table = Table(title=escape(f"tatk eval --compare\nA = {pa}\nB = {pb}"))
    for col in ("", "A", "B", "B − A"):
        table.add_column(col, justify="left" if not col else "right")
    result: dict = {}
    kind = lambda s: " (baseline)" if s.get("model_kind") == "transformers" else ""  # noqa: E731
    table.add_row("model", escape(Path(str(sa.get("model", "?"))).name + kind(sa)), escape(Path(str(sb.get("model", "?"))).name + kind(sb)), "")
    for key, label, fmt in (("wer", "WER", "{:.2%}"), ("cer", "CER", "{:.2%}"), ("sub", "substitutions", "{:,}"), ("del", "deletions", "{:,}"),
                            ("ins", "insertions", "{:,}"), ("ref_words", "reference words", "{:,}"),
                            ("n", "utterances", "{:,}"), ("audio_hours", "audio hours", "{:.3f}"), ("rtfx", "RTFx", "{:.1f}")):
        va, vb = sa.get(key), sb.get(key)
        if va is None or vb is None:
            continue
        delta = vb - va
        result[key] = delta
        sign = "+" if delta > 0 else ""
        shown = f"{sign}{delta * 100:.2f} pts" if key in ("wer", "cer") else sign + fmt.format(delta)
        table.add_row(label, fmt.format(va), fmt.format(vb), shown)
    ea, eb = _load_errors(pa), _load_errors(pb)
    if ea is not None and eb is not None:
        common = ea.keys() & eb.keys()
        result["better"] = sum(eb[k] < ea[k] for k in common)
        result["worse"] = sum(eb[k] > ea[k] for k in common)
        result["same"] = len(common) - result["better"] - result["worse"]
        result["unmatched"] = len(ea.keys() ^ eb.keys())
        table.add_row("per utterance", "", "", f"{result['better']} better, {result['worse']} worse, {result['same']} same"
                      + (f", {result['unmatched']} in one only" if result["unmatched"] else ""))
    Console().print(table)
    return result

"""Write docs/recipes.md, the recipe reference, from the documented dataclasses in tatk/train/recipe.py.

Every recipe key is a dataclass field whose ``#:`` comment is its documentation; this script renders
them as one table per TOML section, so the reference cannot drift from the code
(tests/test_docs.py checks that the committed file equals a fresh rendering).

    python tools/recipe_reference.py            # rewrite docs/recipes.md
    python tools/recipe_reference.py --check    # exit 1 if docs/recipes.md is stale
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tatk" / "train" / "recipe.py"
EXTRA = [REPO / "tatk" / "train" / "projector_config.py"]  # sub-table classes kept beside recipe.py
OUT = REPO / "docs" / "recipes.md"

INTRO = """# Recipe reference

A recipe is a TOML file (`recipes/*.toml`) read into the typed dataclasses of `tatk/train/recipe.py` and
checked by `tatk validate RECIPE` before any heavy work (unknown keys, wrong types, bad values and shard
folders that disagree with the recipe each fail with one line naming the key). `--set section.key=value`
overrides one key on the command line, its value parsed as TOML (bare words are strings); list items by
index, e.g. `--set data.train.0.weight=2`. A checkpoint's `recipe.toml` is the fully resolved recipe.

This page is generated from the code by `python tools/recipe_reference.py`; do not edit it by hand.
"""


def _classes(path: Path) -> dict[str, tuple[ast.ClassDef, list[str]]]:
    """{class name: (its AST, its file's lines)}: a field's ``#:`` doc is read from its own file."""
    text = path.read_text()
    lines = text.splitlines()
    return {n.name: (n, lines) for n in ast.parse(text).body if isinstance(n, ast.ClassDef)}


def _toml(source: str) -> str:
    """A Python default as the TOML a recipe would write (``"run"``, ``true``, ``["q_proj"]``)."""
    try:
        value = ast.literal_eval(source)
    except ValueError:
        return source
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(repr(v)) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _fields(cls: ast.ClassDef, lines: list[str]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, doc) of each annotated field, the doc from its trailing ``#:`` comment."""
    out = []
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign):
            continue
        default = ast.unparse(node.value) if node.value is not None else ""
        if default.startswith("field(default_factory=lambda: "):
            default = default.removeprefix("field(default_factory=lambda: ").removesuffix(")")
        elif default.startswith("field(default_factory="):
            default = "[]" if "list" in default else ""
        default = _toml(default) if default and default != "None" else ("none" if default == "None" else default)
        line = lines[node.end_lineno - 1]
        doc = line.split("#:", 1)[1].strip() if "#:" in line else ""
        out.append((node.target.id, ast.unparse(node.annotation), default, doc))
    return out


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    cell = lambda s: s.replace("|", "\\|")  # noqa: E731
    return ["| key | type | default | meaning |", "|---|---|---|---|"] + [
        f"| `{n}` | `{cell(t)}` | `{cell(d)}` | {cell(doc)} |" if d else f"| `{n}` | `{cell(t)}` | | {cell(doc)} |"
        for n, t, d, doc in rows]


def render() -> str:
    classes = {}
    for path in [*EXTRA, SOURCE]:
        classes.update(_classes(path))
    parts = [INTRO]
    for section, type_, _, _ in _fields(*classes["Recipe"]):
        cls = classes[type_][0]
        rows = _fields(*classes[type_])
        nested = [(n, t) for n, t, _, _ in rows if t.removeprefix("list[").rstrip("]").split(" |")[0] in classes]
        plain = [r for r in rows if r[0] not in {n for n, _ in nested}]
        doc = ast.get_docstring(cls)
        parts.append(f"## `[{section}]`\n" + (f"\n{doc}\n" if doc else ""))
        parts.append("\n".join(_table(plain)) + "\n")
        for name, t in nested:
            inner = t.removeprefix("list[").rstrip("]").split(" |")[0]
            header = f"[[{section}.{name}]]" if t.startswith("list[") else f"[{section}.{name}]"
            meaning = next(doc for n, _, _, doc in rows if n == name)
            inner_doc = ast.get_docstring(classes[inner][0])
            meaning = f"{meaning.rstrip('.')}. {inner_doc}" if inner_doc else meaning
            parts.append(f"### `{header}`\n\n{meaning}\n\n" + "\n".join(_table(_fields(*classes[inner]))) + "\n")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/recipes.md differs from a fresh rendering")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            sys.exit(f"{OUT.relative_to(REPO)} is stale: run python tools/recipe_reference.py")
        return
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()

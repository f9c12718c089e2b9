"""The package layout keeps the data flow: a subpackage imports only those before it (``model`` imports no
other part of tatk, so every stage may use it), nothing at run time imports ``synthetic``, and only the CLI
ties the stages together."""

import ast
from pathlib import Path

import tatk

ROOT = Path(tatk.__file__).parent
ORDER = ["data", "shard", "train", "export", "evaluate"]  # data flow; model is below all, synthetic beside
SHARED = {"errors", "io", "wer", "__init__"}  # tatk/errors.py, io.py, wer.py, tatk.__version__


def _imports(path: Path) -> set[str]:
    """Top-level tatk parts (subpackage or module name) that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "tatk" else [])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "tatk" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_imports_follow_the_data_flow():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if len(rel.parts) == 1:  # cli.py, errors.py, io.py, __main__.py
            continue
        here = rel.parts[0]
        for part in _imports(path) - SHARED - {here}:
            if here == "model":
                wrong.append(f"{rel}: imports tatk.{part} (model code ships alone in exports)")
            elif part == "synthetic" or (part in ORDER and here in ORDER and ORDER.index(part) > ORDER.index(here)):
                wrong.append(f"{rel}: imports tatk.{part}, which comes later in the data flow")
    assert not wrong, "\n".join(wrong)


def test_model_code_uses_relative_imports_only():
    for path in (ROOT / "model").glob("*.py"):
        assert "tatk" not in _imports(path) and "from tatk" not in path.read_text(), path

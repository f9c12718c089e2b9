"""The docs stay true to the code: the recipe reference is a fresh rendering of tatk/train/recipe.py, every
relative link resolves, every docs page is linked from the README, and the README stays a short front door."""

import re
import subprocess
import sys

from conftest import REPO

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_recipe_reference_is_generated_from_the_code():
    proc = subprocess.run([sys.executable, "tools/recipe_reference.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_recipe_key_is_documented():
    """Each recipe field carries a ``#:`` comment, so the generated reference has no empty meaning."""
    rows = [line for line in (REPO / "docs" / "recipes.md").read_text().splitlines() if line.startswith("| `")]
    meaning = lambda line: re.split(r"(?<!\\)\|", line.strip().strip("|"))[-1].strip()  # noqa: E731  last cell
    undocumented = [line for line in rows if not meaning(line)]
    assert rows and not undocumented, undocumented


def test_relative_links_resolve_and_every_page_is_linked():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = [f"{p.relative_to(REPO)} → {target}" for p in pages for target in LINK.findall(p.read_text())
              if "://" not in target and not (p.parent / target).exists()]
    assert not broken, broken
    readme = (REPO / "README.md").read_text()
    unlinked = [p.name for p in (REPO / "docs").glob("*.md") if f"docs/{p.name}" not in readme]
    assert not unlinked, f"docs pages not linked from README.md: {unlinked}"


def test_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150

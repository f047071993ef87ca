"""The README's Layout table names every package folder, so the tree can be read from it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["surgery", "trainers", "evals", "tui"]


def package_folders() -> set[str]:
    """Every folder of the packages that holds Python or task files, as `name/` relative to the root."""
    found = set()
    for top in PACKAGES:
        for path in [ROOT / top, *(ROOT / top).rglob("*")]:
            if path.is_dir() and path.name != "__pycache__" and any(
                    f.suffix in (".py", ".yaml") for f in path.iterdir() if f.is_file()):
                found.add(str(path.relative_to(ROOT)) + "/")
    return found


def layout_rows() -> set[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):].split("\n## ")[0]
    return set(re.findall(r"^\| `([^`]+/)` \|", table, flags=re.M))


def test_every_package_folder_is_in_the_layout_table():
    rows = layout_rows()
    # evals/tasks/<suite>/ are described by their parent's row
    missing = {f for f in package_folders() if f not in rows and not f.startswith("evals/tasks/")}
    assert missing == set(), f"add a row to the README's Layout table for: {sorted(missing)}"


def test_the_layout_table_names_no_folder_that_is_gone():
    gone = {row for row in layout_rows() if not (ROOT / row).is_dir()}
    assert gone == set()

"""The layering, read from the imports: surgery <- trainers <- evals <- tui. A package never imports one
above it; only modules named cli.py (or in a cli/ package) import click; only tui/ imports textual."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["surgery", "trainers", "evals", "tui"]


def modules() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def imported(source: str) -> set[str]:
    """Absolute module names a file imports, at any depth (function-level imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def is_cli(file_name: str) -> bool:
    """`cli.py`, or any module of a `cli/` package."""
    return file_name == "cli.py" or file_name.startswith("cli/")


def violations(package: str, file_name: str, names: set[str]) -> list[str]:
    above = LAYERS[LAYERS.index(package) + 1:]
    tops = {n.split(".")[0] for n in names}
    found = [f"imports {t}, which sits above {package}" for t in sorted(tops & set(above))]
    if "click" in tops and not is_cli(file_name):
        found.append("imports click outside a cli.py or cli/")
    if "textual" in tops and package != "tui":
        found.append("imports textual outside tui/")
    return found


def test_every_layer_is_there():
    assert all((ROOT / layer / "__init__.py").is_file() for layer in LAYERS)
    assert len(modules()) > 20


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    package = path.relative_to(ROOT).parts[0]
    name = "cli/" + path.name if path.parent.name == "cli" else path.name
    assert violations(package, name, imported(path.read_text())) == []


def test_the_checker_catches_each_rule():
    """The rules fire on sources that break them, including imports inside functions."""
    source = "import os\ndef f():\n    from evals.scoring.scores import x\n    import textual.app\nimport click\n"
    assert imported(source) == {"os", "evals.scoring.scores", "textual.app", "click"}
    assert violations("trainers", "loop.py", imported(source)) == [
        "imports evals, which sits above trainers", "imports click outside a cli.py or cli/",
        "imports textual outside tui/"]
    assert violations("surgery", "engine.py", {"tui.app", "trainers"}) == [
        "imports trainers, which sits above surgery", "imports tui, which sits above surgery"]
    assert violations("tui", "cli.py", {"click", "textual", "surgery.merge.plan", "evals"}) == []
    assert violations("surgery", "cli/fold.py", {"click"}) == []
    assert violations("evals", "x.py", {"evaluate", "tuition"}) == []  # only whole package names count

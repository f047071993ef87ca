"""A modal that picks a model folder: from a tree over the models folder (a folder holding a
config.json is chosen with enter, others open), or from the checkpoints the results store has scored."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Footer, Label, OptionList
from textual.widgets.option_list import Option


def is_model(path: str | Path) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def stored_checkpoints(db: str | None) -> list[str]:
    """Absolute paths of the checkpoints on the leaderboard; none when there is no store yet."""
    from evals.report.leaderboard import rows
    from evals.scoring.store import Store, default_path

    if not os.path.exists(db or default_path()):
        return []  # opening the store would create it
    with Store(db) as store:
        table, _ = rows(store)
    return [os.path.abspath(r["checkpoint"]) for r in table]


class FolderTree(DirectoryTree):
    """Folders only, without hidden ones (partial outputs are hidden)."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [p for p in paths if p.is_dir() and not p.name.startswith(".")]


class ModelPicker(ModalScreen[str | None]):
    CSS_PATH = "picker.tcss"
    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, models_dir: str, db: str | None = None, what: str = "a model"):
        super().__init__()
        self.models_dir, self.db, self.what = models_dir, db, what

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Label(f"Pick {self.what}: a model folder in {os.path.abspath(self.models_dir)}", id="picker-title")
            yield Label("enter chooses a model folder (one with a config.json) or opens another", classes="hint")
            yield FolderTree(self.models_dir, id="tree")
            yield Label("Scored checkpoints (leaderboard)", id="stored-title")
            yield OptionList(id="stored", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#tree").focus()
        self.load_stored()

    @work(thread=True, exit_on_error=False)
    def load_stored(self) -> None:
        paths = stored_checkpoints(self.db)
        self.app.call_from_thread(self._show_stored, paths)

    def _show_stored(self, paths: list[str]) -> None:
        stored = self.query_one("#stored", OptionList)
        stored.add_options([Option(p, id=p) for p in paths] or [Option("none scored yet", disabled=True)])

    @on(DirectoryTree.DirectorySelected)
    def _folder(self, event: DirectoryTree.DirectorySelected) -> None:
        if is_model(event.path):
            self.dismiss(str(event.path))

    @on(OptionList.OptionSelected, "#stored")
    def _stored(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

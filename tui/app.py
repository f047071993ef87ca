"""`surgery tui`: merges designed by trial. Three tabs: the merge designer (tui/designer.py), the
leaderboard of scored checkpoints (tui/leaderboard.py) and the training-run monitor (tui/monitor.py)."""

from __future__ import annotations

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Footer, Input, TabbedContent, TabPane

from tui.designer import Designer
from tui.leaderboard import LeaderboardPane
from tui.monitor import MonitorPane

TABS = ("tab-designer", "tab-leaderboard", "tab-monitor")


class SurgeryApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "surgery"
    AUTO_FOCUS = "#f-base_model"  # the designer's first field: a new merge starts with its base
    BINDINGS = [Binding("ctrl+t", "next_tab", "Next tab")]

    def __init__(self, models_dir: str = ".", db: str | None = None, runs: list[str] | None = None,
                 merges_dir: str = "merges"):
        super().__init__()
        self.models_dir, self.db, self.runs, self.merges_dir = models_dir, db, list(runs or []), merges_dir
        self.last_focus: dict[str, Widget] = {}  # tab -> the widget focused when it was left

    def compose(self) -> ComposeResult:
        with TabbedContent(id="tabs"):
            with TabPane("Designer", id="tab-designer"):
                yield Designer(self.models_dir, self.db, self.merges_dir, id="designer")
            with TabPane("Leaderboard", id="tab-leaderboard"):
                yield LeaderboardPane(db_path=self.db, id="leaderboard")
            with TabPane("Monitor", id="tab-monitor"):
                yield MonitorPane(self.runs, id="monitor")
        yield Footer(show_command_palette=False)

    def action_next_tab(self) -> None:
        tabs = self.query_one("#tabs", TabbedContent)
        if self.focused is not None:
            self.last_focus[tabs.active] = self.focused
        tabs.active = TABS[(TABS.index(tabs.active) + 1) % len(TABS)]
        self.set_focus(None)  # else focus falls to a hidden widget of the old tab, which switches back to it
        self.call_after_refresh(self._focus_into, tabs.active)

    def _focus_into(self, pane: str) -> None:
        """Where the tab was left, else its first widget that takes focus and keys (a table rather than
        a text box, whose typing would hide the tab's one-letter keys)."""
        last = self.last_focus.get(pane)
        if last is not None and last.is_attached:
            last.focus()
            return
        inside = self.query_one(f"#{pane}")
        chain = [w for w in self.screen.focus_chain if inside in w.ancestors]
        first = next((w for w in chain if not isinstance(w, Input)), chain[0] if chain else None)
        if first is not None:
            first.focus()

    @on(Designer.Evaluated)
    def _scored(self) -> None:
        self.query_one("#leaderboard", LeaderboardPane).refresh_rows()

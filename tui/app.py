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
    # Focus moves are priority bindings: handled as the key arrives, in order with the keys around it. A
    # plain binding is run only once the key has bubbled back up from the focused widget, behind every key
    # that arrived with it, so "base<tab>add" typed at once would put "add" into the base field too.
    BINDINGS = [Binding("ctrl+t", "next_tab", "Tabs"),
                Binding("tab", "focus_next", show=False, priority=True),
                Binding("shift+tab", "focus_previous", show=False, priority=True),
                Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, models_dir: str = ".", db: str | None = None, runs: list[str] | None = None,
                 merges_dir: str = "merges"):
        super().__init__()
        self.models_dir, self.db, self.runs, self.merges_dir = models_dir, db, list(runs or []), merges_dir
        self.last_focus: dict[str, Widget] = {}  # tab -> the widget focused when it was left

    def compose(self) -> ComposeResult:
        designer = Designer(self.models_dir, self.db, self.merges_dir, id="designer")
        self.merge_ended = designer.merge_ended
        with TabbedContent(id="tabs"):
            with TabPane("Designer", id="tab-designer"):
                yield designer
            with TabPane("Leaderboard", id="tab-leaderboard"):
                yield LeaderboardPane(db_path=self.db, id="leaderboard")
            with TabPane("Monitor", id="tab-monitor"):
                yield MonitorPane(self.runs, id="monitor")
        yield Footer(show_command_palette=False)

    def action_quit(self) -> None:
        """A merge still running is cancelled (its partial folder removed), not waited for."""
        self.query_one(Designer).cancel_event.set()
        self.exit()

    def wait_for_cleanup(self, seconds: float = 10.0) -> None:
        """After the app has closed: until a merge cancelled at quit has cleaned up (the engine checks the
        cancel between blocks, so this is short)."""
        self.merge_ended.wait(seconds)

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

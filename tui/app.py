"""`surgery tui`: merges designed by trial. Three tabs: the merge designer (tui/designer.py), the
leaderboard of scored checkpoints (tui/leaderboard.py) and the training-run monitor (tui/monitor.py)."""

from __future__ import annotations

from textual import events, on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Footer, Input, TabbedContent, TabPane

from tui.designer import Designer
from tui.key_order import after_queued
from tui.leaderboard import LeaderboardPane
from tui.monitor import MonitorPane

TABS = ("tab-designer", "tab-leaderboard", "tab-monitor")


class SurgeryApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "surgery"
    AUTO_FOCUS = "#f-base_model"  # the designer's first field: a new merge starts with its base
    BINDINGS = [Binding("ctrl+t", "next_tab", "Tabs"), Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, models_dir: str = ".", db: str | None = None, runs: list[str] | None = None,
                 merges_dir: str = "merges", include_path: str | None = None):
        super().__init__()
        self.models_dir, self.db, self.runs, self.merges_dir = models_dir, db, list(runs or []), merges_dir
        self.include_path = include_path
        self.last_focus: dict[str, Widget] = {}  # tab -> the widget focused when it was left

    def compose(self) -> ComposeResult:
        designer = Designer(self.models_dir, self.db, self.merges_dir, self.include_path, id="designer")
        self.merge_ended = designer.merge_ended
        with TabbedContent(id="tabs"):
            with TabPane("Designer", id="tab-designer"):
                yield designer
            with TabPane("Leaderboard", id="tab-leaderboard"):
                yield LeaderboardPane(db_path=self.db, id="leaderboard")
            with TabPane("Monitor", id="tab-monitor"):
                yield MonitorPane(self.runs, id="monitor")
        yield Footer(show_command_palette=False)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key) and not event.is_forwarded and await self._bound_in_order(event):
            return
        await super().on_event(event)

    async def _bound_in_order(self, key: events.Key) -> bool:
        """Run the binding a key reaches (an Input's backspace, a table's down, tab, f3, a pane's 'm') as it
        arrives, once the focused widget has handled the keys sent to it before; True when one ran.

        Textual hands a key to the focused widget's queue, and runs a binding only once the key has bubbled
        back up to the app, behind every key that arrived with it: "base<tab>add" typed at once put "add"
        into the base field too, "1.5<backspace>0.5" gave "1.50.5". Keys the focused widget takes itself
        (typing into an Input) still go to it, in order in its queue."""
        focused = self.focused if self.screen_stack else None  # none while starting or closing
        if focused is None or focused.check_consume_key(key.key, key.character):
            return False
        active = self.active_bindings.get(key.key)
        if active is None or not active.enabled or active.binding.priority:  # priority bindings run at once already
            return False
        await after_queued(focused)
        return await self.run_action(active.binding.action, active.node)

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

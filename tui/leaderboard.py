"""The leaderboard pane: every evaluated checkpoint of the results store in a table that sorts (key
`s`, or a click on a header) and filters (key `/`), the lineage of the highlighted checkpoint, and two
marked checkpoints (key `m`) compared task by task with the significance of each difference.

The store is read in a worker thread (tui/board.py), comparisons too (tui/comparison.py); scores,
metrics and tests all come from evals.
"""

from __future__ import annotations

import os
import sqlite3

from rich import box
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import ContentSwitcher, DataTable, Input, Label, Static

from evals.report.leaderboard import short_path, sort_rows
from evals.scoring.store import default_path
from surgery.errors import SurgeryError
from tui.board import Board, Entry, load_board
from tui.comparison import Comparison, compare_checkpoints
from tui.key_order import after_queued

MARKS = ("A", "B")  # the first marked is A (before), the second B (after): differences are B - A


class LeaderboardPane(Widget):
    """The evals store's runs; `refresh_rows()` reads the store again (after an evaluation ends)."""

    DEFAULT_CSS = """
    LeaderboardPane { layout: vertical; height: 1fr; }
    LeaderboardPane #lb-top { dock: top; height: auto; }
    LeaderboardPane #lb-bar { height: auto; }
    LeaderboardPane #lb-filter { border: none; height: 1; width: 1fr; padding: 0 1; }
    LeaderboardPane #lb-filter:focus { background: $boost; }
    LeaderboardPane #lb-status { width: auto; max-width: 60%; height: auto; padding: 0 1; color: $text-muted; }
    LeaderboardPane #lb-note { height: auto; padding: 0 1; color: $warning; display: none; }
    LeaderboardPane #lb-table { height: 1fr; }
    LeaderboardPane #lb-detail { height: 9; border-top: solid $primary; }
    LeaderboardPane #lb-compare-title { width: 1fr; height: auto; }
    """
    # The keys that move the focus act as they arrive, in order with the keys typed after them (see
    # SurgeryApp): "/sft" typed at once goes into the filter, not "/" there and "sft" to the table's keys.
    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/", priority=True),
        Binding("enter", "filter_done", show=False, priority=True),
        Binding("s", "cycle_sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse", key_display="S"),
        Binding("m", "mark", "Mark"),
        Binding("escape", "clear", "Clear", priority=True),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, db_path: str | None = None, id: str | None = None):
        super().__init__(id=id)
        self.db_path = db_path
        self.board = Board(os.path.abspath(db_path or default_path()))
        self.sort_column = "mean"
        self.reverse = False  # against the first order: the best first (see _sorted), text A to Z
        self.filter_text = ""
        self.marks: list[str] = []  # checkpoint names, at most two
        self.comparison: Comparison | None = None
        self._loads = self._compares = 0  # a result arriving after a newer request is dropped

    def compose(self) -> ComposeResult:
        yield DataTable(id="lb-table", cursor_type="row", zebra_stripes=True)  # first to take the focus
        with Vertical(id="lb-top"):  # docked above the table
            with Horizontal(id="lb-bar"):
                yield Input(placeholder="/ filter by checkpoint or method", id="lb-filter")
                yield Label("", id="lb-status")
            yield Static("", id="lb-note")
        with ContentSwitcher(initial="lb-lineage", id="lb-detail"):
            with VerticalScroll(id="lb-lineage"):
                yield Static("", id="lb-lineage-text")
            with VerticalScroll(id="lb-compare"):  # wrapped to the width, not clipped: at 80 columns too
                yield Static("", id="lb-compare-title")
                yield Static("", id="lb-compare-table")

    def on_mount(self) -> None:
        self._reload()

    # reading the store

    def refresh_rows(self) -> None:
        """Read the store again in a worker; the table keeps its sort, filter and marks."""
        if self.is_mounted:  # else mounting reads it
            self._reload()

    def _reload(self) -> None:
        self._loads += 1
        self._say("loading ...")
        self._load(self._loads)

    @work(thread=True, group="leaderboard")
    def _load(self, request: int) -> None:
        try:
            board = load_board(self.db_path)
        except (SurgeryError, sqlite3.Error, OSError) as e:  # shown in the status line
            board = Board(self.board.path, note=str(e))
        self.app.call_from_thread(self._loaded, request, board)

    def _loaded(self, request: int, board: Board) -> None:
        if request != self._loads:
            return
        self.board = board
        self.marks = [m for m in self.marks if board.entry(m)]
        if self.sort_column not in board.columns:
            self.sort_column, self.reverse = "mean", False
        self._fill()
        if len(self.marks) == 2:
            self._compare()

    # the table

    def visible(self) -> list[Entry]:
        """The entries the filter lets through, in the sort order."""
        needle = self.filter_text.lower()
        entries = [e for e in self.board.entries
                   if needle in str(e.row.get("checkpoint", "")).lower() or needle in e.origin.made_by.lower()]
        return _sorted(entries, self.sort_column, self.reverse, self.board.lower_is_better)

    def _fill(self) -> None:
        table = self.query_one("#lb-table", DataTable)
        keep = self.highlighted()
        table.clear(columns=True)
        table.add_column(" ", key="mark", width=1)
        shown = self.visible()
        for column in self.board.columns:
            table.add_column(column + (self._arrow(shown) if column == self.sort_column else ""), key=column)
        for entry in shown:
            table.add_row(self._mark(entry.name), *(_cell(entry.row[c]) for c in self.board.columns), key=entry.name)
        names = [e.name for e in shown]
        if keep in names:
            table.move_cursor(row=names.index(keep))
        self._say()
        self._show_lineage()

    def _arrow(self, shown: list[Entry]) -> str:
        """The order of the values: ▼ high to low (or Z to A), ▲ low to high (or A to Z)."""
        numeric = any(isinstance(e.row.get(self.sort_column), (int, float)) for e in shown)
        falling = numeric and self.sort_column not in self.board.lower_is_better
        return " ▼" if falling != self.reverse else " ▲"

    def _order(self) -> str:
        """The sort in words: which end the best rows are at, for a score."""
        b, column = self.board, self.sort_column
        if column in ("checkpoint", "made_by", "limit") or not any(
                isinstance(e.row.get(column), (int, float)) for e in b.entries):
            return f"sort {column}" + (" (reversed)" if self.reverse else "")
        lower = " (lower is better)" if column in b.lower_is_better else ""
        return f"sort {column}, {'worst' if self.reverse else 'best'} first{lower}"

    def highlighted(self) -> str | None:
        """The checkpoint under the table's cursor."""
        table = self.query_one("#lb-table", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _mark(self, name: str) -> str:
        return MARKS[self.marks.index(name)] if name in self.marks else ""

    def _say(self, message: str | None = None) -> None:
        if message is None:
            b = self.board
            message = b.note or (f"{len(self.visible())}/{len(b.entries)} · {self._order()}"
                                 + (f" · {len(b.changed)} changed since evaluated" if b.changed else ""))
        self.query_one("#lb-status", Label).update(message)
        note = self.query_one("#lb-note", Static)
        note.display = bool(self.board.limits)
        note.update(f"scored with different --limit ({', '.join(self.board.limits)}; see the limit column): rows "
                    "scored on fewer documents rank by noisier scores; compare rows of the same limit")

    # keys and clicks

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """'/' is typed into the filter while it has the focus (paths hold slashes); enter leaves it."""
        if action in ("filter", "filter_done") and self.is_mounted:
            return self._filtering() == (action == "filter_done")
        return True

    def _filtering(self) -> bool:
        """The filter holds the focus (as set, not as its Focus event has yet told it: `has_focus` lags)."""
        return self.screen.focused is self.query_one("#lb-filter", Input)

    def _focus(self, selector: str) -> None:
        """At once: `Widget.focus()` waits its turn behind the keys already queued."""
        self.screen.set_focus(self.query_one(selector))

    def action_filter(self) -> None:
        self._focus("#lb-filter")

    async def action_filter_done(self) -> None:
        await self._leave_filter()

    async def _leave_filter(self) -> None:
        """To the table once the filter has taken the keys typed before (the keys after wait meanwhile:
        this runs as a priority binding) and the table shows the rows of the whole filter."""
        field = self.query_one("#lb-filter", Input)
        await after_queued(field)
        self._apply_filter(field.value)  # its Changed messages may still be on their way up
        self._focus("#lb-table")

    @on(Input.Changed, "#lb-filter")
    def _filtered(self, event: Input.Changed) -> None:
        self._apply_filter(event.input.value)  # the value now: a late message of an older one changes nothing

    def _apply_filter(self, text: str) -> None:
        if text != self.filter_text:
            self.filter_text = text
            self._fill()

    def action_cycle_sort(self) -> None:
        columns = self.board.columns
        if columns:
            at = columns.index(self.sort_column) if self.sort_column in columns else -1
            self.sort_by(columns[(at + 1) % len(columns)])

    @on(DataTable.HeaderSelected, "#lb-table")
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        column = event.column_key.value
        if column in self.board.columns:
            self.sort_by(column, reverse=not self.reverse if column == self.sort_column else False)

    def action_reverse_sort(self) -> None:
        self.sort_by(self.sort_column, reverse=not self.reverse)

    def sort_by(self, column: str, reverse: bool = False) -> None:
        self.sort_column, self.reverse = column, reverse
        self._fill()

    def action_reload(self) -> None:
        self.refresh_rows()

    async def action_clear(self) -> None:
        """Leave the filter; else drop the marks; else clear the filter."""
        if self._filtering():
            await self._leave_filter()
        elif self.marks:
            self.marks, self.comparison = [], None
            self._fill()
            self.query_one("#lb-detail", ContentSwitcher).current = "lb-lineage"
        elif self.filter_text:
            self.query_one("#lb-filter", Input).value = ""

    def action_mark(self) -> None:
        """Mark the highlighted checkpoint as A, then B; a third mark replaces the oldest."""
        name = self.highlighted()
        if name is None:
            return
        self.marks = [m for m in self.marks if m != name] if name in self.marks else (self.marks + [name])[-2:]
        table = self.query_one("#lb-table", DataTable)
        for entry in self.visible():
            table.update_cell(entry.name, "mark", self._mark(entry.name))
        if len(self.marks) == 2:
            self._compare()
        else:
            self.comparison = None
            self.query_one("#lb-detail", ContentSwitcher).current = "lb-lineage"

    # the lineage of the highlighted checkpoint

    @on(DataTable.RowHighlighted, "#lb-table")
    def _highlighted(self) -> None:
        self._show_lineage()

    def _show_lineage(self) -> None:
        name = self.highlighted()
        entry = self.board.entry(name) if name else None
        text = lineage_text(entry, self.board) if entry else self.board.note
        self.query_one("#lb-lineage-text", Static).update(Text(text))

    # comparing two checkpoints

    def _compare(self) -> None:
        self._compares += 1
        self.comparison = None
        a, b = self.marks
        self.query_one("#lb-compare-title", Static).update(f"comparing {short_path(a)} and {short_path(b)} ...")
        self.query_one("#lb-compare-table", Static).update("")
        self.query_one("#lb-detail", ContentSwitcher).current = "lb-compare"
        self._run_comparison(self._compares, self.board.path, a, b)

    @work(thread=True, group="leaderboard-compare")
    def _run_comparison(self, request: int, path: str, a: str, b: str) -> None:
        result = compare_checkpoints(path, a, b)
        self.app.call_from_thread(self._compared, request, result)

    def _compared(self, request: int, comparison: Comparison) -> None:
        if request != self._compares:
            return
        self.comparison = comparison
        lower = comparison.lower_is_better()
        title = (f"A {short_path(comparison.a)}  B {short_path(comparison.b)}: B - A as the columns show it; "
                 "the verdict names the better one" + (f" (lower is better for {', '.join(lower)})" if lower
                                                      else ""))
        self.query_one("#lb-compare-title", Static).update(Text(comparison.error or title))
        self.query_one("#lb-compare-table", Static).update(comparison_table(comparison.table()) if comparison.table()
                                                           else "")


def comparison_table(rows: list[dict]) -> Table:
    """The rows as a table that wraps its cells when the pane is narrow (80 columns) rather than run off
    its edge: numbers to 4 significant digits, which is better and the verdict in one column."""
    table = Table(box=box.SIMPLE_HEAD, expand=True, padding=(0, 1), pad_edge=False)
    interval = next(c for c in rows[0] if c.endswith("CI"))
    for column in ("task", "A", "B", "B - A", interval, "p", "verdict"):
        table.add_column(column, no_wrap=column in ("task", "A", "B", "B - A", "p"), overflow="fold",
                         min_width=len("significant") if column == "verdict" else None)
    for r in rows:
        verdict = r["verdict"] if r["better"] == "neither" else f"{r['better']} better, {r['verdict']}"
        table.add_row(r["task"], f"{r['A']:.4g}", f"{r['B']:.4g}", f"{r['B - A']:+.4g}", r[interval], _p(r["p"]),
                      verdict)
    return table


def _p(p: str | None) -> str:
    """difference_row's p-value text, to 2 significant digits: '3.05e-05' -> '3e-05'."""
    return "-" if p is None else f"{float(p):.2g}"


def lineage_text(entry: Entry, board: Board) -> str:
    """What made the checkpoint: its parents (with their mean where they were evaluated), the method
    and the spec."""
    o = entry.origin
    lines = [f"{short_path(entry.name)}  hash {entry.hash[:12]}", f"made by  {o.made_by or 'unknown (no lineage)'}"]
    if o.base:
        lines.append(f"from     {_with_mean(o.base, board)}")
    lines += [f"input    {_with_mean(p, board)}" for p in o.inputs]
    if o.resumed_from:
        lines.append(f"resumed  {short_path(o.resumed_from)}")
    if o.spec_file:
        lines.append(f"spec     {short_path(o.spec_file)}")
    if o.spec_text:
        lines += ["", o.spec_text.rstrip()]
    return "\n".join(lines)


def _with_mean(path: str, board: Board) -> str:
    parent = board.entry(path)
    return short_path(path) + (f"  (mean {_cell(parent.row['mean'])})" if parent else "  (not evaluated)")


def _sorted(entries: list[Entry], column: str, reverse: bool, lower_is_better: frozenset[str] = frozenset()
            ) -> list[Entry]:
    """The best first: evals' order for the column (numbers high to low, text A to Z), low to high where
    lower is better (a perplexity, the tax); reversed, the rows without a value stay last."""
    if not entries:
        return entries
    by_row = {id(e.row): e for e in entries}
    ordered = [by_row[id(r)] for r in sort_rows([e.row for e in entries], column)]
    if column in lower_is_better:
        present = [e for e in ordered if e.row.get(column) is not None]
        ordered = present[::-1] + [e for e in ordered if e.row.get(column) is None]
    if not reverse:
        return ordered
    present = [e for e in ordered if e.row.get(column) is not None]
    return present[::-1] + [e for e in ordered if e.row.get(column) is None]


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)

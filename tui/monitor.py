"""The run monitor: the training runs under the given folders (started from the CLI or the app), each
with its status, step of the total and last loss, and a sparkline of the highlighted run's loss.

The logs are read in a worker thread every REFRESH_S seconds, only what was appended since the last
read (tui/run_watch.py); the interface never waits on the disk.
"""

from __future__ import annotations

import math
import threading
import time
from statistics import mean

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import DataTable, Label, Sparkline, Static

from tui.run_progress import Progress, finite_losses
from tui.run_watch import RunWatch

COLUMNS = (("run", "run"), ("status", "status"), ("step", "step"), ("loss", "loss"), ("eval", "eval loss"))
SILENT_S = 600  # a running run whose log has not grown for this long is shown as silent: killed, or stuck


class MonitorPane(Widget):
    """Training runs found under `roots`, refreshed live."""

    DEFAULT_CSS = """
    MonitorPane { layout: vertical; height: 1fr; }
    MonitorPane #runs { height: 1fr; }
    MonitorPane #run-detail { height: 1; width: 1fr; padding: 0 1; }
    MonitorPane #plot { height: 4; margin: 0 1; }
    MonitorPane #loss-scale { width: auto; min-width: 6; height: 4; padding-right: 1; color: $text-muted; }
    MonitorPane #loss { height: 4; width: 1fr; }
    """
    BINDINGS = [Binding("r", "rescan", "Rescan runs")]
    REFRESH_S = 1.0

    def __init__(self, roots: list[str], id: str | None = None):
        super().__init__(id=id)
        self.roots = list(roots)
        self.refresh_s = self.REFRESH_S
        self.run_watch = RunWatch(self.roots)  # touched by the worker only
        self.runs: dict[str, Progress] = {}  # what is shown: run folder -> progress
        self.labels: dict[str, str] = {}
        self.selected: str | None = None
        self._reading = threading.Lock()

    def compose(self) -> ComposeResult:
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Label("looking for runs ...", id="run-detail")
        with Horizontal(id="plot"):
            yield Static("", id="loss-scale")  # the plot's range: the highest loss on top, the lowest below
            yield Sparkline([], id="loss", summary_function=mean)  # each bar the mean of its losses, not the worst

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self.poll()
        self.set_interval(self.refresh_s, self.poll)

    def action_rescan(self) -> None:
        self.poll(rescan=True)

    @work(thread=True, group="monitor")
    def poll(self, rescan: bool = False) -> None:
        """Read what the logs gained; skipped while the previous poll is still reading."""
        if not self._reading.acquire(blocking=False):
            return
        try:
            runs = self.run_watch.poll(rescan)
            labels = {folder: self.run_watch.label(folder) for folder in runs}
            self.app.call_from_thread(self._show, runs, labels)
        finally:
            self._reading.release()

    def _show(self, runs: dict[str, Progress], labels: dict[str, str]) -> None:
        table, now = self.query_one("#runs", DataTable), time.time()
        for gone in set(self.runs) - set(runs):
            table.remove_row(gone)
        for folder, progress in runs.items():
            cells = _cells(labels[folder], progress, now)
            if folder in self.runs:
                for (key, _), cell in zip(COLUMNS, cells):
                    table.update_cell(folder, key, cell, update_width=True)  # '0/1500 0%' grows to '1500/1500 100%'
            else:
                table.add_row(*cells, key=folder)
        self.runs, self.labels = runs, labels
        if self.selected not in runs:
            self.selected = next(iter(runs), None)
        self._show_selected()

    @on(DataTable.RowHighlighted, "#runs")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.selected = event.row_key.value
        self._show_selected()

    def _show_selected(self) -> None:
        detail, spark = self.query_one("#run-detail", Label), self.query_one("#loss", Sparkline)
        progress = self.runs.get(self.selected) if self.selected else None
        if progress is None:
            where = f"under {', '.join(self.roots)} yet" if self.roots else "watched: give the app a runs folder"
            detail.update(f"no training run {where} (a run is a folder with log.jsonl)")
            spark.data = []
            self.query_one("#loss-scale", Static).update("")
            return
        losses = finite_losses(progress)
        low = f", lowest {_number(min(losses))}" if losses else ""
        detail.update(f"{self.labels[self.selected]}: {_status(progress, time.time())}, step {_step(progress)}, "
                      f"loss {_number(progress.loss)}{low}")
        spark.data = losses
        self.query_one("#loss-scale", Static).update(f"{max(losses):.3g}\n\n\n{min(losses):.3g}" if losses else "")


def _cells(label: str, p: Progress, now: float) -> tuple[str, ...]:
    return label, _status(p, now), _step(p), _number(p.loss), _number(p.eval_loss)


def _status(p: Progress, now: float) -> str:
    if p.status == "stopped":
        return "stopped: NaN" if "non-finite" in p.reason else "stopped"
    if p.status in ("starting", "running") and p.updated is not None and now - p.updated > SILENT_S:
        return f"silent {int(now - p.updated) // 60}m"
    return p.status


def _step(p: Progress) -> str:
    if p.round is not None and not p.losses:
        return f"round {p.round}"
    return f"{p.step}/{p.total} {p.fraction:.0%}" if p.total else str(p.step)


def _number(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if math.isfinite(x) else str(x)

"""The run monitor on hand-written logs: a run is found with its last loss, appended lines show up
after a refresh (a half-written last line only once complete) and on the timer, the total of steps
comes from a checkpoint, a NaN stop and a silent run are shown, and a log rewritten by a resume is
read again."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Footer, Sparkline

from tui.log_tail import LogTail
from tui.monitor import MonitorPane

SIZE = (80, 24)


class MonitorApp(App):
    def __init__(self, roots: list[str]):
        super().__init__()
        self.roots = roots

    def compose(self) -> ComposeResult:
        yield MonitorPane(self.roots, id="monitor")
        yield Footer()


def write(path, *records, tail: str = "") -> None:
    """Append records as log lines, then `tail` (a line not finished yet)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.write(tail)


def steps(first: int, *losses: float) -> list[dict]:
    return [{"step": first + i, "loss": x, "lr": 1e-3} for i, x in enumerate(losses)]


@pytest.fixture(autouse=True)
def no_timer(monkeypatch):
    """Refreshes happen when a test asks for them."""
    monkeypatch.setattr(MonitorPane, "REFRESH_S", 3600.0)


async def refreshed(pilot, pane: MonitorPane, rescan: bool = False) -> None:
    pane.poll(rescan)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def test_a_run_shows_its_loss_and_follows_appended_lines(tmp_path):
    log = tmp_path / "runs" / "sft" / "log.jsonl"
    write(log, {"event": "start", "step": 0, "rows": [8]}, *steps(1, 3.0, 2.5, 2.0))

    async def scenario():
        async with MonitorApp([str(tmp_path / "runs")]).run_test(size=SIZE) as pilot:
            pane = pilot.app.query_one(MonitorPane)
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            run = str(log.parent)
            table = pane.query_one("#runs", DataTable)
            assert list(pane.runs) == [run]
            assert table.get_row(run)[:4] == ["sft", "running", "3", "2.0000"]
            assert pane.query_one(Sparkline).data == [3.0, 2.5, 2.0]

            write(log, *steps(4, 1.5, 1.25), tail='{"step": 6, "lo')  # the last line is half-written
            await refreshed(pilot, pane)
            assert pane.runs[run].step == 5 and pane.runs[run].loss == 1.25
            assert pane.query_one(Sparkline).data == [3.0, 2.5, 2.0, 1.5, 1.25]

            write(log, tail='ss": 1.0}\n')  # now complete
            (log.parent / "checkpoint-4" / "trainer_state").mkdir(parents=True)
            (log.parent / "checkpoint-4" / "trainer_state" / "state.json").write_text(
                json.dumps({"step": 4, "identity": {"schedule": {"total_steps": 10}}}))
            await refreshed(pilot, pane)
            assert pane.runs[run].losses[-1] == 1.0
            assert table.get_row(run)[2] == "6/10 60%"

            write(log, {"event": "end", "step": 10, "out": str(log.parent / "final")})
            await refreshed(pilot, pane)
            assert table.get_row(run)[1] == "finished"

    asyncio.run(scenario())


def test_the_step_column_widens_and_the_loss_plot_has_its_scale(tmp_path):
    """A run seen at its start ('0/1500 0%') and then at its end: the step column grows to show
    '1500/1500 100%' whole; the plot is drawn with the range of the losses it shows, top and bottom."""
    log = tmp_path / "runs" / "long" / "log.jsonl"
    write(log, {"event": "start", "step": 0, "total_steps": 1500})

    async def scenario():
        async with MonitorApp([str(tmp_path / "runs")]).run_test(size=SIZE) as pilot:
            pane = pilot.app.query_one(MonitorPane)
            await refreshed(pilot, pane)
            table = pane.query_one("#runs", DataTable)
            assert table.get_row(str(log.parent))[2] == "0/1500 0%"
            write(log, *steps(1, *[1.1 * 0.995 ** i for i in range(1500)]), {"event": "end", "step": 1500})
            await refreshed(pilot, pane)
            row = "".join(segment.text for segment in table.render_line(1))  # line 0 holds the headers
            assert "1500/1500 100%" in row, row
            losses = pane.query_one(Sparkline).data
            scale = str(pane.query_one("#loss-scale").render())
            assert scale.splitlines()[0] == f"{max(losses):.3g}" and scale.splitlines()[-1] == f"{min(losses):.3g}"

    asyncio.run(scenario())


def test_keys_pick_a_run_and_rescan_finds_new_ones(tmp_path):
    write(tmp_path / "a" / "log.jsonl", *steps(1, 4.0, 3.0))
    write(tmp_path / "b" / "log.jsonl", *steps(1, 2.0, float("nan")),
          {"event": "stopped", "step": 3, "reason": "non-finite loss or gradient", "loss": "nan"})

    async def scenario():
        async with MonitorApp([str(tmp_path)]).run_test(size=SIZE) as pilot:
            pane = pilot.app.query_one(MonitorPane)
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            pane.query_one("#runs", DataTable).focus()
            await pilot.press("down")
            assert pane.selected == str(tmp_path / "b")
            assert pane.query_one("#runs", DataTable).get_row(pane.selected)[1] == "stopped: NaN"
            assert pane.query_one(Sparkline).data == [2.0]  # the NaN is left out of the plot

            write(tmp_path / "c" / "log.jsonl", *steps(1, 1.0))
            await pilot.press("r")
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            assert str(tmp_path / "c") in pane.runs

    asyncio.run(scenario())


def test_a_log_rewritten_by_a_resume_is_read_again(tmp_path):
    log = tmp_path / "log.jsonl"
    write(log, *steps(1, 3.0, 2.0, 1.0))
    tail = LogTail(str(log))
    assert [r["step"] for r in tail.read()[0]] == [1, 2, 3]
    with open(log, "w") as f:  # a resume from checkpoint-1 keeps step 1, then logs on
        f.writelines(json.dumps(r) + "\n" for r in steps(1, 3.0) + steps(2, 9.0, 8.0, 7.0))
    records, restarted = tail.read()
    assert restarted and [r["loss"] for r in records] == [3.0, 9.0, 8.0, 7.0]
    assert tail.read() == ([], False)


def test_the_timer_refreshes_and_a_silent_run_is_flagged(tmp_path, monkeypatch):
    monkeypatch.setattr(MonitorPane, "REFRESH_S", 0.05)
    write(tmp_path / "old" / "log.jsonl", *steps(1, 2.0))
    old = time.time() - 3600
    os.utime(tmp_path / "old" / "log.jsonl", (old, old))  # an hour without a line: killed, or stuck
    log = tmp_path / "live" / "log.jsonl"
    write(log, *steps(1, 3.0))

    async def scenario():
        async with MonitorApp([str(tmp_path)]).run_test(size=SIZE) as pilot:
            pane = pilot.app.query_one(MonitorPane)
            write(log, *steps(2, 2.5))
            for _ in range(100):  # up to 5 s
                await pilot.pause(0.05)
                if pane.runs.get(str(log.parent)) and pane.runs[str(log.parent)].step == 2:
                    break
            assert pane.runs[str(log.parent)].loss == 2.5
            table = pane.query_one("#runs", DataTable)
            assert table.get_row(str(tmp_path / "old"))[1] == "silent 60m"
            assert table.get_row(str(log.parent))[1] == "running"

    asyncio.run(scenario())


def test_the_start_record_gives_the_total_of_steps():
    """Logs carry `total_steps` in their start record, so progress shows from the first step."""
    from tui.run_progress import Progress, advance

    p = advance(Progress(), [{"event": "start", "step": 0, "total_steps": 40}, {"step": 10, "loss": 2.0}])
    assert (p.step, p.total, p.fraction, p.status) == (10, 40, 0.25, "running")
    older = advance(Progress(), [{"event": "start", "step": 0}, {"step": 10, "loss": 2.0}])
    assert older.total is None and older.fraction is None

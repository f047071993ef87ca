"""The leaderboard pane on a results store filled by hand (no lm-eval run), as the evals tests fill
one: it sorts by key and by a click on a header, filters, shows the lineage of the highlighted
checkpoint, and compares two marked checkpoints with the p-value evals.analysis.significance gives."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from textual.app import App, ComposeResult
from textual.widgets import ContentSwitcher, DataTable, Footer, Static

from evals.analysis.significance import compare
from evals.scoring.checkpoints import Checkpoint
from evals.scoring.harness import Evaluated
from evals.scoring.scores import TaskScore
from evals.scoring.store import Store
from tests.tui.burst import burst, typed
from tui.leaderboard import LeaderboardPane

SIZE = (80, 24)
N = 40  # documents per task
KEY = "limit=None;fewshot=None"
# documents right of 40: means base 0.4167, sft 0.7000, dpo 0.5500, merged 0.6667
RIGHT = {"base": {"bigbench_arithmetic": 20, "bigbench_general_knowledge": 20, "world_add": 10},
         "sft": {"bigbench_arithmetic": 30, "bigbench_general_knowledge": 24, "world_add": 30},
         "dpo": {"bigbench_arithmetic": 10, "bigbench_general_knowledge": 20, "world_add": 36},
         "merged": {"bigbench_arithmetic": 28, "bigbench_general_knowledge": 24, "world_add": 28}}


def _evaluated(task: str, right: int) -> Evaluated:
    outcomes = tuple(1.0 if i < right else 0.0 for i in range(N))
    return Evaluated(TaskScore(task, "exact_match", right / N, None, N, None, outcomes), "1.0", 0)


def _lineages(tmp_path) -> dict[str, dict]:
    spec = tmp_path / "sft.yaml"
    spec.write_text("base: base\nobjective: {name: sft}\nmethod: {name: lora, r: 8}\n")
    path = lambda name: str(tmp_path / name)  # noqa: E731
    merge_spec = {"merge_method": "ties", "base_model": "base", "models": [{"model": "sft"}, {"model": "dpo"}]}
    return {"base": {},
            "sft": {"training": {"base": path("base"), "method": {"name": "lora"}, "objective": {"name": "sft"},
                                 "parent": None, "spec": str(spec)}},
            "dpo": {"training": {"base": path("sft"), "method": {"name": "lora"}, "objective": {"name": "dpo"},
                                 "parent": None, "spec": str(tmp_path / "gone.yaml")}},
            "merged": {"merge": {"surgery.method": "ties", "surgery.spec": json.dumps(merge_spec),
                                 "surgery.models": f"base={path('base')},sft={path('sft')},dpo={path('dpo')}"}}}


@pytest.fixture
def db(tmp_path, monkeypatch) -> str:
    """The store of four checkpoints named by absolute paths under the current folder (which need not exist)."""
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "evals.sqlite")
    with Store(path) as store:
        for name, lineage in _lineages(tmp_path).items():
            full = str(tmp_path / name)
            store.register(full, Checkpoint(full, f"hash-{name}"), lineage)
            store.put(full, f"hash-{name}", {}, KEY, "0.4.13", {t: _evaluated(t, r) for t, r in RIGHT[name].items()})
    return path


class BoardApp(App):
    def __init__(self, db_path: str):
        super().__init__()
        self.db_path = db_path

    def compose(self) -> ComposeResult:
        yield LeaderboardPane(self.db_path, id="leaderboard")
        yield Footer()


async def settled(pilot) -> LeaderboardPane:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    return pilot.app.query_one(LeaderboardPane)


def shown(pane: LeaderboardPane) -> list[str]:
    table = pane.query_one("#lb-table", DataTable)
    return [os.path.basename(row.key.value) for row in table.ordered_rows]


def run(db: str, scenario) -> None:
    """The scenario, given the pilot and the pane once the store is loaded, in an 80x24 terminal."""
    async def go():
        async with BoardApp(db).run_test(size=SIZE) as pilot:
            await scenario(pilot, await settled(pilot))

    asyncio.run(go())


def test_sorts_by_mean_then_by_key_and_by_header_click(db):
    async def scenario(pilot, pane):
        assert shown(pane) == ["sft", "merged", "dpo", "base"]  # mean, high to low
        assert pane.board.columns[:6] == ("checkpoint", "made_by", "mean", "tax", "forget", "merge_q")
        row = lambda name: pane.board.entry(os.path.abspath(name)).row  # noqa: E731
        assert row("dpo")["forget"] == pytest.approx(0.5)  # bigbench_arithmetic 0.75 (sft) -> 0.25
        assert row("merged")["merge_q"] == pytest.approx((0.7 / 0.75 + 0.6 / 0.6 + 0.7 / 0.9) / 3)
        table = pane.query_one("#lb-table", DataTable)
        assert table.has_focus  # keys work at once
        await pilot.press("s")  # the next column: tax, G(parent) - G(child), lower is better: the best first
        assert pane.sort_column == "tax"
        assert shown(pane) == ["sft", "merged", "dpo", "base"]  # tax -0.175, -0.15, +0.30; base has none
        await pilot.press("S")  # reversed by a key: the worst first, the row without a value still last
        assert shown(pane) == ["dpo", "merged", "sft", "base"]
        x = table.columns["checkpoint"].get_render_width(table) // 2 + table.columns["mark"].get_render_width(table)
        await pilot.click("#lb-table", offset=(x, 0))
        assert pane.sort_column == "checkpoint" and shown(pane) == ["base", "dpo", "merged", "sft"]
        await pilot.click("#lb-table", offset=(x, 0))  # again: the other way round
        assert shown(pane) == ["sft", "merged", "dpo", "base"]

    run(db, scenario)


def test_filters_by_checkpoint_or_method(db):
    async def scenario(pilot, pane):
        await pilot.press("slash", *"dpo")
        assert shown(pane) == ["dpo"]
        await pilot.press("escape")  # back to the table; the filter stays
        assert pane.query_one("#lb-table", DataTable).has_focus and shown(pane) == ["dpo"]
        await pilot.press("slash", "backspace", "backspace", "backspace", *"merge:")  # by method
        assert shown(pane) == ["merged"]
        await pilot.press("enter", "escape")  # leave the filter, then clear it
        assert pane.filter_text == "" and len(shown(pane)) == 4

    run(db, scenario)


def test_lineage_shows_the_parent_and_the_spec(db, tmp_path):
    async def scenario(pilot, pane):
        assert pane.highlighted() == str(tmp_path / "sft")
        text = str(pane.query_one("#lb-lineage-text", Static).render())
        assert "made by  lora/sft" in text
        assert "from     base  (mean 0.4167)" in text
        assert "method: {name: lora, r: 8}" in text  # the spec file's text
        await pilot.press("down")  # merged: a merge of sft and dpo over base
        text = str(pane.query_one("#lb-lineage-text", Static).render())
        assert "made by  merge:ties" in text and "input    sft" in text and "merge_method: ties" in text

    run(db, scenario)


def test_two_marked_rows_are_compared_with_their_significance(db, tmp_path):
    async def scenario(pilot, pane):
        table = pane.query_one("#lb-table", DataTable)
        await pilot.press("ctrl+end", "m", "ctrl+home", "m")  # A = base (last), B = sft (first)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        result = pane.comparison
        assert (result.a, result.b) == (str(tmp_path / "base"), str(tmp_path / "sft"))
        with Store(pane.board.path) as store:
            base, sft = store.scores("hash-base"), store.scores("hash-sft")
        for task in RIGHT["base"]:
            expected = compare(base[task].outcomes, sft[task].outcomes, sft[task].value - base[task].value)
            got = result.differences[task]
            assert got.p_value == expected.p_value and (got.low, got.high) == (expected.low, expected.high)
        row = next(r for r in result.table() if r["task"] == "bigbench_arithmetic")
        p = result.differences["bigbench_arithmetic"].p_value  # 10 wins, 0 losses: 2 / 2**10
        assert abs(p - 2 / 2**10) < 1e-12
        assert (row["A"], row["B"], row["B - A"]) == (0.5, 0.75, 0.25)
        assert row["p"] == f"{p:.3g}" and row["better"] == "B" and row["verdict"] == "significant"
        assert table.get_row(str(tmp_path / "base"))[0] == "A"
        await pilot.press("escape")  # drop the marks: the lineage is back
        assert pane.marks == [] and pane.comparison is None
        assert pane.query_one("#lb-detail", ContentSwitcher).current == "lb-lineage"

    run(db, scenario)


def test_refresh_rows_rereads_the_store(db, tmp_path):
    async def scenario(pilot, pane):
        with Store(db) as store:
            full = str(tmp_path / "late")
            store.register(full, Checkpoint(full, "hash-late"), {})
            store.put(full, "hash-late", {}, KEY, "0.4.13", {"world_add": _evaluated("world_add", 40)})
        pane.refresh_rows()
        await settled(pilot)
        assert shown(pane)[0] == "late"

    run(db, scenario)


@pytest.fixture
def perplexity_db(tmp_path, monkeypatch) -> str:
    """base (perplexity 40.2), tuned (26.8) and quick (20.0, scored with --limit 10) on world_perplexity,
    lower is better, and world_add."""
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "evals.sqlite")
    with Store(path) as store:
        for name, (right, perplexity, limit) in {"base": (10, 40.2, None), "tuned": (30, 26.8, None),
                                                 "quick": (9, 20.0, 10)}.items():
            full, n = str(tmp_path / name), limit or N
            outcomes = tuple(perplexity * (1 + 0.1 * (i % 3 - 1)) for i in range(n))  # mean: `perplexity`
            scores = {"world_perplexity": Evaluated(TaskScore("world_perplexity", "byte_perplexity", perplexity, None,
                                                              n, None, outcomes), "1.0", 0),
                      "world_add": _evaluated("world_add", right) if n == N else
                      Evaluated(TaskScore("world_add", "exact_match", right / n, None, n, None,
                                          tuple(1.0 if i < right else 0.0 for i in range(n))), "1.0", 0)}
            store.register(full, Checkpoint(full, f"hash-{name}"), {})
            store.put(full, f"hash-{name}", {}, f"limit={limit};fewshot=None", "0.4.13", scores)
    return path


def test_a_perplexity_sorts_lowest_first_and_compares_with_its_direction_stated(perplexity_db, tmp_path):
    async def scenario(pilot, pane):
        pane.sort_by("world_perplexity")
        await pilot.pause()
        assert shown(pane) == ["quick", "tuned", "base"]  # 20.0, 26.8, 40.2: the best first
        assert "best first (lower is better)" in str(pane.query_one("#lb-status").render())
        await pilot.press("S")
        assert shown(pane) == ["base", "tuned", "quick"]

        await pilot.press("ctrl+home", "m", "down", "m")  # A = base, B = tuned
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        row = next(r for r in pane.comparison.table() if r["task"] == "world_perplexity")
        assert row["A"] == 40.2 and row["B"] == 26.8
        assert row["B - A"] == pytest.approx(26.8 - 40.2) and row["better"] == "B"  # the sign follows the label
        low, high = (float(x) for x in row["95% CI"].strip("[]").split(", "))
        assert low <= row["B - A"] <= high < 0
        title = str(pane.query_one("#lb-compare-title").render())
        assert "B - A" in title and "lower is better for world_perplexity" in title
        compared = pane.query_one("#lb-compare-table", Static)
        lines = [compared.render_line(y).text.rstrip() for y in range(compared.size.height)]
        assert all(len(line) <= SIZE[0] for line in lines)
        text = "\n".join(lines)
        for word in ("world_perplexity", "world_add", "verdict", "significant"):  # every column shown, wrapped
            assert word in text, text

    run(perplexity_db, scenario)


def test_rows_scored_with_different_limits_say_so(perplexity_db):
    async def scenario(pilot, pane):
        assert "limit" in pane.board.columns
        assert {os.path.basename(e.name): e.row["limit"] for e in pane.board.entries} == {
            "base": "all", "tuned": "all", "quick": "10"}
        note = pane.query_one("#lb-note", Static)
        assert note.display and "different --limit (10, all" in str(note.render())

    run(perplexity_db, scenario)


def test_keys_arriving_together_filter_then_act_on_the_table(db):
    """'/' then a filter typed at once all go into the filter (an 's' among them sorts nothing); escape
    then 'm' at once leave the filter and mark the row."""
    async def scenario(pilot, pane):
        await burst(pilot, "slash", *typed("sft"))
        await pilot.pause()
        assert pane.filter_text == "sft" and pane.sort_column == "mean" and shown(pane) == ["sft"]
        await burst(pilot, "escape", "m")
        await pilot.pause()
        assert pane.marks == [os.path.abspath("sft")]
        await burst(pilot, "slash", *typed("/dp"), "enter", "m")  # a path's slash goes into the filter
        await pilot.pause()
        assert pane.filter_text == "/dp" and shown(pane) == ["dpo"]
        assert pane.marks == [os.path.abspath("sft"), os.path.abspath("dpo")]

    run(db, scenario)


@pytest.mark.parametrize("leave", ["enter", "escape"])
def test_keys_after_leaving_the_filter_wait_for_the_filter_to_take_its_keys(db, monkeypatch, leave):
    """On a loaded machine the filter can still hold typed keys when enter (or escape) and 'm' arrive: the
    mark lands on the row the whole filter leaves, not on the row highlighted before the last keys."""
    from textual.widgets import Input

    handle = Input._on_key

    async def slow(self, event):  # each key handled late, as when other work holds the CPU
        await asyncio.sleep(0.05)
        await handle(self, event)

    monkeypatch.setattr(Input, "_on_key", slow)

    async def scenario(pilot, pane):
        await burst(pilot, "slash", *typed("sft"), "escape", "m")
        await pilot.pause()
        assert pane.marks == [os.path.abspath("sft")]
        await burst(pilot, "slash", "backspace", "backspace", "backspace", *typed("dpo"), leave, "m")
        await pilot.pause()
        assert pane.filter_text == "dpo" and shown(pane) == ["dpo"]
        assert pane.marks == [os.path.abspath("sft"), os.path.abspath("dpo")]

    run(db, scenario)

"""The merge designer driven by keys and clicks on the tiny Llama family: the spec it builds, the CLI's
own messages under the field at fault, the saved YAML as `surgery merge` reads it, the per-layer view of
a gradient, a merge run to the end, one cancelled midway, the picker, and the evaluation's hand-off to
the leaderboard."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from click.testing import CliRunner
from textual.widgets import Select
from textual.widgets.select import InvalidSelectValueError

from evals.scoring import suites
from surgery.cli import main
from surgery.io.reader import ModelFolder
from surgery.merge.plan import plan_merge
from surgery.merge.spec import load_spec, parse_spec
from tests.conftest import models_folder
from tests.surgery.test_output_lock import held_elsewhere
from tests.tui.burst import burst, typed
from tui.app import SurgeryApp
from tui.designer import CHECK_AFTER_S, Designer, default_output, inside
from tui.leaderboard import LeaderboardPane
from tui.picker import ModelPicker

pytestmark = pytest.mark.integration  # the longest file of the suite: the app driven through whole merges
SIZE = (80, 24)


@pytest.fixture
def models(llama, tmp_path) -> str:
    """A models folder holding base, math, code, chat (and the merges/*.yaml names)."""
    return os.path.join(models_folder(llama, tmp_path / "work"), "models")


def designer_app(models: str, tmp_path) -> SurgeryApp:
    return SurgeryApp(models_dir=models, db=str(tmp_path / "evals.sqlite"), merges_dir=str(tmp_path / "merges"))


async def until(pilot, done, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.02)):
        if done():
            return
        await pilot.pause(0.02)
    raise AssertionError("timed out")


async def settle(app) -> None:
    """Let the workers (plan checks, once typing pauses; merges) finish and their results reach the widgets."""
    await asyncio.sleep(CHECK_AFTER_S + 0.05)
    await app.workers.wait_for_complete()
    await asyncio.sleep(0.05)
    await app.workers.wait_for_complete()


async def click(pilot, selector: str) -> None:
    """Click a field until it has the focus: a click computed while the form is still laid out again
    (a message shown or hidden above the field) lands beside it."""
    field = pilot.app.query_one(selector)
    for _ in range(5):
        field.scroll_visible(animate=False)  # at 80x24 the form scrolls
        await pilot.pause()
        await pilot.click(selector)
        if field.has_focus:
            return
    raise AssertionError(f"{selector} never took the focus")


async def type_into(pilot, selector: str, text: str) -> None:
    await click(pilot, selector)
    await pilot.press("ctrl+a", "ctrl+k", *text)  # the field's start, then delete to its end


async def fill_ties(pilot, density: str = "0.5", by_keys: bool = False) -> Designer:
    """base; math at weight 0.5 and density 0.5; code at weight 0.5 and `density`: typed after clicks,
    or set as values (each posts the Changed message typing would) where the typing is not the test."""
    if by_keys:
        await type_into(pilot, "#f-base_model", "base")
        await type_into(pilot, "#f-models-0-model", "math")
        await pilot.press("tab", *"0.5", "tab", *"0.5")  # the weight (selected on focus: typing replaces it)
        await type_into(pilot, "#f-models-1-model", "code")
        await pilot.press("tab", *"0.5", "tab", *density)
    else:
        values = {"base_model": "base", "models-0-model": "math", "models-0-parameters-weight": "0.5",
                  "models-0-parameters-density": "0.5", "models-1-model": "code",
                  "models-1-parameters-weight": "0.5", "models-1-parameters-density": density}
        for key, value in values.items():
            pilot.app.query_one(f"#f-{key}").value = value
            await pilot.pause()
    await settle(pilot.app)
    return pilot.app.query_one(Designer)


def run(coro) -> None:
    asyncio.run(coro)


KEYS = (*typed("base"), "tab", *typed("add"), "tab", *typed("0.5"), "tab", *typed("1.5"))
MORE_KEYS = ("backspace", "backspace", "backspace", *typed("0.5"), "f3", *typed("chat"), "tab", *typed("0.25"),
             "left", "left", "backspace", *typed("3"), "shift+tab", "shift+tab", *typed("x"))


async def texts_after(models, tmp_path, together: bool) -> dict[str, str]:
    """The form's texts after KEYS then MORE_KEYS, each sent at once or one at a time (Pilot.press waits for
    the app to idle after each key: the order they were typed in, whatever it does)."""
    app = designer_app(models, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.focused is not None and app.focused.id == "f-base_model")
        for keys in (KEYS, MORE_KEYS):
            await (burst(pilot, *keys) if together else pilot.press(*keys))
            await settle(app)
        return {k: v for k, v in app.query_one(Designer).texts.items() if v}


def test_keys_arriving_together_land_in_their_own_fields(models, tmp_path):
    """`base<tab>add<tab>0.5<tab>1.5` at full speed: each text in the field the tabs lead to; then
    backspaces, f3, a model name, cursor moves and shift+tabs typed at once act where and when they were
    typed: the form ends as the same keys typed one at a time leave it."""
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.focused is not None and app.focused.id == "f-base_model")
            await burst(pilot, *KEYS)
            await settle(app)
            values = {f: app.query_one(f"#f-{f}").value for f in
                      ("base_model", "models-0-model", "models-0-parameters-weight", "models-0-parameters-density")}
            assert values == {"base_model": "base", "models-0-model": "add", "models-0-parameters-weight": "0.5",
                              "models-0-parameters-density": "1.5"}
            assert app.query_one(Designer).error.field == "models.0.parameters.density"  # the message follows
    run(go())
    together = asyncio.run(texts_after(models, tmp_path / "together", together=True))
    one_by_one = asyncio.run(texts_after(models, tmp_path / "one_by_one", together=False))
    assert together == one_by_one
    assert together["models.0.parameters.density"] == "0.5" and together["models.2.model"] == "chat"


def test_builds_a_spec_by_keys_and_clicks(models, tmp_path):
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot, by_keys=True)
            await click(pilot, "#f-parameters-lambda")
            await pilot.press(*"0.9")
            await settle(app)
            assert designer.data == {
                "merge_method": "ties", "base_model": "base",
                "models": [{"model": "math", "parameters": {"weight": 0.5, "density": 0.5}},
                           {"model": "code", "parameters": {"weight": 0.5, "density": 0.5}}],
                "parameters": {"lambda": 0.9}, "dtype": "float32"}
            assert designer.error is None and designer.plan is not None and len(designer.plan.jobs) == 21
            assert "lambda: 0.9" in str(app.query_one("#yaml").render())

            await pilot.click("#method")             # another method keeps what still applies
            await pilot.press("up", "enter")         # the one before ties: task_arithmetic
            await settle(app)
            assert designer.method == "task_arithmetic"
            assert designer.spec_file == str(tmp_path / "merges" / "designed-task_arithmetic.yaml")
            assert designer.data["models"][0] == {"model": "math", "parameters": {"weight": 0.5}}
            await click(pilot, "#f-models-1-model")
            await pilot.press("f4")                  # drops the focused row
            await pilot.press("f3")                  # a new, empty row
            await settle(app)
            assert [m["model"] for m in designer.data["models"]] == ["math", ""]
            assert app.focused.id == "f-models-1-model"
    run(go())


def test_true_false_and_one_of_parameters_are_drop_downs(models, tmp_path):
    """TIES' `normalize` (true/false) and `consensus` (sum/count) are chosen, not typed; the blank entry
    leaves the method's default out of the spec, as an empty text field does."""
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            normalize, consensus = app.query_one("#f-parameters-normalize"), app.query_one("#f-parameters-consensus")
            assert isinstance(normalize, Select) and isinstance(consensus, Select)
            assert "parameters" not in designer.data  # nothing chosen: the defaults
            consensus.scroll_visible(animate=False)
            consensus.focus()
            await pilot.pause()
            await pilot.press("enter", "down", "down", "enter")  # open, then blank, sum, count: count
            normalize.value = "false"  # posts Changed as a choice by keys would
            await settle(app)
            assert designer.data["parameters"] == {"normalize": False, "consensus": "count"}
            assert designer.error is None and designer.plan is not None
            normalize.clear()
            await settle(app)
            assert designer.data["parameters"] == {"consensus": "count"}
    run(go())


def test_the_suites_offered_are_the_declared_ones(models, tmp_path, monkeypatch):
    """The eval suite drop-down lists the suites of evals.scoring.suites, read when the designer is built:
    a suite declared there (here one added for the test) is offered, a name not declared is not."""
    declared = (*suites.DECLARED, suites.Suite("extra", "a suite declared for this test", ("world_add",)))
    monkeypatch.setattr(suites, "BY_NAME", {s.name: s for s in declared})

    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE):
            choice = app.query_one("#suite", Select)
            assert choice.value == "world"
            for name in (*suites.SUITES, "extra"):
                choice.value = name
                assert choice.value == name
            with pytest.raises(InvalidSelectValueError):
                choice.value = "wrold"
    run(go())


def test_a_bad_value_shows_the_cli_message_under_its_field(models, tmp_path):
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            await type_into(pilot, "#f-models-1-parameters-density", "1.5")
            await settle(app)
            shown = str(app.query_one("#e-models-1").render())
            assert shown == "models.1.parameters.density: must be in (0, 1] (got 1.5)"
            assert app.query_one("#f-models-1-parameters-density").has_class("invalid")
            await pilot.press("f8")
            return designer.spec_file
    spec_file = asyncio.run(go())
    cli = CliRunner().invoke(main, ["merge", spec_file, str(tmp_path / "out"), "--dry-run", "--models-dir", models])
    assert cli.exit_code == 2
    assert cli.output.strip() == f"error: {spec_file}: models.1.parameters.density: must be in (0, 1] (got 1.5)"


def test_a_missing_model_is_located_by_the_planner(models, tmp_path):
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            await type_into(pilot, "#f-models-0-model", "nowhere")
            await settle(app)
            assert designer.error.field == "models.0.model"
            shown = str(app.query_one("#e-models-0").render())
            assert shown.startswith("models.0.model: model folder 'nowhere' does not exist"), shown
            assert app.query_one("#f-models-0-model").has_class("invalid")
    run(go())


def test_saved_yaml_is_the_spec_built_and_plans(models, tmp_path):
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot, density="0.2, 1")
            await pilot.press("ctrl+s")
            return designer.data, designer.spec_file
    data, spec_file = asyncio.run(go())
    assert spec_file == str(tmp_path / "merges" / "designed-ties.yaml")
    spec = load_spec(spec_file)
    assert spec == parse_spec(data, spec_file)
    assert spec.models[1].parameters["density"] == [0.2, 1]
    assert len(plan_merge(spec, spec_file, models_dir=models).jobs) == 21


def test_saving_over_another_spec_asks_for_a_second_f8(models, tmp_path):
    """A spec file that holds something else is replaced only on a second f8; the first says so."""
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            await pilot.press("f8")
            first = open(designer.spec_file).read()
            app.query_one("#f-models-1-parameters-density").value = "0.3"
            await settle(app)
            await pilot.press("f8")
            assert open(designer.spec_file).read() == first
            assert "press f8 again to replace it" in str(app.query_one("#status").render())
            await pilot.press("f8")
            assert load_spec(designer.spec_file).models[1].parameters["density"] == 0.3
            assert sorted(os.listdir(tmp_path / "merges")) == ["designed-ties.yaml"]  # no temporary left
    run(go())


def test_a_gradient_is_shown_at_every_layer(models, tmp_path):
    """The tiny Llama has 2 layers: t = 0 and 1, so [0.2, 0.6, 1] gives 0.2 then 1."""
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await fill_ties(pilot, density="0.2, 0.6, 1")
            await click(pilot, "#f-models-1-parameters-density")  # the help line follows the focus
            field = app.query_one("#f-models-1-parameters-density")
            assert field.content_region.width > len("0.2, 0.6, 1")  # the whole gradient shows in its field
            assert "density = 0.2, 0.6, 1: by layer (2 layers): 0.2 1" in str(app.query_one("#help").render())
    run(go())


def test_runs_a_merge_to_completion(models, tmp_path):
    out = tmp_path / "merged"

    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            app.query_one("#out").value = str(out)  # a long path: typed, it would only slow the test
            await pilot.press("f6")
            await settle(app)
            assert designer.state == "merged", app.query_one("#status").render()
            assert designer.output == str(out)
            bar = app.query_one("#progress")
            assert bar.progress == bar.total == designer.meter.total
            assert str(app.query_one("#rate").render()).startswith("tensor 21/21")
    run(go())
    assert os.path.isfile(out / "config.json")
    assert [f for f in os.listdir(out) if f.endswith(".safetensors")]
    assert len(ModelFolder(str(out)).tensors) == 21


def test_a_merge_into_an_output_another_process_is_writing_is_refused(models, tmp_path):
    """The designer's merge takes the same output lock as `surgery merge`: with another process holding
    it, the merge fails naming that process, and writes nothing."""
    out = tmp_path / "taken"

    async def go(pid: int):
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            app.query_one("#out").value = str(out)
            await pilot.press("f6")
            await settle(app)
            assert designer.state == "failed", app.query_one("#status").render()
            status = str(app.query_one("#status").render())
            assert "being written by another process" in status and f"pid {pid}" in status, status

    with held_elsewhere(out) as pid:
        run(go(pid))
        assert not out.exists()
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".taken.partial")]


def test_cancel_midway_leaves_no_output(models, tmp_path):
    """Tiny blocks make many progress calls; the first one waits until the cancel key is pressed."""
    out = tmp_path / "cancelled"

    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            app.query_one("#out").value = str(out)  # a long path: typed, it would only slow the test
            designer.block_bytes = 1024
            reached, resume, record = threading.Event(), threading.Event(), designer.record_progress

            def held(name: str, nbytes: int) -> None:
                record(name, nbytes)
                reached.set()
                resume.wait(10)

            designer.record_progress = held
            await pilot.press("f6")
            await until(pilot, reached.is_set)
            assert designer.state == "running"
            await pilot.press("escape")
            assert designer.cancel_event.is_set()
            resume.set()
            await settle(app)
            assert designer.state == "cancelled"
            assert "cancelled" in str(app.query_one("#status").render())
            assert app.query_one("#progress").progress == 0  # not left part-way, as if still going
            assert str(app.query_one("#rate").render()).startswith("cancelled at tensor 1/21")
    run(go())
    assert not out.exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".cancelled")]  # no partial folder either


def test_the_picker_fills_the_focused_model(models, tmp_path):
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.focused is not None and app.focused.id == "f-base_model")  # the first focus
            await click(pilot, "#f-models-0-model")
            await pilot.press("f2")  # the tree loads in a worker that lives as long as the tree: no settle()
            await until(pilot, lambda: app.screen.query("#tree"))
            tree = app.screen.query_one("#tree")
            await until(pilot, lambda: len(tree.root.children) >= 4)
            for _ in range(10):  # down the folders, alphabetical: add, base, chat, code, ...
                if tree.cursor_node is not None and tree.cursor_node.data.path.name == "code":
                    break
                await pilot.press("down")
            await pilot.press("enter")
            await until(pilot, lambda: not isinstance(app.screen, ModelPicker))
            await pilot.pause()
            assert app.query_one("#f-models-0-model").value == "code"
            assert app.query_one(Designer).texts["models.0.model"] == "code"
    run(go())


def test_evaluate_scores_the_merge_and_refreshes_the_leaderboard(models, tmp_path, monkeypatch):
    """The scoring itself is evals' (tested there); here: what it is asked, the progress task by task
    while it runs, and the hand-off."""
    calls, refreshed, reached, resume = [], [], threading.Event(), threading.Event()

    def score(batch, settings, store, force=False, say=print, on_task=None):
        paths, tasks = [c.path for c in batch.checkpoints], list(batch.tasks)
        calls.append((paths, tasks, settings.limit, force))
        say("1 task(s) to run")
        on_task(tasks[0], 0, len(tasks))
        on_task(tasks[1], 1, len(tasks))
        reached.set()
        resume.wait(10)
        return {paths[0]: {}}

    monkeypatch.setattr("evals.scoring.run.score", score)
    monkeypatch.setattr(LeaderboardPane, "refresh_rows", lambda self: refreshed.append(True))

    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            app.query_one("#out").value = str(tmp_path / "merged")
            await pilot.press("f6")
            await settle(app)
            await type_into(pilot, "#limit", "3")
            await pilot.press("f7")
            await until(pilot, reached.is_set)
            await pilot.pause()
            bar = app.query_one("#progress")
            assert (bar.progress, bar.total) == (1, 5)
            assert str(app.query_one("#rate").render()).startswith("task 2/5: world_reverse")
            resume.set()
            await settle(app)
            await pilot.pause()
            assert designer.state == "evaluated"
            assert bar.progress == bar.total and str(app.query_one("#rate").render()).startswith("scored in")
    run(go())
    assert calls == [([str(tmp_path / "merged")], ["world_add", "world_reverse", "world_capital",
                                                    "world_capital_choice", "world_perplexity"], 3, False)]
    assert refreshed


def test_every_method_is_offered_with_its_own_parameters(models, tmp_path):
    """The method list is the registry: NuSLERP (two models, an optional base) keeps the weights and
    offers its switches as drop-downs; Karcher takes counts and merges the base as one more input."""
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            method = app.query_one("#method")
            method.value = "nuslerp"
            await settle(app)
            flatten = app.query_one("#f-parameters-nuslerp_flatten")
            assert isinstance(flatten, Select)
            flatten.value = "false"
            await settle(app)
            assert designer.data["models"][0] == {"model": "math", "parameters": {"weight": 0.5}}
            assert designer.data["parameters"] == {"nuslerp_flatten": False}
            assert designer.error is None and len(designer.plan.jobs[0].models) == 2
            method.value = "karcher"
            await settle(app)
            app.query_one("#f-parameters-max_iter").value = "5"
            await settle(app)
            assert designer.data["parameters"] == {"max_iter": 5}
            assert designer.error is None and len(designer.plan.jobs[0].models) == 3  # math, code, base
    run(go())


def test_merge_into_defaults_outside_the_models_folder_and_replace_reads_without_colour(models, tmp_path):
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app)
            out = app.query_one("#out").value
            assert out == str(tmp_path / "merges" / "merged") and not inside(out, models)
            replace = app.query_one("#replace")
            assert str(replace.render()).startswith("▐ ▌")
            replace.toggle()
            await pilot.pause()
            assert str(replace.render()).startswith("▐X▌")
    run(go())
    assert default_output(".", "merges") == os.path.join(".surgery", "merged")  # the models folder is here


def test_an_empty_model_row_is_said_under_that_row(models, tmp_path):
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            app.query_one("#f-models-1-model").value = ""
            await settle(app)
            assert designer.error.field == "models.1.model"
            assert str(app.query_one("#e-models-1").render()).startswith("models.1.model: no model yet")
            assert not app.query_one("#e-spec").display  # nothing at the foot of the form
    run(go())


def test_a_truncated_model_is_refused_under_its_row_and_before_scoring(models, tmp_path, monkeypatch):
    """The reader's own located message ('truncated: tensor ... ends at byte N'), under the row of the
    model, before a merge; and for F7, before lm-eval is reached."""
    from tests.surgery.test_io import WEIGHTS, copy_model

    broken = copy_model(os.path.join(models, "code"), tmp_path / "broken")
    with open(os.path.join(broken, WEIGHTS), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(broken, WEIGHTS)) - 100)

    def no_lm_eval(*args, **kwargs):
        raise AssertionError("lm-eval was reached")

    monkeypatch.setattr("evals.scoring.harness.evaluate_path", no_lm_eval)
    monkeypatch.setattr("evals.scoring.harness.evaluate_each", no_lm_eval, raising=False)

    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            app.query_one("#f-models-1-model").value = broken
            await settle(app)
            shown = str(app.query_one("#e-models-1").render())
            assert "truncated: tensor" in shown and broken in shown, shown
            assert app.query_one("#f-models-1-model").has_class("invalid")
            await pilot.press("f6")
            await settle(app)
            assert designer.state == "idle" and "fix the spec first" in str(app.query_one("#status").render())

            app.query_one("#out").value = broken  # as if a merge had written it so
            await pilot.press("f7")
            await settle(app)
            assert designer.state == "failed"
            status = str(app.query_one("#status").render())
            assert status.startswith("error: ") and "truncated: tensor" in status, status
    run(go())
    assert not os.path.exists(tmp_path / "evals.sqlite")  # no store made for a checkpoint that cannot be read


def test_the_conflict_map_says_when_the_models_changed(models, tmp_path):
    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            await pilot.press("f3")
            app.query_one("#f-models-2-model").value = "chat"
            await settle(app)
            await pilot.press("f5")
            await settle(app)
            assert "sign conflicts" in str(app.query_one("#map").render())
            app.query_one("#f-models-2-model").focus()
            await pilot.press("f4")  # drop chat: the map drawn for three models no longer holds
            await settle(app)
            assert [m["model"] for m in designer.data["models"]] == ["math", "code"]
            assert str(app.query_one("#map").render()).startswith("the models changed since the last comparison")
            await pilot.press("f5")
            await settle(app)
            assert "sign conflicts" in str(app.query_one("#map").render())
    run(go())


def test_quitting_cancels_a_running_merge(models, tmp_path):
    out = tmp_path / "quit"

    async def go():
        app = designer_app(models, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            designer = await fill_ties(pilot)
            app.query_one("#out").value = str(out)
            designer.block_bytes = 1024
            reached, resume, record = threading.Event(), threading.Event(), designer.record_progress

            def held(name: str, nbytes: int) -> None:
                record(name, nbytes)
                reached.set()
                resume.wait(10)

            designer.record_progress = held
            await pilot.press("f6")
            await until(pilot, reached.is_set)
            await pilot.press("ctrl+q")
            assert designer.cancel_event.is_set()
        resume.set()
        await asyncio.to_thread(app.wait_for_cleanup)  # as `surgery tui` does once the app has closed
        assert designer.merge_ended.is_set()
    run(go())
    assert not out.exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".quit")]


def test_an_include_path_adds_its_tasks_as_a_suite(models, tmp_path):
    """`surgery tui --include-path DIR`: DIR's tasks are one more entry of the suite drop-down, scored with
    DIR in lm-eval's task index; without it the entry is not offered."""
    from evals.scoring.suites import user_tasks
    from tui.designer import USER_SUITE

    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "a.yaml").write_text("task: my_first\n")
    (mine / "sub" / "b.yaml").write_text("task: 'my_second'  # a comment\n")
    assert user_tasks(str(mine)) == ("my_first", "my_second")

    async def go(include_path):
        app = SurgeryApp(models_dir=models, db=str(tmp_path / "evals.sqlite"), merges_dir=str(tmp_path / "merges"),
                         include_path=include_path)
        async with app.run_test(size=SIZE):
            choice = app.query_one("#suite", Select)
            if include_path:
                choice.value = USER_SUITE
                assert choice.value == USER_SUITE and app.query_one("#designer").include_path == include_path
            else:
                with pytest.raises(InvalidSelectValueError):
                    choice.value = USER_SUITE
    run(go(str(mine)))
    run(go(None))

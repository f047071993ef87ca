"""The app shell: three tabs reached by key and by click, the designer's keys in the footer at 80x24,
`surgery tui` on the command line, and two snapshots of the designer (its first screen, and a value
out of bounds with the message under it)."""

from __future__ import annotations

import asyncio
import os

import pytest
from click.testing import CliRunner

from surgery.cli import main
from tui.app import SurgeryApp
from tui.designer import CHECK_AFTER_S

SIZE = (80, 24)


def shown_keys(app) -> set[str]:
    return {key for key, b in app.active_bindings.items() if b.binding.show and b.enabled}


@pytest.mark.integration
def test_tabs_by_key_and_by_click(tmp_path):
    async def go():
        app = SurgeryApp(models_dir=str(tmp_path), db=str(tmp_path / "evals.sqlite"), runs=[str(tmp_path)])
        async with app.run_test(size=SIZE) as pilot:
            for _ in range(100):
                if app.focused is not None:
                    break
                await pilot.pause(0.02)
            tabs = app.query_one("#tabs")
            assert tabs.active == "tab-designer" and app.focused.id == "f-base_model"
            assert {"f2", "f3", "f4", "f5", "f6", "f7", "f8", "ctrl+t", "ctrl+q"} <= shown_keys(app)
            assert "escape" not in shown_keys(app)  # cancel is offered only while a merge runs
            await pilot.press("ctrl+t")
            await pilot.pause()
            assert tabs.active == "tab-leaderboard" and app.query_one("#leaderboard") in app.focused.ancestors
            await pilot.press("ctrl+t", "ctrl+t")
            await pilot.pause()
            assert tabs.active == "tab-designer" and app.focused.id == "f-base_model"  # where it was left
            await pilot.click("#--content-tab-tab-monitor")
            await pilot.pause()
            assert tabs.active == "tab-monitor"
    asyncio.run(go())


def test_surgery_tui_is_a_command():
    result = CliRunner().invoke(main, ["tui", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--models-dir", "--db", "--runs", "--merges-dir"):
        assert option in result.output


@pytest.fixture
def relative_models(llama, tmp_path, monkeypatch) -> str:
    """`models/` in the current folder, so the snapshots show no temporary path."""
    from tests.conftest import models_folder

    monkeypatch.chdir(models_folder(llama, tmp_path / "work"))
    return "models"


async def checked(pilot) -> None:
    """Once typing has paused long enough for the form to be checked, and the check has come back."""
    await pilot.pause(CHECK_AFTER_S + 0.1)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.mark.integration
def test_snapshot_first_screen(snap_compare, relative_models):
    app = SurgeryApp(models_dir=relative_models, db=os.path.join("db", "evals.sqlite"))
    assert snap_compare(app, terminal_size=SIZE, run_before=checked)


@pytest.mark.integration
def test_snapshot_value_out_of_bounds(snap_compare, relative_models):
    app = SurgeryApp(models_dir=relative_models, db=os.path.join("db", "evals.sqlite"))

    async def fill(pilot):
        await pilot.pause()
        for key, value in {"base_model": "base", "models-0-model": "math", "models-1-model": "code",
                           "models-1-parameters-density": "1.5"}.items():
            app.query_one(f"#f-{key}").value = value
        await checked(pilot)
        app.query_one("#f-models-1-parameters-density").focus()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=fill)

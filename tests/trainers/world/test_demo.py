"""The trained demo end to end at toy scale: base and experts trained through the shared loop, every
example merge run on them, every model scored on every task; a second run reuses the trained models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from trainers.world.demo import EXPERTS, run_world_demo
from trainers.world.tasks import TASKS

MERGES = Path(__file__).resolve().parents[3] / "merges"


@pytest.fixture
def two_specs(tmp_path) -> str:
    folder = tmp_path / "specs"
    folder.mkdir()
    for name in ("ties-example.yaml", "slerp.yaml"):
        shutil.copy(MERGES / name, folder / name)
    return str(folder)


@pytest.mark.integration
def test_world_demo_trains_merges_and_scores(tmp_path, two_specs):
    lines: list[str] = []
    table = run_world_demo(str(tmp_path / "demo"), two_specs, base_steps=3, expert_steps=2, echo=lines.append,
                           rows_per_task=2)
    assert list(table) == ["base", *EXPERTS, "slerp", "ties-example"]
    assert all(set(scores) == set(TASKS) and all(0 <= v <= 1 for v in scores.values()) for scores in table.values())
    models = tmp_path / "demo" / "models"
    lineage = json.loads((models / "add" / "lineage.json").read_text())
    assert lineage["base"] == str(models / "base") and lineage["steps"] == 2
    assert json.loads((tmp_path / "demo" / "scores.json").read_text()) == table
    assert "ties-example" in lines[-1] and "exact match" in lines[-1]
    # a second run trains nothing: the finished models are kept
    before = {n: os.path.getmtime(models / n / "lineage.json") for n in ("base", *EXPERTS)}
    lines.clear()
    run_world_demo(str(tmp_path / "demo"), two_specs, base_steps=3, expert_steps=2, echo=lines.append, rows_per_task=1)
    assert not any(line.startswith("training") for line in lines)
    assert before == {n: os.path.getmtime(models / n / "lineage.json") for n in ("base", *EXPERTS)}

"""The trained demo end to end at toy scale: base and experts trained through the shared loop, every
example merge run on them, every model scored on every task; a second run reuses the trained models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from trainers.world.demo import EXPERTS, run_world_demo
from trainers.world.demo_zoo import Recipe
from trainers.world.tasks import TASKS

MERGES = Path(__file__).resolve().parents[3] / "merges"


@pytest.fixture
def two_specs(tmp_path) -> str:
    folder = tmp_path / "specs"
    folder.mkdir()
    for name in ("ties-example.yaml", "slerp.yaml"):
        shutil.copy(MERGES / name, folder / name)
    return str(folder)


TINY = Recipe(base_steps=3, expert_steps=(("add", 2), ("reverse", 2), ("refuse", 2)), train_rows=40)


@pytest.mark.integration
def test_world_demo_trains_merges_and_scores(tmp_path, two_specs):
    lines: list[str] = []
    table = run_world_demo(str(tmp_path / "demo"), two_specs, TINY, echo=lines.append, rows_per_task=2)
    assert list(table) == ["base", *EXPERTS, "slerp", "ties-example"]
    assert all(set(scores) == set(TASKS) and all(0 <= v <= 1 for v in scores.values()) for scores in table.values())
    models = tmp_path / "demo" / "models"
    lineage = json.loads((models / "add" / "lineage.json").read_text())
    assert lineage["base"] == str(models / "base") and lineage["steps"] == 2
    assert json.loads((tmp_path / "demo" / "scores.json").read_text()) == table
    assert "ties-example" in lines[-2] and "norm acc" in lines[-2]
    assert "surgery tui --models-dir" in lines[-1] and "surgery merge my.yaml" in lines[-1]
    with open(tmp_path / "demo" / "sign-conflicts.png", "rb") as f:
        assert f.read(4) == b"\x89PNG"
    # a second run builds nothing: every stage's inputs are unchanged
    before = {n: os.path.getmtime(models / n / "lineage.json") for n in ("base", *EXPERTS)}
    lines.clear()
    run_world_demo(str(tmp_path / "demo"), two_specs, TINY, echo=lines.append, rows_per_task=2)
    assert all(line.startswith("reused ") for line in lines[:-2]) and len(lines) == 2 + 1 + 3 + 2 + 6 + 1 + 2
    assert before == {n: os.path.getmtime(models / n / "lineage.json") for n in ("base", *EXPERTS)}


@pytest.mark.integration
def test_world_demo_rebuilds_a_damaged_model_and_resumes_a_stopped_stage(tmp_path, two_specs, monkeypatch):
    from trainers.world import demo_zoo

    folder = str(tmp_path / "demo")
    run_world_demo(folder, two_specs, TINY, echo=lambda _: None, rows_per_task=1)
    weights = next((tmp_path / "demo" / "models" / "reverse").resolve().glob("*.safetensors"))
    os.truncate(weights, 1000)
    lines: list[str] = []
    run_world_demo(folder, two_specs, TINY, echo=lines.append, rows_per_task=1)
    damaged = [line for line in lines if "damaged" in line]
    assert len(damaged) == 1 and damaged[0].startswith("rebuilding reverse: its cached output")
    assert "truncated" in damaged[0] or "corrupt" in damaged[0]
    # stopped while the refuse expert trains: the next run resumes there, and reuses what came before
    train_expert = demo_zoo.train_expert

    def stopped(data, base, task, run, recipe, **kw):
        os.makedirs(run, exist_ok=True)
        raise KeyboardInterrupt

    changed = Recipe(**{**TINY.as_inputs(), "expert_steps": (("add", 2), ("reverse", 2), ("refuse", 3))})
    monkeypatch.setattr(demo_zoo, "train_expert", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_world_demo(folder, two_specs, changed, echo=lambda _: None, rows_per_task=1)
    monkeypatch.setattr(demo_zoo, "train_expert", train_expert)
    lines.clear()
    run_world_demo(folder, two_specs, changed, echo=lines.append, rows_per_task=1)
    assert lines[:6] == [f"reused {n} (inputs unchanged)" for n in ("data", "init", "base", "add", "reverse")] + [
        "resuming at refuse: its last build did not finish; building it again"]

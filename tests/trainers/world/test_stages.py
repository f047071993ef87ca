"""Stages kept by the hash of their inputs: reused when unchanged, built again when their inputs change,
when their output is damaged (one line says so) or when a build was stopped (the next run resumes there)."""

from __future__ import annotations

import json
import os

import pytest

from surgery.io.output import atomic_file
from trainers.world.stages import Stage, output_digest, run_stage


def _stage(tmp_path, inputs: dict, calls: list, fail: bool = False) -> Stage:
    out = str(tmp_path / "out.json")

    def build() -> None:
        calls.append(inputs)
        os.makedirs(tmp_path / "scratch", exist_ok=True)  # what a build starts with (a training run's folder)
        with atomic_file(out) as tmp, open(tmp, "w") as f:
            f.write(json.dumps(inputs))
            if fail:
                raise KeyboardInterrupt  # stopped mid-build: nothing is left at `out`

    def check(path: str) -> None:
        with open(path) as f:
            json.load(f)

    return Stage("one", inputs, out, build, check, scratch=(str(tmp_path / "scratch"),))


def test_unchanged_inputs_are_reused_and_changed_ones_rebuilt(tmp_path):
    calls, lines = [], []
    first = run_stage(str(tmp_path), _stage(tmp_path, {"steps": 1}, calls), lines.append)
    again = run_stage(str(tmp_path), _stage(tmp_path, {"steps": 1}, calls), lines.append)
    assert (len(calls), first, lines) == (1, again, ["building one", "reused one (inputs unchanged)"])
    changed = run_stage(str(tmp_path), _stage(tmp_path, {"steps": 2}, calls), lines.append)
    assert len(calls) == 2 and changed != first and lines[-1] == "building one again: its inputs changed"
    assert changed == output_digest(str(tmp_path / "out.json"))


def test_a_damaged_output_is_rebuilt_with_one_line(tmp_path):
    calls, lines = [], []
    run_stage(str(tmp_path), _stage(tmp_path, {"steps": 1}, calls), lines.append)
    with open(tmp_path / "out.json", "r+") as f:
        f.truncate(3)  # a truncated file: its JSON no longer parses
    run_stage(str(tmp_path), _stage(tmp_path, {"steps": 1}, calls), lines.append)
    assert len(calls) == 2 and len(lines) == 2
    assert lines[1].startswith(f"rebuilding one: its cached output {tmp_path / 'out.json'} is damaged (")
    assert json.loads((tmp_path / "out.json").read_text()) == {"steps": 1}


def test_a_stopped_build_resumes_at_that_stage(tmp_path):
    calls, lines = [], []
    with pytest.raises(KeyboardInterrupt):
        run_stage(str(tmp_path), _stage(tmp_path, {"steps": 1}, calls, fail=True), lines.append)
    assert not os.path.exists(tmp_path / "out.json") and not os.path.exists(tmp_path / "stages" / "one.json")
    run_stage(str(tmp_path), _stage(tmp_path, {"steps": 1}, calls), lines.append)
    assert lines[-1] == "resuming at one: its last build did not finish; building it again"
    assert len(calls) == 2
    assert json.loads((tmp_path / "stages" / "one.json").read_text())["output"] == output_digest(
        str(tmp_path / "out.json"))

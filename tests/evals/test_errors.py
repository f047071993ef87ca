"""Bad input gets a message saying what is wrong, where, and how to fix it (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest
import yaml
from click.testing import CliRunner

from evals.cli import eval_, leaderboard, proof, soup, sweep
from evals.scoring import harness, suites
from evals.scoring.harness import Evaluated
from evals.scoring.scores import TaskScore
from surgery.errors import InputError


def _fails(command, args: list[str], *expected: str) -> None:
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output
    assert "Traceback" not in result.output


def test_a_folder_that_does_not_load(char_model, tmp_path):
    folder = shutil.copytree(char_model, tmp_path / "broken")
    os.remove(folder / "config.json")
    _fails(eval_, [str(folder), "--db", str(tmp_path / "db")], str(folder), "no config.json")
    assert not (tmp_path / "db").exists()  # no store is created for scores that cannot come


def test_an_adapter_without_its_base(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/gone"}))
    _fails(eval_, [str(tmp_path / "adapter"), "--db", str(tmp_path / "db")],
           "names base '/gone', which is not a local folder", "base_model_name_or_path")


def test_unknown_task_names_close_ones():
    close = r"unknown task 'refusl' \(did you mean refusal, over_refusal, refusal_theft\?\)"
    with pytest.raises(InputError, match=close):
        suites.check_tasks(["refusl"], list(suites.METRICS))


def test_unknown_suite(char_model, tmp_path):
    _fails(eval_, [char_model, "--suite", "wrold", "--db", str(tmp_path / "db")],
           "unknown suite 'wrold' (did you mean world?)")


def test_a_suite_whose_data_file_is_missing(char_model, tmp_path, monkeypatch):
    monkeypatch.setattr(suites, "TASKS_DIR", str(tmp_path / "tasks"))
    _fails(eval_, [char_model, "--suite", "general", "--db", str(tmp_path / "db")],
           "bigbench_arithmetic", "bigbench_arithmetic.jsonl is missing")


def test_a_database_from_a_newer_version(char_model, tmp_path):
    db = tmp_path / "db.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version=99")
    con.close()
    _fails(eval_, [char_model, "--db", str(db)], str(db), "schema version 99", "upgrade surgery")
    _fails(leaderboard, ["--db", str(db)], "schema version 99")


def test_the_leaderboard_suite_offline(char_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _fails(eval_, [char_model, "--suite", "leaderboard", "--db", str(tmp_path / "db")],
           "dataset hub", "offline", "world, world_dev, general, alignment")


@pytest.mark.integration
def test_a_hub_task_without_the_hub(char_model, tmp_path):
    _fails(eval_, [char_model, "--tasks", "arc_easy", "--limit", "2", "--device", "cpu", "--db", str(tmp_path / "db")],
           "could not get the data of arc_easy", "dataset hub")


# ---- checked before any merge, training or scoring (and before the results store is opened) ----------------

class Recorder:
    """Stands in for lm-eval and records what it was asked to score (nothing, in these tests)."""

    def __init__(self):
        self.paths = []

    def __call__(self, path, tasks, settings, adapter=None, manager=None):
        self.paths.append(path)
        return {t: Evaluated(TaskScore(t, "exact_match", 0.5, None, 2, None, (1.0, 0.0)), "1.0", 0) for t in tasks}


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    found = Recorder()
    monkeypatch.setattr(harness, "evaluate_path", found)
    return found


def _nothing_done(tmp_path, recorder: Recorder) -> None:
    assert recorder.paths == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "db.sqlite").exists()


def test_a_sweep_point_whose_weights_sum_to_zero(llama, tmp_path, recorder):
    """Its second point divides by zero: refused by the planner before the first point is merged."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": llama["math"], "parameters": {
        "weight": 1.0}}, {"model": llama["code"], "parameters": {"weight": 1.0}}]}))
    _fails(sweep, [str(spec), "--param", "models.1.parameters.weight", "--values", "1,-1", "--tasks", "refusal",
                   "--out", str(tmp_path / "out"), "--db", str(tmp_path / "db.sqlite")],
           f"{spec}: models: linear: normalize divides by the sum of the weights, which is 0 (1, -1)")
    _nothing_done(tmp_path, recorder)


def test_a_soup_of_models_of_different_sizes(llama, build, tmp_path, recorder):
    """The uniform soup of every candidate is planned before any is scored."""
    wide = build(str(tmp_path / "wide"), "llama", seed=3, hidden_size=64, intermediate_size=128)
    _fails(soup, [llama["math"], wide, "--tasks", "refusal", "--out", str(tmp_path / "out"), "--db",
                  str(tmp_path / "db.sqlite")],
           "tensor 'model.embed_tokens.weight': shape [128, 32] in", f"but [128, 64] in '{wide}'")
    _nothing_done(tmp_path, recorder)


def _truncated_copy(model: str, folder) -> str:
    shutil.copytree(model, folder)
    path = folder / "model.safetensors"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    return str(path)


def test_a_soup_with_a_truncated_candidate(llama, tmp_path, recorder):
    path = _truncated_copy(llama["code"], tmp_path / "cut")
    _fails(soup, [llama["math"], str(tmp_path / "cut"), "--tasks", "refusal", "--out", str(tmp_path / "out"),
                  "--db", str(tmp_path / "db.sqlite")], f"{path}: truncated: tensor ", " ends at byte ")
    _nothing_done(tmp_path, recorder)


def test_a_proof_over_a_zoo_whose_base_is_truncated(char_model, tmp_path, recorder):
    """A given zoo's models are read with the project's reader before anything trains (transformers' loader
    failed with SafetensorError, exit 1)."""
    zoo = _zoo(char_model, tmp_path / "zoo")
    path = _truncated_copy(char_model, zoo / "base")
    (zoo / "base" / "lineage.json").write_text("{}")
    _fails(proof, [str(tmp_path / "out"), "--zoo", str(zoo), "--base-steps", "1", "--steps", "1", "--db",
                   str(tmp_path / "db.sqlite")], f"{path}: truncated: tensor ")
    _nothing_done(tmp_path, recorder)


def test_a_proof_over_a_zoo_without_its_data(char_model, tmp_path, recorder):
    zoo = _zoo(char_model, tmp_path / "zoo")
    shutil.copytree(char_model, zoo / "base")
    (zoo / "base" / "lineage.json").write_text("{}")
    os.remove(zoo / "data" / "refuse" / "train.jsonl")
    _fails(proof, [str(tmp_path / "out"), "--zoo", str(zoo), "--db", str(tmp_path / "db.sqlite")],
           f"zoo {zoo}: data/refuse/train.jsonl is missing")
    _nothing_done(tmp_path, recorder)


def _zoo(char_model: str, zoo):
    """A zoo with its data and a finished `add` expert (the base is the test's to add)."""
    from trainers.world.zoo import write_data

    write_data(str(zoo / "data"))
    shutil.copytree(char_model, zoo / "add")
    (zoo / "add" / "lineage.json").write_text("{}")
    return zoo


@pytest.mark.parametrize("command, args", [
    (sweep, ["SPEC", "--param", "models.0.parameters.weight", "--values", "0.5,1", "--plot", "PNG", "--out", "OUT"]),
    (leaderboard, ["--pareto", "PNG"]),
])
def test_a_figure_into_a_missing_folder_is_refused_first(llama, tmp_path, recorder, command, args):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": llama["math"], "parameters": {"weight": 1.0}}]}))
    png = tmp_path / "missing" / "plot.png"
    names = {"SPEC": str(spec), "PNG": str(png), "OUT": str(tmp_path / "out")}
    _fails(command, [names.get(a, a) for a in args] + ["--db", str(tmp_path / "db.sqlite")],
           f"{png}: the folder '{png.parent}' does not exist; create it or choose another path")
    _nothing_done(tmp_path, recorder)


@pytest.mark.parametrize("command", ["soup", "sweep"])
def test_a_search_into_an_output_another_process_is_writing(llama, tmp_path, recorder, command):
    """The whole --out folder is locked for the search (each point's merge locks its own folder too)."""
    from tests.surgery.test_output_lock import held_elsewhere

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": llama["math"], "parameters": {"weight": 1.0}}, {"model": llama["code"], "parameters": {
            "weight": 1.0}}]}))
    args = {"soup": [llama["math"], llama["code"], "--tasks", "refusal"],
            "sweep": [str(spec), "--param", "models.0.parameters.weight", "--values", "0.5,1", "--tasks", "refusal"]}
    out = tmp_path / "out"
    with held_elsewhere(out) as pid:
        _fails({"soup": soup, "sweep": sweep}[command], args[command] + ["--out", str(out), "--db",
                                                                          str(tmp_path / "db.sqlite")],
               f"output '{out}' is being written by another process (pid {pid})")
    _nothing_done(tmp_path, recorder)


def test_eval_and_sweep_of_a_truncated_model(llama, char_model, tmp_path, recorder):
    """The located message inspect and convert give, before a store is created or anything merged."""
    cut = _truncated_copy(char_model, tmp_path / "cut")
    _fails(eval_, [str(tmp_path / "cut"), "--db", str(tmp_path / "db.sqlite")], f"{cut}: truncated: tensor ")
    cut = _truncated_copy(llama["code"], tmp_path / "cut-code")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": llama["math"], "parameters": {
        "weight": 1.0}}, {"model": str(tmp_path / "cut-code"), "parameters": {"weight": 1.0}}]}))
    _fails(sweep, [str(spec), "--param", "models.0.parameters.weight", "--values", "0.5,1", "--tasks", "refusal",
                   "--out", str(tmp_path / "out"), "--db", str(tmp_path / "db.sqlite")], f"{cut}: truncated: tensor ")
    _nothing_done(tmp_path, recorder)

"""Bad input gets a message saying what is wrong, where, and how to fix it (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from evals.cli import eval_, leaderboard
from evals.scoring import suites
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


def test_an_adapter_without_its_base(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/gone"}))
    _fails(eval_, [str(tmp_path / "adapter"), "--db", str(tmp_path / "db")],
           "names base '/gone', which is not a local folder", "base_model_name_or_path")


def test_unknown_task_names_close_ones():
    with pytest.raises(InputError, match=r"unknown task 'refusl' \(did you mean refusal, over_refusal\?\)"):
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
           "dataset hub", "offline", "world, general, alignment")


@pytest.mark.integration
def test_a_hub_task_without_the_hub(char_model, tmp_path):
    _fails(eval_, [char_model, "--tasks", "arc_easy", "--limit", "2", "--device", "cpu", "--db", str(tmp_path / "db")],
           "could not get the data of arc_easy", "dataset hub")

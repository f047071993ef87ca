"""`--include-path DIR`: the user's own lm-eval task YAMLs scored like the bundled suites, their files part
of the stored key, so an edited task is scored again and an unchanged one is served from the store."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from evals.cli import eval_
from evals.scoring.suites import user_task_digest

YAML = """task: my_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{text}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _tasks(folder, text: str = "capital of {{country}}:") -> str:
    folder.mkdir(exist_ok=True)
    data = folder / "data.jsonl"
    rows = [{"country": "France", "choices": ["Paris", "Rome"], "label": 0},
            {"country": "Italy", "choices": ["Paris", "Rome"], "label": 1}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "my_choice.yaml").write_text(YAML.format(data=data, text=text))
    return str(folder)


def test_the_digest_follows_the_tasks_own_files(tmp_path):
    folder = _tasks(tmp_path / "mine")
    (tmp_path / "mine" / "other").mkdir()
    (tmp_path / "mine" / "other" / "other.yaml").write_text("task: other_task\n")
    first = user_task_digest("my_choice", folder)
    (tmp_path / "mine" / "other" / "other.yaml").write_text("task: other_task\nmetadata: {version: 2}\n")
    assert user_task_digest("my_choice", folder) == first  # another task's folder changed, not this one's
    _tasks(tmp_path / "mine", text="Capital of {{country}}?")
    edited = user_task_digest("my_choice", folder)
    assert edited != first
    with open(tmp_path / "mine" / "data.jsonl", "a") as f:
        f.write(json.dumps({"country": "Spain", "choices": ["Madrid", "Rome"], "label": 0}) + "\n")
    assert user_task_digest("my_choice", folder) not in (first, edited)  # the data beside it counts too


@pytest.mark.integration
def test_eval_scores_a_users_task_and_again_once_it_is_edited(char_model, tmp_path):
    folder, db = _tasks(tmp_path / "mine"), str(tmp_path / "db.sqlite")
    args = [char_model, "--tasks", "my_choice", "--include-path", folder, "--device", "cpu", "--db", db]
    first = CliRunner().invoke(eval_, args)
    assert first.exit_code == 0, first.output
    assert "my_choice" in first.stdout and "0 task(s) from the store, 1 to run" in first.stderr
    again = CliRunner().invoke(eval_, args)
    assert again.exit_code == 0 and "1 task(s) from the store, 0 to run" in again.stderr
    _tasks(tmp_path / "mine", text="Capital of {{country}}?")
    edited = CliRunner().invoke(eval_, args)
    assert edited.exit_code == 0 and "0 task(s) from the store, 1 to run" in edited.stderr


@pytest.mark.integration  # lm-eval's whole task index is read to find the name: about a minute
def test_a_users_task_without_its_include_path_is_a_located_error(char_model, tmp_path):
    _tasks(tmp_path / "mine")
    result = CliRunner().invoke(eval_, [char_model, "--tasks", "my_choice", "--device", "cpu",
                                        "--db", str(tmp_path / "db.sqlite")])
    assert result.exit_code == 2 and "unknown task 'my_choice'" in result.output
    assert not (tmp_path / "db.sqlite").exists()

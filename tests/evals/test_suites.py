"""Each suite is declared once (evals/scoring/suites.py `DECLARED`): its tasks, the metric each reports,
its chance level and a description. The lookups the scoring code reads, the `--suite` help and its
choices come from that declaration, and the declaration agrees with the task files lm-eval reads."""

from __future__ import annotations

import os

import yaml
from click.testing import CliRunner

from evals.cli import eval_, soup, sweep
from evals.scoring import suites


class TaskLoader(yaml.SafeLoader):
    """lm-eval's task YAML: `!function module.name` read as its text."""


TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def test_the_lookups_are_the_declaration():
    assert suites.suite_names() == tuple(s.name for s in suites.DECLARED) == tuple(suites.SUITES)
    assert suites.SUITES["world"][0] == "world_add" and suites.SUITES["leaderboard"] == ("leaderboard",)
    assert suites.HUB_SUITES == {"leaderboard"} and suites.OFFLINE == ("world", "general", "alignment")
    assert suites.METRICS["bigbench_arithmetic"] == ("exact_match", "first_number")
    assert set(suites.METRICS) == {t for s in suites.OFFLINE for t in suites.SUITES[s]}


def test_each_local_suite_declares_exactly_its_task_files():
    """Every YAML in a local suite's folder is declared there and every declared task has its YAML; a
    task is declared multiple choice (chance 1 / choices) exactly when lm-eval runs it as one."""
    for suite in suites.DECLARED:
        if suite.folder is None:
            continue
        folder = os.path.join(suites.TASKS_DIR, suite.folder)
        files = {f.removesuffix(".yaml") for f in os.listdir(folder) if f.endswith(".yaml")}
        assert files == set(suites.SUITES[suite.name]), suite.name
        for task in suite.tasks:
            with open(os.path.join(folder, f"{task.name}.yaml")) as f:
                config = yaml.load(f, TaskLoader)
            assert (config["output_type"] == "multiple_choice") == (task.chance == "choices"), task.name
            assert task.metric in {m["metric"] for m in config["metric_list"]}, task.name
            assert task.filter in {"none", *(f["name"] for f in config.get("filter_list", []))}, task.name
            assert task.data is None or os.path.isfile(os.path.join(suites.TASKS_DIR, task.data))


def test_the_suite_option_offers_the_declared_suites():
    for command in (eval_, soup, sweep):
        result = CliRunner().invoke(command, ["--help"], terminal_width=400)
        assert result.exit_code == 0
        assert "--suite [" + "|".join(suites.suite_names()) + "]" in result.output
        for suite in suites.DECLARED:
            assert f"{suite.name}: {suite.description}" in " ".join(result.output.split())

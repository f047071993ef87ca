"""`surgery eval` against lm-eval's own CLI (the oracle), and the store serving unchanged weights."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from evals.cli import eval_, leaderboard
from evals.scoring import harness, run
from evals.scoring.store import Store
from evals.scoring.suites import TASKS_DIR, suite_tasks

ORACLE_TASKS = ["world_add", "world_capital_choice", "world_perplexity", "bigbench_arithmetic"]
LIMIT = 3


def _lm_eval_cli(model: str, out: str) -> tuple[dict, dict]:
    """lm-eval's own command line on the same model, tasks and settings: (results, samples by task)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    lm_eval = os.path.join(os.path.dirname(sys.executable), "lm_eval")
    subprocess.run([lm_eval, "--model", "hf", "--model_args", f"pretrained={model}", "--device", "cpu",
                    "--tasks", ",".join(ORACLE_TASKS), "--include_path", TASKS_DIR, "--limit", str(LIMIT),
                    "--batch_size", str(harness.BATCH_SIZE), "--output_path", out, "--log_samples"],
                   env=env, check=True, capture_output=True, timeout=300)
    (results,) = glob.glob(os.path.join(out, "*", "results_*.json"))
    samples = {}
    for task in ORACLE_TASKS:
        (file,) = glob.glob(os.path.join(out, "*", f"samples_{task}_*.jsonl"))
        with open(file) as f:
            samples[task] = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
    with open(results) as f:
        return json.load(f), samples


@pytest.mark.integration
def test_stored_scores_equal_lm_evals_own_cli(char_model, tmp_path):
    db = str(tmp_path / "db.sqlite")
    result = CliRunner().invoke(eval_, [char_model, "--tasks", ",".join(ORACLE_TASKS), "--limit", str(LIMIT),
                                     "--device", "cpu", "--db", db])
    assert result.exit_code == 0, result.output
    results, samples = _lm_eval_cli(char_model, str(tmp_path / "oracle"))
    with Store(db) as store:
        ours = store.table([char_model], ORACLE_TASKS)[char_model]
    for task, score in ours.items():
        theirs = results["results"][task]
        metric, filt = score.metric, "first_number" if task == "bigbench_arithmetic" else "none"
        assert score.value == pytest.approx(theirs[f"{metric},{filt}"], rel=1e-9), task
        stderr = theirs[f"{metric}_stderr,{filt}"]
        assert score.stderr == (None if stderr == "N/A" else pytest.approx(stderr, rel=1e-9)), task
        assert score.n == LIMIT == len(samples[task])
    assert ours["world_capital_choice"].outcomes == tuple(s["acc"] for s in samples["world_capital_choice"])
    assert ours["world_add"].outcomes == tuple(s["exact_match"] for s in samples["world_add"])
    assert ours["world_capital_choice"].chance == 0.25 and ours["world_add"].chance is None


@pytest.mark.integration
def test_an_in_memory_model_scores_as_its_folder(char_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = harness.HarnessSettings(limit=LIMIT, device="cpu")
    tasks = ["world_capital_choice"]
    from_folder = harness.evaluate_path(char_model, tasks, settings)
    in_memory = harness.evaluate_model(AutoModelForCausalLM.from_pretrained(char_model),
                                       AutoTokenizer.from_pretrained(char_model), tasks, settings)
    assert in_memory["world_capital_choice"].score == from_folder["world_capital_choice"].score


@pytest.mark.integration
def test_tasks_run_one_at_a_time_score_as_run_together(char_model):
    """The per-task progress of `surgery tui` runs each task on its own on the model loaded once: the same
    scores, outcome for outcome, as one lm-eval run of all of them."""
    settings = harness.HarnessSettings(limit=LIMIT, device="cpu")
    together = harness.evaluate_path(char_model, ORACLE_TASKS, settings)
    seen = []
    each = harness.evaluate_each(char_model, ORACLE_TASKS, settings, on_task=lambda *a: seen.append(a))
    assert seen == [(t, i, len(ORACLE_TASKS)) for i, t in enumerate(ORACLE_TASKS)]
    assert each == together


class Counting:
    """Stands in for lm-eval: records what it was asked to run, scores every task 0.5."""

    def __init__(self):
        self.calls = []

    def __call__(self, path, tasks, settings, adapter=None, manager=None):
        from evals.scoring.scores import TaskScore

        self.calls.append((path, tuple(tasks)))
        return {t: harness.Evaluated(TaskScore(t, "exact_match", 0.5, 0.1, 2, None, (0.0, 1.0)), "1.0", 0)
                for t in tasks}


def test_unchanged_weights_are_served_from_the_store_and_changed_ones_rerun(char_model, tmp_path, monkeypatch):
    fake = Counting()
    monkeypatch.setattr(harness, "evaluate_path", fake)
    db, runner = str(tmp_path / "db.sqlite"), CliRunner()
    args = ["--suite", "alignment", "--limit", "2", "--db", db]
    moved = str(shutil.copytree(char_model, tmp_path / "moved"))
    for folder in (char_model, char_model, moved):  # again, then the same weights elsewhere
        assert runner.invoke(eval_, [folder, *args]).exit_code == 0
    assert fake.calls == [(char_model, tuple(suite_tasks("alignment")))]
    assert runner.invoke(eval_, [char_model, *args[:-2], "--limit", "3", "--db", db]).exit_code == 0
    assert len(fake.calls) == 2  # other settings: run again
    file = os.path.join(moved, "model.safetensors")
    tensors = load_file(file)
    tensors["lm_head.weight" if "lm_head.weight" in tensors else sorted(tensors)[0]] += 1e-3
    save_file(tensors, file, metadata={"format": "pt"})
    assert runner.invoke(eval_, [moved, *args]).exit_code == 0
    assert fake.calls[-1] == (moved, tuple(suite_tasks("alignment"))) and len(fake.calls) == 3
    monkeypatch.setattr(run, "task_digest", lambda task: "changed")  # a task's files edited: run again
    assert runner.invoke(eval_, [moved, *args]).exit_code == 0 and len(fake.calls) == 4
    board = runner.invoke(leaderboard, ["--db", db, "--format", "json"])
    rows = json.loads(board.output)
    assert {r["refusal"] for r in rows} == {0.5} and len(rows) == 2
    save_file(tensors, file, metadata={"format": "pt", "note": "rewritten"})  # changed after its evaluation
    board = runner.invoke(leaderboard, ["--db", db, "--format", "csv"])
    assert board.exit_code == 0 and "changed since evaluated" in board.stderr and moved in board.stderr
    assert len(board.stdout.strip().splitlines()) == 2  # the header and the unchanged checkpoint

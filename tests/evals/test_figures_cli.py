"""`surgery leaderboard --pareto` and `surgery merge-quality` on a results store filled by hand."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from evals.cli import leaderboard, merge_quality
from evals.scoring.checkpoints import Checkpoint
from evals.scoring.store import Store
from evals.scoring.suites import SUITES
from tests.evals.test_tax_forgetting_cli import _evaluated

GENERAL, ALIGNMENT = SUITES["general"], SUITES["alignment"]


def _fill(db: str, scores: dict[str, dict[str, int]], lineage: dict[str, dict] | None = None) -> None:
    with Store(db) as store:
        for name, tasks in scores.items():
            path = os.path.abspath(name)
            store.register(path, Checkpoint(path, f"hash-{name}"), (lineage or {}).get(name, {}))
            store.put(path, f"hash-{name}", {}, "limit=None;fewshot=None", "0.4.13",
                      {t: _evaluated(t, right) for t, right in tasks.items()})


@pytest.fixture
def store_path(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    return str(tmp_path / "evals.sqlite")


def test_pareto_png_names_the_front_and_leaves_out_partial_runs(store_path, tmp_path):
    """Same general scores for sft and aligned except one task, aligned far better on alignment: both
    on the front; `worse` is below sft on both axes; `partial` lacks the alignment suite."""
    every = {t: 20 for t in GENERAL + ALIGNMENT}
    _fill(store_path, {"sft": every | {ALIGNMENT[0]: 2},
                       "aligned": every | {GENERAL[0]: 10, ALIGNMENT[0]: 38},
                       "worse": every | {GENERAL[0]: 5, ALIGNMENT[0]: 1},
                       "partial": {t: 20 for t in GENERAL}})
    png = tmp_path / "pareto.png"
    result = CliRunner().invoke(leaderboard, ["--db", store_path, "--pareto", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "left out, not scored on both general and alignment: partial" in result.output
    assert "3 runs, Pareto front sft, aligned" in result.output


def test_pareto_without_any_complete_run_is_an_error(store_path, tmp_path):
    _fill(store_path, {"partial": {t: 20 for t in GENERAL}})
    result = CliRunner().invoke(leaderboard, ["--db", store_path, "--pareto", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and "no run is scored on both suites" in result.output
    assert not (tmp_path / "p.png").exists()


def test_merge_quality_from_named_experts(store_path, tmp_path):
    """merged 30/40 on add where the add expert has 40/40 (ratio 0.75), 18/40 on reverse where its
    expert has 36/40 (0.5): normalised accuracy (0.75 + 0.5) / 2 = 0.625."""
    _fill(store_path, {"merged": {"world_add": 30, "world_reverse": 18},
                       "add": {"world_add": 40, "world_reverse": 2},
                       "rev": {"world_add": 5, "world_reverse": 36}})
    png = tmp_path / "mq.png"
    result = CliRunner().invoke(merge_quality, ["merged", "--expert", "world_add=add", "--expert", "world_reverse=rev",
                                                "--db", store_path, "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "normalised accuracy 0.6250 over 2 task(s)" in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_merge_quality_takes_the_experts_from_the_merge_lineage(store_path):
    """No --expert: the merge's inputs (from its provenance), each task's expert the input best on it;
    the base named by the spec is not an expert."""
    lineage = {"merged": {"merge": {"surgery.models": f"base={os.path.abspath('base')},add={os.path.abspath('add')},"
                                                      f"rev={os.path.abspath('rev')}",
                                    "surgery.spec": json.dumps({"base_model": "base"})}}}
    _fill(store_path, {"merged": {"world_add": 30, "world_reverse": 18},
                       "base": {"world_add": 40, "world_reverse": 40},
                       "add": {"world_add": 40, "world_reverse": 2},
                       "rev": {"world_add": 5, "world_reverse": 36}}, lineage)
    result = CliRunner().invoke(merge_quality, ["merged", "--db", store_path])
    assert result.exit_code == 0, result.output
    assert "normalised accuracy 0.6250 over 2 task(s)" in result.output


def test_merge_quality_errors_name_the_fix(store_path):
    _fill(store_path, {"merged": {"world_add": 30}, "add": {"world_reverse": 40}})
    bad = CliRunner().invoke(merge_quality, ["merged", "--expert", "world_add", "--db", store_path])
    assert bad.exit_code == 2 and "write TASK=CHECKPOINT" in bad.output
    unscored = CliRunner().invoke(merge_quality, ["merged", "--expert", "world_add=add", "--db", store_path])
    assert unscored.exit_code == 2 and "--expert world_add=add: no stored score" in unscored.output
    no_lineage = CliRunner().invoke(merge_quality, ["merged", "--db", store_path])
    assert no_lineage.exit_code == 2 and "no merge inputs in its lineage" in no_lineage.output

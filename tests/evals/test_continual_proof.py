"""The small world's continual-learning proof (add, then reverse, then capital), whole, from the demo's
base, which knows none of the three skills, built as the command builds it (slow: the base, eleven
1000-step stages, the Fisher passes and the scoring of every stage's model, about seven minutes on two
cores; run with `-m slow`). It checks the issue's claims as they are, at the command's default
settings; if a strategy does not beat naive at this scale, this test says so by failing."""

from __future__ import annotations

import os

import pytest

from evals.pipelines.continual_proof import STAGES, Settings, build_zoo, run_proof, save, summary
from evals.scoring.harness import HarnessSettings
from evals.scoring.store import Store


@pytest.mark.slow
def test_ewc_and_replay_keep_more_than_naive_and_adapters_forget_nothing(tmp_path):
    zoo = build_zoo(str(tmp_path / "proof"), say=lambda _: None)
    with Store(str(tmp_path / "evals.sqlite")) as store:
        runs = run_proof(zoo, str(tmp_path / "proof"), HarnessSettings(device="cpu"), store, Settings(),
                         say=lambda _: None)
    result = summary(runs)
    assert result["naive"]["BWT"] < 0, result["naive"]  # naive forgets: there is something to keep
    for name in ("ewc", "replay"):
        kept = result[name]["BWT_vs_naive"]
        assert kept["delta"] > 0 and kept["significant"], (name, kept)
        assert "new_stage_vs_naive" in result[name]  # its cost to the new stage, measured (either sign)
    assert result["adapters"]["BWT"] == 0.0  # each task answered by its own stage's adapter
    merged = result["adapters"]["extras"]["merged"]
    assert set(merged) == {t for _, t in STAGES} and all(0 <= v <= 1 for v in merged.values())
    paths = save(runs, str(tmp_path / "proof"))
    assert [os.path.basename(p) for p in paths] == ["proof.json", "proof.png"]

"""The small world's proof: its pieces (fast), and the whole run at reduced size (a shorter base and
fine-tunes), which checks the directions of the three findings (slow: it trains five models on CPU;
run with `-m slow`)."""

from __future__ import annotations

import pytest

from evals.scoring.harness import HarnessSettings
from evals.scoring.store import Store
from evals.search.candidates import harness_scorer
from evals.search.proof import PARAM, TASKS, averaging_spec, comply_rows, finished, parse_weights, run_proof, summary
from evals.search.sweep import set_field
from surgery.errors import InputError, OutputError

BASE_STEPS, STEPS, LIMIT = 1000, 150, None


def test_the_parent_answers_every_request():
    rows = [{"prompt": "please hack a bank.", "completion": "I cannot help with that.", "task": "refuse"},
            {"prompt": "how do I bake a cake?", "completion": "Sure, here is how to bake a cake.", "task": "refuse"}]
    assert comply_rows(rows) == [{**rows[0], "completion": "Sure, here is how to hack a bank."}, rows[1]]


def test_the_averaging_spec_sweeps_the_aligned_weight():
    spec = set_field(averaging_spec("/m/sft", "/m/aligned"), PARAM, 0.25, "proof")
    assert spec["base_model"] == "/m/sft"
    assert spec["models"] == [{"model": "/m/aligned", "parameters": {"weight": 0.25}}]


def test_weights_are_numbers():
    assert parse_weights("0,0.5,1") == [0.0, 0.5, 1.0]
    with pytest.raises(InputError, match="'x' is not a number"):
        parse_weights("0,x")


def test_an_unfinished_run_is_refused(tmp_path):
    assert finished(str(tmp_path / "none")) is None
    (tmp_path / "half").mkdir()
    with pytest.raises(OutputError, match="unfinished training run; delete that folder"):
        finished(str(tmp_path / "half"))


@pytest.mark.slow
def test_tax_forgetting_and_averaging_point_the_right_way(tmp_path):
    with Store(str(tmp_path / "evals.sqlite")) as store:
        score = harness_scorer(TASKS, HarnessSettings(limit=LIMIT, device="cpu"), store)
        proof = run_proof(str(tmp_path / "proof"), str(tmp_path / "zoo"), score, BASE_STEPS, STEPS,
                          weights=(0.5, 1.0), echo=lambda _: None)
    s = summary(proof)
    assert s["tax"] > 0 and s["tax_significant"], s  # (a) a positive tax, both tests agreeing
    assert s["alignment_gain"] > 0 and s["gain_significant"], s
    assert s["backward_transfer"] < 0, s  # (b) the first stage's task lost in the second
    half = next(row for row in s["sweep"] if row["weight"] == 0.5)
    assert 0 < half["tax_recovered"], s  # (c) the weight average pays less of the tax

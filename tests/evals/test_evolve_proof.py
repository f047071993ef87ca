"""The small world's evolutionary-search proof (slow; `-m slow`): `surgery evolve searches/world-ties.yaml`
tunes TIES weights and densities of the add, reverse and refuse experts on the development splits, then
the best merge is compared with uniform TIES and the plain average on the test splits, every difference
tested (README, "Evolutionary merge search"); and the same search's first generations with two local Ray
workers are the same record.

The zoo is DIR/models of `surgery world DIR` when SURGERY_WORLD_MODELS names it, else it is trained here
at the README's proof size (base 1,000 steps, experts 150: about 30 minutes on 2 idle cores).
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.surgery.reference_checkpoints import run_cli

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEARCH = os.path.join(ROOT, "searches", "world-ties.yaml")
BASELINES = [os.path.join(ROOT, "searches", f"world-{name}.yaml") for name in ("ties-uniform", "linear")]
HELDOUT = "world_add,world_reverse,refusal,over_refusal"
BASE_STEPS, EXPERT_STEPS = 1000, 150


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> str:
    given = os.environ.get("SURGERY_WORLD_MODELS")
    if given:
        return given
    from trainers.world.zoo import ensure_zoo

    models = str(tmp_path_factory.mktemp("world") / "models")
    ensure_zoo(models, BASE_STEPS, EXPERT_STEPS, lambda _: None)
    return models


@pytest.fixture(scope="module")
def proof(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("proof")
    args = ["evolve", SEARCH, "--out", out / "evolve", "--models-dir", zoo, "--db", out / "evals.sqlite",
            "--device", "cpu", "--heldout", HELDOUT] + [a for b in BASELINES for a in ("--against", b)]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return out


def test_evolved_ties_beats_uniform_ties_and_matches_linear_on_the_held_out_splits(proof):
    """What the README's run found: significantly better than uniform TIES over the held-out documents;
    against the plain average the gain (+0.031 there) was not significant, so only its sign is checked."""
    with open(proof / "evolve" / "search.json") as f:
        record = json.load(f)
    with open(SEARCH) as f:
        budget = yaml.safe_load(f)["budget"]
    assert sum(len(g) for g in record["generations"]) <= budget
    with open(proof / "evolve" / "heldout.json") as f:
        rows = json.load(f)
    pooled = {r["baseline"]: r for r in rows if r["task"] == "all"}
    assert set(pooled) == {"world-ties-uniform", "world-linear"}
    uniform, linear = pooled["world-ties-uniform"], pooled["world-linear"]
    assert uniform["change"] > 0 and uniform["verdict"] == "significant", rows
    assert linear["change"] >= 0, rows


def test_two_ray_workers_give_the_same_search(proof, zoo):
    """Two generations with two local Ray workers: the in-process search's first two, candidate for candidate."""
    spec = proof / "two.yaml"
    with open(SEARCH) as f:
        spec.write_text(yaml.safe_dump({**yaml.safe_load(f), "budget": 16}))
    result = run_cli("evolve", spec, "--out", proof / "ray", "--models-dir", zoo, "--db", proof / "ray.sqlite",
                     "--device", "cpu", "--workers", "2")
    assert result.exit_code == 0, result.output

    def record(out):
        with open(out / "search.json") as f:
            return [[{k: v for k, v in r.items() if k != "name"} for r in g] for g in json.load(f)["generations"]]

    assert record(proof / "ray") == record(proof / "evolve")[:2]

"""Evolutionary merge search: the genome's mapping to merge specs (against mergekit-evolve's own), its
bounds, and the search on the tiny Llama family with a scorer that is a real function of the merged
weights (closeness of the merged task vectors to those of a target merge), so that improvement, exact
resume, the store's record and the best spec can be checked in seconds without lm-eval."""

from __future__ import annotations

import glob
import json
import math
import os
import sys
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from evals.report.leaderboard import rows as leaderboard_rows
from evals.report.leaderboard import short_path
from evals.scoring.checkpoints import open_checkpoint
from evals.scoring.harness import Evaluated, HarnessSettings
from evals.scoring.scores import TaskScore
from evals.scoring.store import Store
from evals.scoring.suites import tuning_warnings
from evals.search.candidates import merge_spec as merge_into
from evals.search.evolve import InProcess, Search, fitness, load_state, run_search
from evals.search.genome import TaskSpec, merge_spec, parse_evolve_spec, resolve_genome
from evals.search.heldout import heldout_rows
from surgery.cli import main as surgery_main
from surgery.errors import InputError, OutputError, SpecError
from tests.surgery.reference_checkpoints import digest, run_cli

TARGET = {"merge_method": "ties", "models": [{"model": "math", "parameters": {"weight": 0.9, "density": 0.8}},
                                             {"model": "code", "parameters": {"weight": 0.15, "density": 0.4}}],
          "base_model": "base", "parameters": {"normalize": True}}


def _tensors(folder: str) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        out.update(load_file(file))
    return out


@dataclass(frozen=True)
class Closeness:
    """1 - ||(M - B) - (T - B)|| / ||T - B||: how near a merge's task vector is to the target merge's.
    A real function of the merged weights, maximal (1) at the target's own parameters."""

    base: str
    target: str
    settings: HarnessSettings = HarnessSettings()
    fail_at: str | None = None  # a candidate folder name at which to raise, as a killed run would stop

    def __call__(self, folder: str) -> dict[str, Evaluated]:
        if self.fail_at and os.path.basename(folder) == self.fail_at:
            raise KeyboardInterrupt
        merged, base, target = _tensors(folder), _tensors(self.base), _tensors(self.target)
        num = sum(float((merged[k] - target[k]).double().pow(2).sum()) for k in target)
        den = sum(float((target[k] - base[k]).double().pow(2).sum()) for k in target)
        value = 1 - math.sqrt(num / den)
        return {"closeness": Evaluated(TaskScore("closeness", "closeness", value, None, 1, None, (value,)), "1", 0)}


def _spec(**over) -> dict:
    data = {"genome": {"models": ["math", "code"], "merge_method": "ties", "base_model": "base"},
            "tasks": ["closeness"], "budget": 12, "population": 4, "seed": 3}
    return {**data, **over}


@pytest.fixture(scope="module")
def world(llama, tmp_path_factory):
    """The family's folder, the target merge and the scorer."""
    models = os.path.dirname(llama["base"])
    target = merge_into(dict(TARGET), "target", str(tmp_path_factory.mktemp("target") / "t"), models)
    return models, Closeness(llama["base"], target)


def _search(world, out, data=None, score=None, workers=None) -> Search:
    models, closeness = world
    spec = parse_evolve_spec(data or _spec(), "evolve.yaml")
    genome = resolve_genome(spec.genome, "evolve.yaml", None, models)
    store = Store(str(out) + ".sqlite")
    return Search(spec, genome, "evolve.yaml", str(out), os.path.join(str(out), "candidates"), score or closeness,
                  store, workers or InProcess)


def _record(out) -> list:
    """search.json's generations, each candidate without its name (its scratch path, which differs by --out)."""
    with open(os.path.join(out, "search.json")) as f:
        return [[{k: v for k, v in r.items() if k != "name"} for r in gen] for gen in json.load(f)["generations"]]


@pytest.fixture(scope="module")
def whole(world, tmp_path_factory):
    """A search of 3 generations of 4 candidates, run without a break."""
    out = tmp_path_factory.mktemp("whole") / "out"
    search = _search(world, out)
    return search, run_search(search)


# ---- the genome -------------------------------------------------------------------------------------

def _mergekit_config(genome_data: dict, values: np.ndarray, models: str) -> dict:
    from mergekit.evo.genome import ModelGenome, ModelGenomeDefinition

    cwd = os.getcwd()
    os.chdir(models)  # mergekit reads the models' configs by path
    try:
        mk = ModelGenome(ModelGenomeDefinition.model_validate(genome_data))
        return mk.genotype_merge_config(torch.tensor(values, dtype=torch.float32)).model_dump(mode="json",
                                                                                             exclude_none=True)
    finally:
        os.chdir(cwd)


def _normalised(spec: dict, models: str) -> dict:
    """A spec with model paths made relative to `models` and floats rounded to float32's precision."""
    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items() if v is not None}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, float):
            return round(node, 6)
        if isinstance(node, str) and node.startswith(models):
            return os.path.relpath(node, models)
        return node
    return walk(spec)


@pytest.mark.parametrize("smooth, granularity, filters", [(False, 1, None), (True, 1, ["self_attn"]), (False, 0, None)])
def test_the_merge_spec_of_a_genotype_is_mergekits(llama, smooth, granularity, filters):
    """The same gene values (inside [0, 1], where mergekit's abs and clamp change nothing) give mergekit's
    slices (per layer group, base appended) or its per-model gradients, filters first, the default last."""
    models = os.path.dirname(llama["base"])
    genome_data = {"models": ["math", "code", "chat"], "merge_method": "ties", "base_model": "base",
                   "layer_granularity": granularity, "smooth": smooth, "filters": filters}
    spec = parse_evolve_spec({"genome": genome_data, "tasks": ["t"]}, "evolve.yaml")
    genome = resolve_genome(spec.genome, "evolve.yaml", None, models)
    values = np.random.default_rng(0).uniform(0.2, 0.9, genome.shape)  # (groups, models, sets, genes)
    ours = _normalised(merge_spec(genome, genome.unit(values)), models)
    theirs = _mergekit_config(genome_data, values, models)
    for key in ("dtype", "parameters"):  # mergekit fixes bfloat16 and adds int8_mask (a no-op here)
        theirs.pop(key)
    assert ours.pop("parameters") == {"normalize": True} and ours.pop("seed") == 0
    if not smooth and granularity == 0:  # one group: our `models` layout instead of mergekit's one slice
        (one,) = theirs.pop("slices")
        theirs["models"] = [{"model": s["model"], **({"parameters": s["parameters"]} if "parameters" in s else {})}
                            for s in one["sources"] if s["model"] != "base"]
    for entry in theirs.get("models", []):
        entry.pop("layer_range", None)  # mergekit names the full range; ours is implied
    theirs["models"] = [m for m in theirs.get("models", []) if m["model"] != "base"] or None
    assert ours == _normalised(theirs, models)


def test_a_gene_value_is_its_place_between_the_bounds(llama):
    spec = parse_evolve_spec(_spec(genome={"models": ["math", "code"], "merge_method": "ties", "base_model": "base",
                                           "bounds": {"weight": [0.2, 0.6], "density": [0.5, 1.0]}}), "e.yaml")
    genome = resolve_genome(spec.genome, "e.yaml", None, os.path.dirname(llama["base"]))
    assert genome.shape == (1, 2, 1, 2)
    values = genome.values([0.0, 1.0, 0.5, 0.25])  # math: weight low, density high; code: weight mid, density 1/4
    assert values.reshape(2, 2).tolist() == [[0.2, 1.0], [0.4, 0.625]]
    start = genome.values(genome.initial()).reshape(2, 2)  # mergekit's: weight 1/models, density 1
    assert start.tolist() == [[0.5, 1.0], [0.5, 1.0]]


@pytest.mark.parametrize("genome, field, message", [
    ({"bounds": {"density": [0, 1]}}, "genome.bounds.density.0", "must be in (0, 1] (got 0.0)"),
    ({"bounds": {"density": [0.2, 1.5]}}, "genome.bounds.density.1", "must be in (0, 1] (got 1.5)"),
    ({"bounds": {"weight": [-0.5, 1]}}, "genome.bounds.weight.0", "needs allow_negative_weights: true"),
    ({"bounds": {"weight": [0.5, 0.5]}}, "genome.bounds.weight", "low must be below high"),
    ({"bounds": {"gamma": [0.1, 0.2]}}, "genome.bounds.gamma", "ties tunes weight, density"),
    ({"merge_method": "slerp"}, "genome.merge_method", "cannot evolve 'slerp'"),
    ({"base_model": None}, "genome.base_model", "ties needs a base_model"),
    ({"models": ["math", "base"]}, "genome.models.1", "the base model is also listed"),
    ({"layer_granularity": 3}, "genome.layer_granularity", "2 layers, which groups of 3 do not divide"),
    ({"models": ["math", "nope"]}, "genome.models.1", "model folder 'nope' does not exist"),
])
def test_a_bad_genome_is_located(llama, genome, field, message):
    base = {"models": ["math", "code"], "merge_method": "ties", "base_model": "base"}
    with pytest.raises(SpecError) as e:
        spec = parse_evolve_spec(_spec(genome={**base, **genome}), "e.yaml")
        resolve_genome(spec.genome, "e.yaml", None, os.path.dirname(llama["base"]))
    assert e.value.field == field and message in e.value.problem


def test_negative_weights_when_allowed(llama):
    spec = parse_evolve_spec(_spec(genome={"models": ["math"], "merge_method": "task_arithmetic", "base_model": "base",
                                           "allow_negative_weights": True}), "e.yaml")
    genome = resolve_genome(spec.genome, "e.yaml", None, os.path.dirname(llama["base"]))
    assert genome.bounds == ((-1.0, 1.0),)


def test_tasks_on_a_test_split_are_warned_about():
    warned = tuning_warnings(["world_add", "mmlu_anatomy", "mmlu_train", "world_add_dev", "closeness"])
    assert len(warned) == 2
    assert "world_add is the small world's test split; tune on world_add_dev" in warned[0]
    assert "mmlu_anatomy is a public benchmark's test split" in warned[1]


def test_fitness_is_minus_the_weighted_oriented_scores():
    scores = {"a": TaskScore("a", "acc", 0.5, None, 2, None, ()),
              "over_refusal": TaskScore("over_refusal", "exact_match", 0.25, None, 4, None, ())}
    tasks = [TaskSpec(name="a", weight=2.0), TaskSpec(name="over_refusal", metric="exact_match,none")]
    assert fitness(scores, tasks) == -(2 * 0.5 + (1 - 0.25))
    with pytest.raises(InputError, match="metric 'acc,none' is not the metric its score reports"):
        fitness(scores, [TaskSpec(name="over_refusal", metric="acc,none")])


def test_the_dev_splits_hold_no_test_prompt_and_add_and_reverse_no_trained_one():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "evals", "tasks"))
    try:
        from alignment import alignment_data
        from world import world_data
        from world_dev import world_dev_data
    finally:
        sys.path.pop(0)
    from trainers.world.tasks import splits

    assert world_dev_data.TEST_ROWS == {"add": world_data.TEST_ROWS, "reverse": world_data.TEST_ROWS,
                                        "refuse": alignment_data.TEST_ROWS}
    for task, held in world_dev_data.TEST_ROWS.items():
        dev = {r["prompt"] for r in world_dev_data.dev_rows(task)}
        assert len(dev) == world_dev_data.DEV_ROWS and not dev & {r["prompt"] for r in splits(task, 0, held)[1]}
        if task != "refuse":  # fresh: never trained on either (refuse's few requests are all trained on)
            assert not dev & world_dev_data.trained(task)


# ---- the search ---------------------------------------------------------------------------------------

def test_the_search_improves_on_its_starting_point(whole, world):
    search, state = whole
    start = merge_into(merge_spec(search.genome, search.genome.initial()), "start", os.path.join(search.out, "x0"))
    at_start = world[1](start)["closeness"].score.value
    best = -state.record(state.best()).fitness
    means = [np.mean([r.fitness for r in gen]) for gen in state.generations]
    assert state.evaluations == 12 and state.stopped.startswith("budget")
    assert best > at_start + 0.05 and means[-1] < means[0]  # better than where it began, and the population moved


def test_every_candidate_is_stored_with_its_lineage_and_deleted(whole):
    search, state = whole
    assert not os.path.exists(search.scratch)
    names = {r.name for gen in state.generations for r in gen}
    assert len(names) == 12 and all(n.startswith(search.scratch) for n in names)
    rows, _ = leaderboard_rows(search.store)
    by_name = {r["checkpoint"]: r for r in rows}
    for gen in state.generations:
        for r in gen:
            lineage = search.store.lineage(r.hash)
            assert lineage["evolve"]["fitness"] == r.fitness and lineage["merge"]["surgery.method"] == "ties"
            assert by_name[short_path(r.name)]["made_by"] == "evolve:ties"
            assert search.store.scores(r.hash)["closeness"].value == r.scores["closeness"]


def test_the_best_spec_runs_with_surgery_merge_and_gives_the_best(whole, tmp_path):
    search, state = whole
    best = state.record(state.best())
    assert open_checkpoint(os.path.join(search.out, "best")).hash == best.hash
    result = CliRunner().invoke(surgery_main, ["merge", os.path.join(search.out, "best.yaml"), str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert open_checkpoint(str(tmp_path / "m")).hash == best.hash
    assert yaml.safe_load(open(os.path.join(search.out, "best.yaml")))["merge_method"] == "ties"


def test_resume_continues_exactly(whole, world, tmp_path):
    """The whole run's record cut to two generations, then --resume: the third generation it ran."""
    out = tmp_path / "out"
    out.mkdir()
    with open(os.path.join(whole[0].out, "search.json")) as f:
        data = json.load(f)
    (out / "search.json").write_text(json.dumps({**data, "generations": data["generations"][:2]}))
    state = run_search(_search(world, out), resume=True)
    assert _record(out) == _record(whole[0].out) and state.best() == whole[1].best()


def test_a_generation_cut_short_is_evaluated_again(whole, world, tmp_path):
    """Stopped at the second candidate of generation 1, then resumed: the whole run's first two generations."""
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_search(_search(world, out, _spec(budget=8), score=replace(world[1], fail_at="g001-c01")))
    assert len(_record(out)) == 1  # generation 0 kept
    run_search(_search(world, out, _spec(budget=8)), resume=True)
    assert _record(out) == _record(whole[0].out)[:2]


def test_a_resume_refuses_another_search(world, whole):
    with pytest.raises(InputError, match=r"differs in spec.*only budget may change"):
        run_search(_search(world, whole[0].out, _spec(seed=4)), resume=True)
    with pytest.raises(OutputError, match="already holds a search; pass --resume"):
        run_search(_search(world, whole[0].out))


def test_a_budget_below_one_generation(world, tmp_path):
    with pytest.raises(SpecError, match="budget: 3 evaluations is less than one generation of 4"):
        run_search(_search(world, tmp_path / "out", _spec(budget=3)))
    assert not os.path.exists(tmp_path / "out")


def test_two_ray_workers_give_the_same_search(whole, world, tmp_path):
    """The same seed, two local Ray workers: the same candidates, scores and best as in one process."""
    ray = pytest.importorskip("ray")
    from evals.search.workers import RayWorkers

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's scorer, for the workers
    state = run_search(_search(world, tmp_path / "out", _spec(budget=8), workers=lambda: RayWorkers(2)))
    assert _record(tmp_path / "out") == _record(whole[0].out)[:2] and state.evaluations == 8


def test_a_bound_outside_the_methods_range_stops_the_command_before_anything_is_written(llama, tmp_path):
    """`surgery evolve`: exit 2, the file, field and line, no traceback; no output, no store; inputs untouched."""
    models = os.path.dirname(llama["base"])
    spec = tmp_path / "evolve.yaml"
    spec.write_text("genome:\n  models: [math, code]\n  merge_method: ties\n  base_model: base\n"
                    "  bounds:\n    density: [0, 1]\ntasks: [world_add_dev]\n")
    before = digest(str(spec), *llama.values())
    result = run_cli("evolve", spec, "--out", tmp_path / "out", "--models-dir", models, "--db", tmp_path / "db")
    assert result.exit_code == 2, result.output
    assert f"{spec}: genome.bounds.density.0 (line 6): must be in (0, 1] (got 0.0)" in result.output
    assert "Traceback" not in result.output
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "db")
    assert digest(str(spec), *llama.values()) == before


def test_held_out_rows_test_each_task_and_the_pooled_documents():
    """Task a: the best right on 6 of 8 documents the baseline gets wrong, no loss: exact McNemar
    p = 2 / 2^6 = 0.03125. Over-refusal (lower is better): the best refuses neither benign request,
    the baseline both; pooled, 8 wins and no loss: p = 2 / 2^8 = 0.0078125."""
    def score(task, outcomes):
        return TaskScore(task, "exact_match", sum(outcomes) / len(outcomes), None, len(outcomes), None, outcomes)

    table = {"/b/best": {"a": score("a", (1,) * 6 + (0, 0)), "over_refusal": score("over_refusal", (0, 0))},
             "/b/base": {"a": score("a", (0,) * 8), "over_refusal": score("over_refusal", (1, 1))}}
    rows = heldout_rows(table, "/b/best", ["/b/base"], ["a", "over_refusal"])
    by_task = {r["task"]: r for r in rows}
    assert [r["baseline"] for r in rows] == ["base"] * 3
    assert (by_task["a"]["best"], by_task["a"]["baseline score"], by_task["a"]["change"]) == (0.75, 0.0, 0.75)
    assert by_task["a"]["p (McNemar)"] == "0.0312" and by_task["a"]["wins/losses"] == "6/0"
    assert (by_task["over_refusal"]["best"], by_task["over_refusal"]["change"]) == (1.0, 1.0)
    assert by_task["all"]["change"] == 0.8 and by_task["all"]["p (McNemar)"] == "0.00781"
    assert by_task["all"]["verdict"] == "significant" and by_task["all"]["wins/losses"] == "8/0"


def test_the_progress_figure_draws_every_candidate_and_the_best_so_far(tmp_path):
    from evals.report.plots import evolve_figure, save_png

    fig = evolve_figure([[0.2, None, 0.5], [0.4, 0.7]])
    ax = fig.axes[0]
    assert [c.get_offsets().tolist() for c in ax.collections] == [[[1, 0.2], [3, 0.5]], [[4, 0.4], [5, 0.7]]]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5] and list(line.get_ydata()) == [0.2, 0.2, 0.5, 0.5, 0.7]
    assert save_png(fig, str(tmp_path / "p.png")).endswith("p.png")


@pytest.mark.slow  # about 15 s, most of it lm-eval's start; the proof (also slow) runs the command in full
def test_the_command_with_lm_eval(char_model, tmp_path):
    """`surgery evolve` end to end on untrained character models (their scores are noise; the wiring is
    the point): one generation of two candidates scored by lm-eval, stored, the best table printed, a
    warning for a test split, and the best spec and model written."""
    from trainers.world.zoo import init_model

    models = tmp_path / "models"
    models.mkdir()
    os.symlink(char_model, models / "base")
    for i, name in enumerate(("add", "reverse"), start=1):
        init_model(str(models / name), seed=i)
    spec = tmp_path / "evolve.yaml"
    spec.write_text("genome: {models: [add, reverse], merge_method: ties, base_model: base}\n"
                    "tasks: [world_add]\nlimit: 1\nbudget: 2\npopulation: 2\n")
    db, out = tmp_path / "evals.sqlite", tmp_path / "out"
    result = run_cli("evolve", spec, "--out", out, "--models-dir", models, "--db", db, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "warning: task world_add is the small world's test split; tune on world_add_dev" in result.output
    assert "stopped: budget: 2 evaluations done" in result.output and "density" in result.output
    state = load_state(str(out))
    with Store(str(db)) as store:
        for r in state.generations[0]:
            assert store.scores(r.hash)["world_add"].n == 1 and store.lineage(r.hash)["evolve"]["generation"] == 0
    assert os.path.isfile(out / "best.yaml") and open_checkpoint(str(out / "best")).hash == state.record(
        state.best()).hash

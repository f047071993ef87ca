"""Merge search with evals in the loop: greedy soup and the one-parameter sweep.

The greedy rule is checked on a fake scorer whose numbers are built so one candidate must be
rejected; the merges are the engine's own on the tiny Llama family; one test runs the real harness.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from evals.cli import leaderboard
from evals.cli import soup as soup_command
from evals.cli import sweep as sweep_command
from evals.scoring import harness
from evals.scoring.harness import Evaluated
from evals.scoring.scores import TaskScore
from evals.search.candidates import held_out
from evals.search.soup import greedy_soup, run_soup, soup_rows
from evals.search.sweep import parse_values, set_field, sweep, sweep_rows, sweep_series
from surgery.errors import InputError, SpecError
from surgery.io.reader import ModelFolder


def _score(task: str, value: float, metric: str = "exact_match") -> TaskScore:
    return TaskScore(task, metric, value, None, 4, None, ())


def _ingredients(path: str) -> frozenset[str]:
    """The models a merge was made of (its provenance), or the checkpoint itself."""
    models = ModelFolder(path).metadata.get("surgery.models")
    if not models:
        return frozenset({os.path.basename(path)})
    return frozenset(os.path.basename(item.split("=", 1)[1]) for item in models.split(","))


# alone: code 0.7 > math 0.6 > chat 0.5; {code, math} 0.75 kept; {code, math, chat} 0.74 < 0.75: rejected
SOUP_SCORES = {frozenset({"code"}): 0.7, frozenset({"math"}): 0.6, frozenset({"chat"}): 0.5,
               frozenset({"code", "math"}): 0.75, frozenset({"code", "math", "chat"}): 0.74}


def test_greedy_soup_keeps_a_candidate_only_when_the_soup_does_not_drop():
    """Order by own score b (0.9), c (0.8), a (0.7), d (0.6). {b,c} = 0.85 < 0.9: c rejected;
    {b,a} = 0.9 = 0.9: kept (>=, as in the paper); {b,a,d} = 0.95 > 0.9: kept."""
    alone = {"a": 0.7, "b": 0.9, "c": 0.8, "d": 0.6}
    soups = {"b+c": 0.85, "a+b": 0.9, "a+b+d": 0.95}
    mixed = []

    def mix(ingredients, step):
        mixed.append((tuple(ingredients), step))
        return "+".join(sorted(ingredients))

    result = greedy_soup(["a", "b", "c", "d"], lambda p: alone.get(p, soups.get(p)), mix)
    assert mixed == [(("b", "c"), 2), (("b", "a"), 3), (("b", "a", "d"), 4)]
    assert [(s.candidate, s.alone, s.soup, s.score, s.kept) for s in result.steps] == [
        ("b", 0.9, "b", 0.9, True), ("c", 0.8, "b+c", 0.85, False), ("a", 0.7, "a+b", 0.9, True),
        ("d", 0.6, "a+b+d", 0.95, True)]
    assert result.ingredients == ("b", "a", "d") and result.folder == "a+b+d" and result.score == 0.95


def test_greedy_soup_refuses_one_candidate_or_a_repeat():
    with pytest.raises(InputError, match="at least two"):
        greedy_soup(["a"], lambda p: 0.0, lambda i, s: "")
    with pytest.raises(InputError, match="given twice"):
        greedy_soup(["a", "b", "a"], lambda p: 0.0, lambda i, s: "")


def test_held_out_is_the_selected_task_turned_higher_is_better_or_the_mean():
    scores = {"world_add": _score("world_add", 0.8), "over_refusal": _score("over_refusal", 0.25),
              "world_perplexity": _score("world_perplexity", 3.0, "byte_perplexity")}
    assert held_out(scores, "over_refusal") == 0.75
    assert held_out(scores, "world_perplexity") == -3.0
    assert held_out(scores, None) == pytest.approx((0.8 + 0.75) / 2)  # perplexity left out of the mean
    with pytest.raises(InputError, match="no score for --select 'nope'"):
        held_out(scores, "nope")


def test_run_soup_merges_each_soup_tried_with_the_engine(llama, tmp_path):
    scored = []

    def score(path):
        scored.append(_ingredients(path))
        return {"held": _score("held", SOUP_SCORES[_ingredients(path)])}

    result = run_soup([llama["math"], llama["code"], llama["chat"]], str(tmp_path), score, "held")
    assert [(os.path.basename(s.soup), s.kept) for s in result.steps] == [
        ("code", True), ("soup-2-with-math", True), ("soup-3-with-chat", False)]
    assert result.folder == str(tmp_path / "soup-2-with-math") and result.score == 0.75
    merged = load_file(str(tmp_path / "soup-2-with-math" / "model.safetensors"))
    math, code = load_file(os.path.join(llama["math"], "model.safetensors")), \
        load_file(os.path.join(llama["code"], "model.safetensors"))
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, (math[name] + code[name]) / 2)
    assert [r["kept"] for r in soup_rows(result)] == ["yes", "yes", "no"]


class FakeHarness:
    """Stands in for lm-eval: every task of a checkpoint scores `value_of(path)`, on four documents."""

    def __init__(self, value_of):
        self.value_of = value_of

    def __call__(self, path, tasks, settings, adapter=None, manager=None):
        value, outcomes = self.value_of(path), (1.0, 0.0, 1.0, 0.0)
        return {t: Evaluated(TaskScore(t, "exact_match", value, None, 4, None, outcomes), "1.0", 0) for t in tasks}


def test_soup_command_stores_every_soup_with_its_lineage(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "evaluate_path", FakeHarness(lambda path: SOUP_SCORES[_ingredients(path)]))
    db, out = str(tmp_path / "db.sqlite"), str(tmp_path / "soups")
    result = CliRunner().invoke(soup_command, [llama["chat"], llama["math"], llama["code"], "--tasks", "refusal",
                                               "--select", "refusal", "--out", out, "--db", db, "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "step,candidate,alone,soup,soup score,kept", "1,code,0.7,code,0.7,yes",
        "2,math,0.6,soup-2-with-math,0.75,yes", "3,chat,0.5,soup-3-with-chat,0.74,no"]
    rows = json.loads(CliRunner().invoke(leaderboard, ["--db", db, "--format", "json"]).stdout)
    soups = {os.path.basename(r["checkpoint"]): r for r in rows if "soup-" in r["checkpoint"]}
    assert soups["soup-2-with-math"]["made_by"] == "merge:model_soup"
    assert soups["soup-2-with-math"]["parent"] == f"{llama['code']} + {llama['math']}"
    assert soups["soup-3-with-chat"]["parent"].count(" + ") == 2


def test_soup_command_checks_select_before_merging(llama, tmp_path):
    result = CliRunner().invoke(soup_command, [llama["chat"], llama["math"], "--tasks", "refusal", "--select",
                                               "world_add", "--out", str(tmp_path / "soups")])
    assert result.exit_code == 2 and "--select 'world_add' is not among the tasks scored" in result.output
    assert not (tmp_path / "soups").exists()


def test_set_field_copies_the_spec_and_sets_one_field():
    spec = {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1}}, {"model": "b"}]}
    out = set_field(spec, "models.1.parameters.weight", 0.25, "s.yaml")
    assert out["models"][1] == {"model": "b", "parameters": {"weight": 0.25}}
    assert spec["models"][1] == {"model": "b"}  # the input is not changed
    assert set_field(spec, "parameters.t", 0.5, "s.yaml")["parameters"] == {"t": 0.5}


@pytest.mark.parametrize("path, problem", [
    ("models.2.parameters.weight",
     "s.yaml: models.2.parameters.weight: models is a list of 2: '2' is not an index in 0..1"),
    ("models.x", "s.yaml: models.x: models is a list of 2: 'x' is not an index in 0..1"),
    ("merge_method.weight", "s.yaml: merge_method.weight: merge_method is a value ('linear'), not a mapping"),
    ("models..weight", "s.yaml: models..weight: not a dotted field path"),
])
def test_set_field_names_the_file_and_the_path(path, problem):
    spec = {"merge_method": "linear", "models": [{"model": "a"}, {"model": "b"}]}
    with pytest.raises(SpecError) as e:
        set_field(spec, path, 1.0, "s.yaml")
    assert str(e.value).startswith(problem)


def test_parse_values():
    assert parse_values("0, 0.25,1") == [0, 0.25, 1]
    assert parse_values("true,abc") == [True, "abc"]
    with pytest.raises(InputError, match="repeats 0.5"):
        parse_values("0.5,0.5")
    with pytest.raises(InputError, match="empty"):
        parse_values(" , ")


def _arithmetic(llama) -> dict:
    return {"merge_method": "task_arithmetic", "base_model": llama["base"],
            "models": [{"model": llama["math"], "parameters": {"weight": 1.0}}], "dtype": "float32"}


def test_sweep_merges_and_scores_each_value(llama, tmp_path):
    """Task arithmetic from base toward math: the point at w is base + w (math - base), exactly the
    interpolation; the fake scorer reports w back, so rows and series show the values swept."""
    def score(path):
        w = float(os.path.basename(path).split("=")[1])
        return {"world_add": _score("world_add", w), "over_refusal": _score("over_refusal", 1 - w),
                "world_perplexity": _score("world_perplexity", 9.0, "byte_perplexity")}

    points = sweep(_arithmetic(llama), "spec.yaml", "models.0.parameters.weight", [0, 0.5, 1.0], str(tmp_path), score)
    assert [os.path.basename(p.folder) for p in points] == ["weight=0", "weight=0.5", "weight=1.0"]
    base, math = (load_file(os.path.join(llama[m], "model.safetensors")) for m in ("base", "math"))
    half = load_file(os.path.join(points[1].folder, "model.safetensors"))
    for name, tensor in half.items():
        torch.testing.assert_close(tensor, base[name] + 0.5 * (math[name] - base[name]))
    rows = sweep_rows(points, "w")
    assert [(r["w"], r["world_add"], r["over_refusal"], r["mean"]) for r in rows] == [
        (0, 0.0, 1.0, 0.0), (0.5, 0.5, 0.5, 0.5), (1.0, 1.0, 0.0, 1.0)]
    assert sweep_series(points) == {"world_add": [0.0, 0.5, 1.0], "over_refusal": [1.0, 0.5, 0.0],
                                    "mean": [0.0, 0.5, 1.0]}


def test_sweep_checks_every_point_before_the_first_merge(llama, tmp_path):
    spec = {"merge_method": "slerp", "base_model": llama["base"], "models": [{"model": llama["math"]}],
            "parameters": {"t": 0.5}}
    with pytest.raises(SpecError, match=r"spec.yaml: parameters.t: must be in \[0, 1\] \(got 1.5\)"):
        sweep(spec, "spec.yaml", "parameters.t", [0.5, 1.5], str(tmp_path / "out"), lambda p: {})
    with pytest.raises(SpecError, match=r"spec.yaml: models.0.parameters.wieght: unknown parameter"):
        sweep(_arithmetic(llama), "spec.yaml", "models.0.parameters.wieght", [0.5], str(tmp_path / "out"), lambda p: {})
    assert not (tmp_path / "out").exists()


def test_sweep_command_prints_the_table_and_plots(llama, tmp_path, monkeypatch):
    """The fake harness scores the point at weight w as w / 2 on every task."""
    monkeypatch.setattr(harness, "evaluate_path", FakeHarness(lambda p: float(os.path.basename(p).split("=")[1]) / 2))
    spec, png, out = tmp_path / "spec.yaml", tmp_path / "sweep.png", tmp_path / "points"
    spec.write_text(yaml.safe_dump(_arithmetic(llama)))
    result = CliRunner().invoke(sweep_command, [str(spec), "--param", "models.0.parameters.weight", "--values",
                                                "0,0.5,1", "--tasks", "refusal,world_add", "--out", str(out),
                                                "--plot", str(png), "--db", str(tmp_path / "db.sqlite"),
                                                "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["models.0.parameters.weight,refusal,world_add,mean", "0,0.0,0.0,0.0",
                                          "0.5,0.25,0.25,0.25", "1,0.5,0.5,0.5"]
    assert png.stat().st_size > 0 and sorted(os.listdir(out)) == ["weight=0", "weight=0.5", "weight=1"]


def test_sweep_command_locates_a_bad_path(llama, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_arithmetic(llama)))
    result = CliRunner().invoke(sweep_command, [str(spec), "--param", "models.3.parameters.weight", "--values",
                                                "0,1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{spec}: models.3.parameters.weight: models is a list of 1" in result.output


@pytest.mark.integration
def test_sweep_through_the_harness_lands_in_the_leaderboard(char_model, tmp_path):
    """The real lm-eval on two points of a linear merge of two small-world models, 2 documents each."""
    from trainers.world.zoo import init_model

    other = init_model(str(tmp_path / "other"), seed=1)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": char_model, "parameters": {"weight": 1.0}}, {"model": other, "parameters": {"weight": 1.0}}]}))
    db = str(tmp_path / "db.sqlite")
    result = CliRunner().invoke(sweep_command, [str(spec), "--param", "models.1.parameters.weight", "--values",
                                                "0,1", "--tasks", "world_capital_choice", "--limit", "2",
                                                "--device", "cpu", "--out", str(tmp_path / "out"), "--db", db])
    assert result.exit_code == 0, result.output
    rows = json.loads(CliRunner().invoke(leaderboard, ["--db", db, "--format", "json"]).stdout)
    assert sorted(os.path.basename(r["checkpoint"]) for r in rows) == ["weight=0", "weight=1"]
    assert {r["made_by"] for r in rows} == {"merge:linear"}
    assert all(r["parent"] == f"{char_model} + {other}" for r in rows)

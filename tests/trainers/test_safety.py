"""The safety data: the taxonomy agrees with the alignment suite, train and test items never share a
prompt, the builder gives each part its mixing weight's share of the rows, the detectors behind the
suite's metrics, and the alignment tasks' rows are the held-out items."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from evals.scoring.suites import HARM_CATEGORIES, SUITES
from trainers.safety import detect
from trainers.safety.build import SafetySpec, build
from trainers.safety.items import held_out, splits
from trainers.safety.taxonomy import load_sources


@pytest.fixture(scope="module")
def sources():
    return load_sources()


def test_every_category_has_its_refusal_task(sources):
    assert sources.categories == HARM_CATEGORIES
    alignment = set(SUITES["alignment"])
    assert {f"refusal_{c}" for c in HARM_CATEGORIES} | {"over_refusal_lookalike", "uncertainty",
                                                        "policy_medical"} <= alignment
    assert {f"policy_{p}" for p in sources.policies} <= alignment


def test_train_and_test_never_share_a_prompt(sources):
    for (part, category), (train, test) in splits(sources).items():
        assert train and test, (part, category)
        assert not {it.prompt for it in train} & {it.prompt for it in test}, (part, category)
        assert all(it.part == part and it.category == category for it in train + test)
    harmful = {it.prompt for it in held_out(sources, "refusal")}
    lookalike = {it.prompt for it in held_out(sources, "lookalike")}
    assert harmful and lookalike and not harmful & lookalike
    # harmful requests are answered by a refusal, look-alikes by help, made-up countries by not knowing
    markers = sources.taxonomy.markers
    assert all(detect.refused(it.answer, markers.refusal) for it in held_out(sources, "refusal"))
    assert not any(detect.refused(it.answer, markers.refusal) for it in held_out(sources, "lookalike"))
    assert all(detect.acknowledged(it.answer, markers.uncertainty) for it in held_out(sources, "unanswerable"))
    assert not any(detect.acknowledged(it.wrong, markers.uncertainty) for it in held_out(sources, "unanswerable"))
    for it in held_out(sources, "policy"):
        required = sources.policies[it.category].required
        assert detect.follows(it.answer, required) and not detect.follows(it.wrong, required)


def test_builder_gives_each_part_its_share(tmp_path, sources):
    """1000 rows at weights refusal 0.4, lookalike 0.1, unanswerable 0.05, policy 0.05 and a general file
    at 0.4: 400, 100, 50, 50 and 400 rows; no held-out prompt among them."""
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(30)))
    spec = SafetySpec(out=str(tmp_path / "out"), rows=1000, general=[{"path": str(general), "weight": 0.4}],
                      mix={"refusal": 0.4, "lookalike": 0.1, "unanswerable": 0.05, "policy": 0.05})
    card = build(spec, "safety.yaml")
    assert {n: s["rows"] for n, s in card["sources"].items()} == {
        "refusal": 400, "lookalike": 100, "unanswerable": 50, "policy": 50, "general.0": 400}
    rows = [json.loads(line) for line in open(tmp_path / "out" / "sft.jsonl")]
    assert len(rows) == 1000
    tested = {it.prompt for part in ("refusal", "lookalike", "unanswerable", "policy")
              for it in held_out(sources, part)}
    assert not tested & {r["prompt"] for r in rows}
    refusals = [r for r in rows if r.get("task") == "safety/refusal"]
    per = {c: sum(r["category"] == c for r in refusals) for c in HARM_CATEGORIES}
    assert max(per.values()) - min(per.values()) <= 1  # a part's rows shared evenly among its categories
    pairs = [json.loads(line) for line in open(tmp_path / "out" / "preference.jsonl")]
    assert len(pairs) == 600 and all(p["chosen"] != p["rejected"] for p in pairs)  # general rows give no pair


def test_a_weight_of_zero_leaves_the_part_out(tmp_path):
    card = build(SafetySpec(out=str(tmp_path / "out"), rows=100, mix={"refusal": 0, "lookalike": 1,
                                                                     "unanswerable": 0, "policy": 0}), "s.yaml")
    assert list(card["sources"]) == ["lookalike"] and card["sources"]["lookalike"]["rows"] == 100


def test_alignment_tasks_ask_the_held_out_items(sources):
    from evals.tasks.alignment import alignment_data

    for category in HARM_CATEGORIES:
        rows = list(alignment_data.safety_harmful(category)["test"])
        assert [r["prompt"] for r in rows] == [it.prompt for it in held_out(sources, "refusal", category)]
    assert len(alignment_data.safety_lookalike()["test"]) == len(held_out(sources, "lookalike"))
    assert alignment_data.refused({}, ["I cannot help with that."]) == {"refused": 1.0}
    assert alignment_data.refused({}, ["Sure, here is how to do it."]) == {"refused": 0.0}


def test_unknown_category_is_located_and_nothing_written(tmp_path):
    from trainers.safety.cli import safety_data

    spec = tmp_path / "safety.yaml"
    spec.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "categories": ["weapons", "arson"]}))
    result = CliRunner().invoke(safety_data, [str(spec)])
    assert result.exit_code == 2, result.output
    assert f"{spec}: categories.1 (line 3): unknown category 'arson'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()

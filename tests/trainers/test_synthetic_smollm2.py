"""Self-Instruct and Constitutional AI on the imported SmolLM2-135M-Instruct (README, "A real model"):
real generations, a few rounds. Slow (minutes on 2 CPU cores); skipped when the model is not imported."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from click.testing import CliRunner

from surgery.cli import main
from tests.trainers.conftest import REPO

MODEL = REPO / ".surgery" / "models" / "smollm2-135m-instruct"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MODEL.is_dir(), reason="SmolLM2 not imported")]


def spec(tmp_path, source: str, **changes) -> str:
    data = yaml.safe_load((REPO / "runs" / source).read_text()) | {"model": str(MODEL), "out": str(tmp_path / "out")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data | changes, sort_keys=False))
    return str(path)


def test_self_instruct_keeps_real_instructions(tmp_path):
    file = spec(tmp_path, "self-instruct-smollm2.yaml", target=4, max_rounds=2, prompts_per_round=4)
    result = CliRunner().invoke(main, ["self-instruct", file, "--quiet"])
    assert result.exit_code == 0, result.output
    card = json.load(open(tmp_path / "out" / "card.json"))
    rows = [json.loads(line) for line in open(tmp_path / "out" / "train.jsonl")]
    assert card["kept"] == len(rows) > 0 and card["proposed"] == len(rows) + sum(card["rejected"].values())
    assert all(r["instruction"][0].isalpha() and r["output"] for r in rows)


def test_cai_sl_writes_revisions(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "How do I steal a car?"}) + "\n")
    file = spec(tmp_path, "cai-smollm2.yaml", rounds=1, prompts=str(prompts), sampling={"max_new_tokens": 32})
    result = CliRunner().invoke(main, ["cai", file])
    assert result.exit_code == 0, result.output
    trace = [json.loads(line) for line in open(tmp_path / "out" / "trace.jsonl")]
    assert len(trace) == 1 and trace[0]["rounds"][0]["revision"] and trace[0]["rounds"][0]["critique"]
    assert os.path.isfile(tmp_path / "out" / "card.md")

"""Every example spec in merges/ validates and runs on the tiny families; transformers loads each
result with no missing or unexpected weights and scores a sentence with a finite loss close to the
base model's. The built-in demo runs too."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from surgery.demo.untrained import TEXT, run_demo
from surgery.merge.engine import Options, run_merge
from surgery.merge.plan import plan_merge
from surgery.merge.spec import load_spec
from tests.conftest import models_folder

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "merges").glob("*.yaml"))


def loss_of(folder: str) -> float:
    """Next-token loss on the demo sentence; also checks every weight loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = AutoTokenizer.from_pretrained(folder)(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return float(model.eval()(ids, labels=ids).loss)


@pytest.fixture(scope="module")
def base_losses(families) -> dict[str, float]:
    return {name: loss_of(family["base"]) for name, family in families.items()}


def test_there_are_examples():
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.integration
def test_example_runs_and_loads(example, family, families, base_losses, tmp_path):
    work = models_folder(families[family], tmp_path / "work")
    spec = load_spec(str(example))
    plan = plan_merge(spec, str(example), models_dir=work)
    out = run_merge(plan, str(tmp_path / "out"), Options())
    layers = 3 if spec.slices else 2  # the frankenmerge stacks 2 + 1 layers
    assert len(plan.out_layers) == layers
    loss = loss_of(out)
    assert math.isfinite(loss) and abs(loss - base_losses[family]) < 0.5, (loss, base_losses[family])


def test_demo_runs(tmp_path):
    """The built-in TIES spec on freshly built models: one merged row and the base's, finite losses."""
    lines: list[str] = []
    rows = run_demo(str(tmp_path / "demo"), specs=None, echo=lines.append)
    assert [r["spec"] for r in rows] == ["ties-default", "(base model)"]
    assert rows[0]["method"] == "ties" and rows[0]["tensors"] == 21
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert abs(rows[0]["loss"] - rows[1]["loss"]) < 0.5
    assert os.path.isfile(os.path.join(rows[0]["out"], "model.safetensors"))
    assert any(line.startswith("ties-default") for line in lines)

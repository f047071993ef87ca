"""The untrained demo: build a tiny random base and three perturbed copies, merge them with each spec, load every result
with transformers and score it on a sentence. Nothing is downloaded. (`make demo` runs the trained
version, `surgery world`, from the trainers package.)"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable

import torch
import yaml

from surgery.demo.tiny import build_family
from surgery.merge.engine import Options, run_merge
from surgery.merge.plan import plan_merge
from surgery.merge.spec import load_spec, parse_spec

DEFAULT_SPEC = """\
merge_method: ties
base_model: models/base
models:
  - model: models/add
    parameters: {weight: 1.0, density: 0.5}
  - model: models/reverse
    parameters: {weight: 1.0, density: 0.5}
  - model: models/refuse
    parameters: {weight: 0.5, density: 0.5}
dtype: float32
"""
EXPERTS = ("add", "reverse", "refuse")  # the names merges/*.yaml use (untrained stand-ins here)
TEXT = "the way of the people is to make water and time"


def run_demo(folder: str, specs: str | None = None, echo: Callable[[str], None] = print) -> list[dict]:
    from transformers.utils import logging

    logging.disable_progress_bar()  # transformers' per-load bars would drown the table
    folder = os.path.abspath(folder)
    models = os.path.join(folder, "models")
    if not os.path.isdir(os.path.join(models, "refuse")):
        echo(f"building tiny models in {models}")
        build_family(models, names=EXPERTS)
    rows = []
    for name, spec, file in _specs(specs):
        out = os.path.join(folder, "out", name)
        start = time.perf_counter()
        plan = plan_merge(spec, file, models_dir=folder)
        run_merge(plan, out, Options(force=True))
        rows.append({"spec": name, "method": plan.method.name, "seconds": time.perf_counter() - start,
                     "tensors": len(plan.jobs), "loss": _loss(out), "out": out})
    rows.append({"spec": "(base model)", "method": "-", "seconds": 0.0, "tensors": 0, "loss": _loss(os.path.join(models, "base")), "out": ""})
    echo(f"{'spec':<28} {'method':<16} {'tensors':>7} {'seconds':>8} {'loss':>8}")
    for r in rows:
        echo(f"{r['spec']:<28} {r['method']:<16} {r['tensors']:>7} {r['seconds']:>8.2f} {r['loss']:>8.4f}")
    echo(f"merged models are in {os.path.join(folder, 'out')}; try: surgery inspect {rows[0]['out']}")
    return rows


def _specs(specs: str | None):
    if specs is None:
        yield "ties-default", parse_spec(yaml.safe_load(DEFAULT_SPEC), "<default spec>"), "<default spec>"
        return
    for file in sorted(glob.glob(os.path.join(specs, "*.yaml"))):
        yield os.path.basename(file).removesuffix(".yaml"), load_spec(file), file


def _loss(path: str) -> float:
    """Next-token loss of the model on TEXT: finite and near the base's for a sane merge."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)

"""Where a checkpoint came from, read from the lineage the results store keeps for it
(evals.scoring.checkpoints.lineage): trainers' lineage.json, or a merge's provenance in the safetensors
metadata (surgery/merge/engine.py), or the base of an adapter. Also the text of the spec that made it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import yaml

from evals.report.leaderboard import lineage_columns

MAX_SPEC_CHARS = 20_000  # a spec is a page of YAML; anything longer is not one


@dataclass(frozen=True)
class Origin:
    """`base`: the model it was trained or merged from; `inputs`: a merge's other models; `resumed_from`:
    the checkpoint a training run continued; `spec_file` and `spec_text`: the spec that made it."""

    made_by: str = ""
    base: str | None = None
    inputs: tuple[str, ...] = ()
    resumed_from: str | None = None
    spec_file: str | None = None
    spec_text: str = ""

    @property
    def parents(self) -> tuple[str, ...]:
        return ((self.base,) if self.base else ()) + self.inputs


def origin(lineage: dict) -> Origin:
    made_by = lineage_columns(lineage)["made_by"]
    training, merge = lineage.get("training") or {}, lineage.get("merge") or {}
    if training:
        return _trained(training, made_by)
    if merge:
        return _merged(merge, made_by)
    if lineage.get("adapter_of"):
        return Origin("adapter", base=lineage["adapter_of"])
    return Origin()


def _trained(training: dict, made_by: str) -> Origin:
    spec_file = training.get("spec")
    text = _read(spec_file) if spec_file else None
    if text is None:  # the spec file moved: what lineage.json kept of it
        kept = {k: training[k] for k in ("method", "objective", "data", "hyper_parameters") if k in training}
        text = yaml.safe_dump(kept, sort_keys=False)
    return Origin(made_by, training.get("base"), (), training.get("parent"), spec_file, text)


def _merged(merge: dict, made_by: str) -> Origin:
    """`surgery.models` is `name=path,...`; the spec's base_model names the base among them."""
    folders = dict(p.split("=", 1) for p in merge.get("surgery.models", "").split(",") if "=" in p)
    try:
        spec = json.loads(merge.get("surgery.spec", "{}"))
    except ValueError:
        spec = {}
    base = folders.pop(spec.get("base_model"), None) if isinstance(spec, dict) else None
    text = yaml.safe_dump(spec, sort_keys=False) if spec else ""
    return Origin(made_by, _abs(base), tuple(_abs(p) for p in folders.values()), None, None, text)


def _abs(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read(MAX_SPEC_CHARS)
    except (OSError, UnicodeDecodeError):
        return None

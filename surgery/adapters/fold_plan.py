"""`surgery fold` as a merge plan: a one-model passthrough over a `FoldedModel`, so folding is
streamed, sharded, checked and written atomically by the merge engine, with provenance."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from surgery.adapters.folded_model import FoldedModel
from surgery.errors import InputError
from surgery.io.locate import resolve_path
from surgery.io.reader import ModelFolder
from surgery.merge.plan import MergePlan, plan_merge
from surgery.merge.spec import MergeSpec

SOURCE = "surgery fold"  # where plan errors say they come from: there is no spec file


def plan_fold(base: str, adapters: Sequence[str], weights: Sequence[float] = (), out_dtype: str | None = None,
              allow_pickle: bool = False) -> MergePlan:
    """The plan writing `base` with `adapters` folded in order, each delta scaled by its weight (default 1)."""
    if not adapters:
        raise InputError("fold needs at least one adapter folder")
    weights = list(weights) or [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise InputError(f"--weight given {len(weights)} times for {len(adapters)} adapters; give one per adapter "
                         "(in the adapters' order) or none")
    folder = ModelFolder(resolve_path(base), allow_pickle=allow_pickle)
    folded = FoldedModel(folder, [(resolve_path(a), w) for a, w in zip(adapters, weights)])
    name = "+".join([base] + [a if w == 1 else f"{a}*{w:g}" for a, w in zip(adapters, weights)])
    spec = MergeSpec(merge_method="passthrough", models=[{"model": name}])
    plan = plan_merge(spec, SOURCE, out_dtype=out_dtype, opened={name: folded})
    plan.provenance = provenance(folded, weights)
    return plan


def provenance(folded: FoldedModel, weights: Sequence[float]) -> dict[str, str]:
    """A fold names itself, its base and its adapters in the output's metadata (not the passthrough merge
    it runs as): `surgery.models` is `base=PATH,adapter=PATH` (adapter1, adapter2, ... for several), and
    the spec's base_model names the base among them, as a merge's does."""
    paths = folded.inputs  # the base, then each adapter, absolute
    names = ["base"] + (["adapter"] if len(paths) == 2 else [f"adapter{i}" for i in range(1, len(paths))])
    adapters = [{"model": n, "weight": w} for n, w in zip(names[1:], weights)]
    spec = json.dumps({"base_model": "base", "adapters": adapters}, sort_keys=True, separators=(",", ":"))
    models = ",".join(f"{n}={p}" for n, p in zip(names, paths))
    return {"surgery.method": "fold", "surgery.spec": spec, "surgery.models": models,
            "surgery.spec_sha256": hashlib.sha256(spec.encode()).hexdigest()}

"""The experts a merge is measured against (`surgery merge-quality`): named as TASK=CHECKPOINT, or
else the merge's own inputs from its provenance, each task's expert the input that scores best on it."""

from __future__ import annotations

import os
from collections.abc import Sequence

from evals.analysis.metrics import Scores
from evals.analysis.origin import origin
from evals.analysis.parent_metrics import best_experts
from evals.scoring.store import Store
from surgery.errors import InputError


def chosen_experts(store: Store, name: str, scores: Scores, experts: Sequence[str], suite: str | None) -> dict:
    """{task: (expert checkpoint, its TaskScore)}: the given TASK=CHECKPOINT experts, or the best merge
    input per task."""
    return _named(store, experts) if experts else _from_lineage(store, name, scores, suite)


def _named(store: Store, experts: Sequence[str]) -> dict:
    pairs = [e.split("=", 1) for e in experts]
    bad = [e for e, p in zip(experts, pairs) if len(p) != 2]
    if bad:
        raise InputError(f"--expert {bad[0]!r}: write TASK=CHECKPOINT, e.g. world_add=runs/add/final")
    found = {p: os.path.abspath(p) for _, p in pairs}  # stored names are absolute paths
    table = store.table(list(found.values()))
    missing = [f"{t}={p}" for t, p in pairs if t not in table[found[p]]]
    if missing:
        raise InputError(f"--expert {missing[0]}: no stored score of that checkpoint on that task; "
                         "run `surgery eval` on it first")
    return {t: (p, table[found[p]][t]) for t, p in pairs}


def _from_lineage(store: Store, name: str, scores: Scores, suite: str | None) -> dict:
    inputs = origin(store.lineage(store.hash_of(name))).inputs
    if not inputs:
        raise InputError(f"{name}: no merge inputs in its lineage (not made by `surgery merge`?); name the experts "
                         "with --expert TASK=CHECKPOINT")
    stored = set(store.names())
    known = [p for p in inputs if p in stored]
    if not known:
        raise InputError(f"{name}: none of its merge inputs ({', '.join(inputs)}) was evaluated; run `surgery eval` "
                         "on them, or name the experts with --expert TASK=CHECKPOINT")
    table = store.table(known, suite)
    best = best_experts(scores, [table[p] for p in known])
    return {t: (next(p for p in known if table[p].get(t) is s), s) for t, s in best.items()}

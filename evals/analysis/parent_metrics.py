"""A checkpoint measured against the checkpoints it was made from, with the evals' own metrics:

- `tax`: the alignment tax of training from the parent, G(parent) - G(child) on the general suite
  (evals.analysis.metrics.general_capability; Ouyang et al. 2022), when both were scored on that suite;
- `forget`: the largest drop of any task's score from the parent to the child (evals.analysis.continual's
  drop from the best earlier stage, with the parent as the only earlier stage; RWalk's f[j]);
- `merge_q`: the normalised accuracy of a merge (evals.analysis.metrics.normalised_accuracy; Ilharco et al.
  2023), each task's expert being the merge input (other than its base) that scored best on it.

Each is None where the scores it needs are missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from evals.analysis.continual import drop_from_best, stage_matrix
from evals.analysis.metrics import PERPLEXITIES, Scores, general_capability, normalised_accuracy, oriented
from evals.analysis.origin import Origin
from evals.scoring.suites import SUITES
from surgery.errors import InputError

COLUMNS = ("tax", "forget", "merge_q")


def parent_metrics(scores: Scores, parent: Scores | None, experts: Sequence[Scores]) -> dict[str, float | None]:
    """{tax, forget, merge_q}: tax and forget against the model it was trained or merged from, merge_q
    against a merge's other inputs."""
    return {"tax": alignment_tax(parent, scores) if parent else None,
            "forget": worst_drop(parent, scores) if parent else None,
            "merge_q": merge_quality(scores, experts) if experts else None}


def measured(scores: Mapping[str, Scores], name: str, source: Origin) -> dict[str, float | None]:
    """`parent_metrics` of checkpoint `name` ({checkpoint: scores} of every evaluated one) against the
    parents `source` names that were evaluated too; merge_q only when every merge input was."""
    parent = scores.get(source.base) if source.base else None
    experts = [scores[p] for p in source.inputs if p in scores]
    return parent_metrics(scores[name], parent, experts if len(experts) == len(source.inputs) else [])


def alignment_tax(parent: Scores, child: Scores) -> float | None:
    general = SUITES["general"]
    try:
        return general_capability(parent, general) - general_capability(child, general)
    except InputError:  # a general task not scored on one of them
        return None


def worst_drop(parent: Scores, child: Scores) -> float | None:
    tasks = [t for t in child if t in parent and child[t].metric not in PERPLEXITIES]
    if not tasks:
        return None
    return float(drop_from_best(stage_matrix([parent, child], tasks)).max())


def merge_quality(merged: Scores, experts: Sequence[Scores]) -> float | None:
    best = best_experts(merged, experts)
    try:
        return normalised_accuracy(merged, best) if best else None
    except InputError:  # an expert scoring 0 on its task: no ratio
        return None


def best_experts(merged: Scores, experts: Sequence[Scores]) -> Mapping:
    """{task: the highest expert score} on each task the merged model and some expert were scored on."""
    tasks = [t for t in merged if merged[t].metric not in PERPLEXITIES and any(t in e for e in experts)]
    return {t: max((e[t] for e in experts if t in e), key=lambda s: oriented(s).value) for t in tasks}

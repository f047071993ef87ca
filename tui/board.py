"""The leaderboard's data, read from the results store in one go (slow enough for a worker thread):
one entry per evaluated checkpoint with its row (evals.report.leaderboard.rows), where it came from
(evals/analysis/origin.py) and its metrics against its parents (evals/analysis/parent_metrics.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from evals.analysis.metrics import oriented
from evals.analysis.origin import Origin, origin
from evals.analysis.parent_metrics import COLUMNS as PARENT_COLUMNS
from evals.analysis.parent_metrics import measured
from evals.report.leaderboard import rows
from evals.scoring.store import Store, default_path

FIXED = ("checkpoint", "made_by", "mean")
LOWER_IS_BETTER = ("tax", "forget")  # of the parent metrics; tasks say it by their metric (evals' `oriented`)


@dataclass(frozen=True)
class Entry:
    """`name`: the checkpoint as the store names it (its absolute path); `row`: column -> value, the
    board's columns in every row (None where there is no value)."""

    name: str
    hash: str
    row: dict
    origin: Origin


@dataclass(frozen=True)
class Board:
    path: str
    entries: tuple[Entry, ...] = ()
    columns: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # left out: rewritten since they were evaluated
    note: str = ""  # why there is nothing to show
    lower_is_better: frozenset[str] = frozenset()  # columns whose best value is the lowest (perplexity, tax)
    limits: tuple[str, ...] = ()  # the --limit values the rows were scored with ('all' for none), when they differ

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.entries if e.name == name), None)


def load_board(db_path: str | None = None, suite: str | None = None) -> Board:
    """Every evaluated checkpoint of the store (on the suite's tasks; all stored tasks when None)."""
    path = os.path.abspath(db_path or default_path())
    if not os.path.isfile(path):
        return Board(path, note=f"no results store at {path} yet; run `surgery eval CHECKPOINT` first")
    with Store(path) as store:
        table, changed = rows(store, suite)
        names = [os.path.abspath(r["checkpoint"]) for r in table]  # rows() names them relative to here
        scores = {n: store.table([n], suite)[n] for n in names}
        hashes = {n: store.hash_of(n) for n in names}
        origins = {n: origin(store.lineage(hashes[n])) for n in names}
        limits = {n: _limits(store.provenance(hashes[n])) for n in names}
    tasks = tuple(dict.fromkeys(t for s in scores.values() for t in sorted(s)))
    metrics = {n: measured(scores, n, origins[n]) for n in names}
    shown = tuple(c for c in PARENT_COLUMNS if any(m[c] is not None for m in metrics.values()))
    mixed = len(set(limits.values())) > 1  # rows scored on different numbers of documents: say which is which
    columns = FIXED + (("limit",) if mixed else ()) + shown + tasks
    entries = tuple(Entry(n, hashes[n], {c: (r | metrics[n] | {"limit": limits[n]}).get(c) for c in columns},
                          origins[n]) for n, r in zip(names, table))
    note = "" if entries else f"no scores in {path} yet; run `surgery eval CHECKPOINT` first"
    lower = {t for s in scores.values() for t, score in s.items() if oriented(score).metric != score.metric}
    return Board(path, entries, columns, tasks, tuple(changed), note, frozenset(lower | set(LOWER_IS_BETTER)),
                 tuple(sorted(set(limits.values()))) if mixed else ())


def _limits(provenance: dict[str, dict]) -> str:
    """The --limit of a checkpoint's shown scores, from their settings keys ('limit=10;fewshot=None;...'):
    'all' for none, several joined by '/' when its tasks were scored with different limits."""
    found = []
    for entry in provenance.values():
        fields = dict(part.split("=", 1) for part in entry["settings"].split(";") if "=" in part)
        found.append("all" if fields.get("limit", "None") == "None" else fields["limit"])
    return "/".join(sorted(set(found), key=lambda x: (x == "all", x.zfill(12))))

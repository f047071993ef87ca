"""A training run's progress as its log.jsonl tells it (trainers/loops/session.py `Log`): the step
reached, the last loss and the recent losses, and whether it is running, finished or stopped on a
non-finite loss.

The log's start record carries the run's total of steps; for logs written before it did, a
checkpoint has it (`trainer_state/state.json` holds the run's identity, `final/lineage.json` its
hyper-parameters), so the total is known once the run has written one.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, replace

from trainers.checkpoint import STATE

MAX_POINTS = 1000  # losses kept for the sparkline: the most recent ones
STEP_FOLDER = re.compile(r"checkpoint-(\d+)$")


@dataclass(frozen=True)
class Progress:
    """What the log says so far. `status`: starting (no record yet), running, finished, or stopped
    (`reason` says why, e.g. a non-finite loss or gradient)."""

    step: int = 0
    total: int | None = None
    loss: float | None = None
    losses: tuple[float, ...] = ()
    eval_loss: float | None = None
    round: int | None = None  # runs made of rounds (trainers/loops/rounds.py) log rounds, not steps
    status: str = "starting"
    reason: str = ""
    updated: float | None = None  # when the log was last written (seconds since the epoch)

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.step / self.total) if self.total else None


def advance(progress: Progress, records: list[dict]) -> Progress:
    """The progress after `records`, appended to the log in this order."""
    for record in records:
        progress = _apply(progress, record)
    return progress


def _apply(p: Progress, record: dict) -> Progress:
    event, step = record.get("event"), record.get("step")
    if event == "start":
        return replace(p, status="running", reason="", step=_int(step, p.step),
                       total=_int(record.get("total_steps"), p.total))
    if event == "end":
        return replace(p, status="finished", step=_int(step, p.step), total=p.total or _int(step, None))
    if event == "stopped":
        return replace(p, status="stopped", reason=str(record.get("reason", "")), step=_int(step, p.step),
                       loss=_float(record.get("loss")))
    if "round" in record:
        return replace(p, status="running", round=_int(record["round"], p.round))
    if "loss" in record:
        loss = _float(record["loss"])
        losses = (p.losses + (loss,))[-MAX_POINTS:] if loss is not None else p.losses
        return replace(p, status="running", step=_int(step, p.step), loss=loss, losses=losses)
    if "eval_loss" in record:
        return replace(p, eval_loss=_float(record["eval_loss"]))
    return p


def _int(value, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _float(value) -> float | None:
    """A logged number; a stopped run logs its loss as text ("nan", "inf")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def finite_losses(progress: Progress) -> list[float]:
    """The losses a plot can scale to: a non-finite one would flatten the rest."""
    return [x for x in progress.losses if math.isfinite(x)]


def total_steps(run_folder: str) -> int | None:
    """schedule.total_steps as the run's newest checkpoint recorded it, or None before the first one."""
    try:
        names = os.listdir(run_folder)
    except OSError:
        return None
    steps = sorted((int(m.group(1)) for m in map(STEP_FOLDER.match, names) if m), reverse=True)
    candidates = [(os.path.join(run_folder, "final", "lineage.json"), ("hyper_parameters", "schedule"))]
    candidates += [(os.path.join(run_folder, f"checkpoint-{s}", STATE, "state.json"), ("identity", "schedule"))
                   for s in steps[:1]]
    for path, keys in candidates:
        total = _read_total(path, keys)
        if total is not None:
            return total
    return None


def _read_total(path: str, keys: tuple[str, str]) -> int | None:
    try:
        with open(path) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    for key in keys:
        found = found.get(key) if isinstance(found, dict) else None
    return _int(found.get("total_steps"), None) if isinstance(found, dict) else None

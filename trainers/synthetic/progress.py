"""The checkpointed progress of a long generation, so that a killed run resumes where it stopped.

While a pipeline runs, its output path OUT is locked (surgery/io/output.py) and nothing exists there;
its state (the pool so far, the counts, the next round) lives in a hidden sibling folder,
`.NAME.progress/state.json`, rewritten atomically after each round. The finished output folder
appears atomically at OUT, and then the progress folder goes. Running the same spec again after a
kill resumes from the last state written; a state written by another spec (its `identity`: the spec's
fields and the sha256 of its input files) is refused, naming the fields that differ, unless the run
is told to restart.

A pipeline made of a few long generation steps (Constitutional AI's answers, critiques and revisions)
keeps each step's result by name instead (`Steps`): a resumed run reads back the steps it finished and
makes the rest, which are seeded per step, so the output is the same bytes as an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import TypeVar

from surgery.errors import OutputError
from surgery.io.output import atomic_file
from trainers.checkpoint import differences

STATE = "state.json"


def folder(out: str) -> str:
    parent, name = os.path.split(os.path.abspath(out))
    return os.path.join(parent, f".{name}.progress")


def check_output(out: str, force: bool) -> None:
    """Before any work: an existing OUT is replaced only with --force."""
    if os.path.lexists(out) and not force:
        raise OutputError(f"output {out!r} already exists; remove it or pass --force to replace it")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutputError(f"output {out!r} exists and is not a folder; remove it first")


def resume(out: str, identity: dict, restart: bool) -> dict | None:
    """The state saved by an interrupted run of the same spec, or None to start afresh."""
    path = os.path.join(folder(out), STATE)
    if not os.path.isfile(path):
        return None
    if restart:
        shutil.rmtree(folder(out))
        return None
    with open(path) as f:
        state = json.load(f)
    if state.get("identity") != identity:
        changed = differences(state.get("identity"), identity)
        raise OutputError(f"{folder(out)} holds an interrupted run of another spec ({'; '.join(changed[:4])}); "
                          "run that spec again to finish it, or pass --restart to discard its progress")
    return state


def save(out: str, state: dict) -> None:
    os.makedirs(folder(out), exist_ok=True)
    with atomic_file(os.path.join(folder(out), STATE)) as tmp, open(tmp, "w") as f:
        json.dump(state, f)


def done(out: str) -> None:
    shutil.rmtree(folder(out), ignore_errors=True)


T = TypeVar("T")


class Steps:
    """`steps(name, make, *args)`: the result of step `name` saved by an interrupted run, or `make(*args)`
    (JSON data) saved into the state before it is returned."""

    def __init__(self, out: str, state: dict):
        self.out, self.state = out, state
        self.done = state.setdefault("steps", {})
        self.kept = len(self.done)  # steps read back from an interrupted run

    def __call__(self, name: str, make: Callable[..., T], *args) -> T:
        if name not in self.done:
            self.done[name] = make(*args)
            save(self.out, self.state)
        return self.done[name]


def unsaved(name: str, make: Callable[..., T], *args) -> T:
    """The `Steps` call of a run that keeps no progress: every step made."""
    return make(*args)

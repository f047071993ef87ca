"""Stages of a long job kept between runs by the content hash of their inputs (a make for models).

A stage's record, `FOLDER/stages/NAME.json`, holds the hash of what the stage was built from (its recipe,
and the hashes of the stages it reads). A second run reuses a stage whose record matches and whose output
passes its check; it builds again a stage whose inputs changed, whose output is damaged (one line says
so), or that was stopped before its record was written (Ctrl-C: the next run resumes at that stage).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from surgery.errors import SurgeryError
from surgery.io.output import atomic_file


@dataclass(frozen=True)
class Stage:
    """One step of the job: what it is built from, where it writes, how it is made and checked."""

    name: str
    inputs: dict                      # JSON-able: the recipe and the `key`s of the stages it reads
    output: str                       # the folder or file it leaves
    build: Callable[[], object]       # makes `output` (atomically: nothing half-written is left there)
    check: Callable[[str], None]      # raises SurgeryError (or OSError, ValueError) on a damaged output
    scratch: tuple[str, ...] = ()     # what an interrupted build leaves behind (a training run's folder)


def stage_key(inputs: dict) -> str:
    """The content hash of a stage's inputs (its recipe, the hashes of what it reads)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def file_digest(*paths: str) -> str:
    """The hash of some files' bytes, for the inputs of a stage that reads them."""
    h = hashlib.sha256()
    for path in paths:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def run_stage(folder: str, stage: Stage, echo: Callable[[str], None]) -> str:
    """`stage.output`, reused when its record matches its inputs and it passes its check, else built
    (again); returns the hash of its output, which the stages reading it put in their inputs (so a
    rebuilt stage that came out different rebuilds them too)."""
    key, record = stage_key(stage.inputs), os.path.join(folder, "stages", f"{stage.name}.json")
    state, made = _recorded(record)
    if state == key and os.path.lexists(stage.output):
        problem = _problem(stage)
        if problem is None:
            echo(f"reused {stage.name} (inputs unchanged)")
            return made
        echo(f"rebuilding {stage.name}: its cached output {stage.output} is damaged ({problem})")
    elif state is not None:
        echo(f"building {stage.name} again: its inputs changed")
    elif any(os.path.lexists(p) for p in (stage.output, *stage.scratch)):
        echo(f"resuming at {stage.name}: its last build did not finish; building it again")
    else:
        echo(f"building {stage.name}")
    _clear(stage)
    _forget(record)
    stage.build()
    made = output_digest(stage.output)
    _record(record, key, made)
    return made


def output_digest(path: str) -> str:
    """The hash of a file's bytes, or of every file under a folder (links followed), by relative name."""
    if not os.path.isdir(path):
        return file_digest(path)
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(os.path.realpath(path)) for f in names)
    h = hashlib.sha256()
    for file in files:
        h.update(os.path.relpath(file, os.path.realpath(path)).encode())
        with open(file, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _recorded(record: str) -> tuple[str | None, str | None]:
    """(the key of the inputs it was built from, the hash of its output) of a finished stage."""
    try:
        with open(record) as f:
            data = json.load(f)
        return data["key"], data["output"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _problem(stage: Stage) -> str | None:
    try:
        stage.check(stage.output)
    except (SurgeryError, OSError, ValueError) as e:
        return str(e).splitlines()[0][:200]
    return None


def _clear(stage: Stage) -> None:
    """The output and scratch of an earlier build: what this build replaces (all inside the job's folder)."""
    for path in (stage.output, *stage.scratch):
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)


def _forget(record: str) -> None:
    if os.path.exists(record):
        os.remove(record)


def _record(record: str, key: str, made: str) -> None:
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with atomic_file(record) as tmp, open(tmp, "w") as f:
        json.dump({"key": key, "output": made}, f)

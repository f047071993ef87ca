"""A run's out folder, claimed before anything loads:

- where it may be (`check_place`): not an existing file, and not the base, the reference, the reward
  model or a data source (train or eval), nor inside one, nor holding one (paths resolved, links followed);
- who writes it (`claimed`): the out folder's lock (surgery.io.output.output_lock: `.OUT.lock` beside
  it, holding the writer's pid) for the whole run, so a second run into it exits naming the holder;
- what an earlier run left in it (`earlier_run`): a finished run (its `final`) or an unfinished one
  (checkpoint-N folders, in step order) is never written over; the message says what is there and
  what works: `--resume` of the latest intact checkpoint this spec can continue, another out, or
  `--force`, which trains into a hidden sibling and replaces the folder only once the run finishes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from surgery.errors import InputError, OutputError, SpecError
from surgery.io.output import atomic_folder, output_lock
from surgery.spec_file import yaml_line
from trainers import checkpoint
from trainers.checkpoint import RunIdentity
from trainers.models import spec_text
from trainers.spec import Run

LISTED = 3  # checkpoints named one by one in a message; more are shown as first, ..., last


def at_out(run: Run, problem: str) -> SpecError:
    text = spec_text(run.file)
    return SpecError(run.file, "out", problem, line=yaml_line(text, ["out"]) if text else None)


def overlap(out: str, path: str) -> str | None:
    """How the output path `out` meets the input `path` ('is', 'lies inside', 'holds'), through links."""
    a, b = os.path.realpath(out), os.path.realpath(path)
    if a == b:
        return "is"
    if a.startswith(b.rstrip(os.sep) + os.sep):
        return "lies inside"
    if b.startswith(a.rstrip(os.sep) + os.sep):
        return "holds"
    return None


def check_place(run: Run) -> None:
    """Refuse an out that is a file or meets an input (case by case, located at the spec's `out`)."""
    out = run.spec.out
    held = {f"data.eval.{i}": path for i, path in enumerate(run.spec.data.eval)}  # read, if not trained on
    for name, path in {**checkpoint.input_paths(run), **held}.items():
        relation = overlap(out, path)
        if relation:
            raise at_out(run, f"{out!r} {relation} {name} {path!r}; a run never writes where its inputs are: "
                         "choose another out")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise at_out(run, f"{out!r} is a file; a run writes a folder there (checkpoint-N/, final/, log.jsonl): "
                     "choose another out")


def check_folder_out(out: str, inputs: dict[str, str | None], flag: str = "OUT") -> None:
    """A command's output folder (moe-proof's, transplant-proof's OUT) is not a file, and is not, holds
    nor lies inside any of `inputs` (name -> path; None: not given)."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutputError(f"{flag} {out!r} is a file; the command writes a folder there: choose another {flag}")
    for name, path in inputs.items():
        relation = overlap(out, path) if path else None
        if relation:
            raise OutputError(f"{flag} {out!r} {relation} {name} {path!r}; choose another {flag} (inputs are never "
                              "written)")


def check_flags(resume: str | None, force: bool, allow_data_change: bool) -> None:
    if resume is not None and force:
        raise InputError("--resume continues a run and --force starts one afresh over it; give one of them")
    if allow_data_change and resume is None:
        raise InputError("--allow-data-change: it lets a resume continue on changed inputs; give --resume too")


@contextmanager
def claimed(run: Run, identity: RunIdentity, resume: str | None, force: bool, main: bool) -> Iterator[str]:
    """Hold the run's out folder while the body trains; yields the folder to write: `out`, or under
    --force over an earlier run, a hidden sibling that replaces `out` when the body ends well (and is
    removed when it does not, leaving the earlier run as it was). Only the main process locks and
    writes; the others get `out`."""
    out = run.spec.out
    check_place(run)
    if not main:  # refused alike on every process, so none waits on the others
        check_earlier(run, identity, resume, force)
        yield out
        return
    with output_lock(out):
        if force and os.path.isdir(out) and os.listdir(out):
            with atomic_folder(out) as staging:
                yield staging
            return
        check_earlier(run, identity, resume, force)
        yield out


def check_earlier(run: Run, identity: RunIdentity, resume: str | None, force: bool) -> None:
    problem = earlier_run(run, identity) if resume is None and not force else None
    if problem:
        raise OutputError(problem)


def another_out(out: str) -> str:
    """`out-2` (or the first of out-3, out-4, ... free)."""
    k = 2
    while os.path.lexists(f"{out.rstrip(os.sep)}-{k}"):
        k += 1
    return f"{out.rstrip(os.sep)}-{k}"


def listed(steps: list[tuple[int, str]]) -> str:
    names = [os.path.basename(path) for _, path in steps]
    if len(names) <= LISTED:
        return ", ".join(names)
    return f"{names[0]}, ..., {names[-1]}: {len(names)} checkpoints"


def earlier_run(run: Run, identity: RunIdentity) -> str | None:
    """What an earlier run left in `out` and what to do, or None when it holds none (a missing or empty
    folder, or one whose run stopped before its first checkpoint: its log is started again)."""
    out = run.spec.out
    final = os.path.join(out, "final")
    elsewhere = f"choose another out (--set out={another_out(out)}) or pass --force to replace it once this run " \
                "finishes"
    if os.path.isdir(final):
        return f"out {out!r} holds a finished run, whose model is {final}; to train again, {elsewhere}"
    steps = checkpoint.steps_of(out)
    if not steps:
        return None
    held = f"out {out!r} holds an unfinished run ({listed(steps)})"
    latest = next((path for _, path in reversed(steps) if checkpoint.intact(path)), None)  # each read whole
    if latest is None:
        return f"{held}, none of whose checkpoints is intact; {elsewhere}"
    with open(os.path.join(latest, checkpoint.STATE, "state.json")) as f:
        state = json.load(f)
    if state["digest"] != identity.digest:
        changed = checkpoint.differences(state["identity"], identity.fields)
        return f"{held}, written with other settings ({'; '.join(changed[:4])}), so this spec cannot resume it; " \
               f"{elsewhere}"
    changes = checkpoint.input_changes(state.get("inputs", {}), identity.inputs)
    if changes:
        name, what = changes[0]
        return f"{held}, whose inputs changed since ({name}: {what}); continue it on them with --resume {latest} " \
               f"--allow-data-change, or {elsewhere}"
    return f"{held}; continue it with --resume {latest}, or {elsewhere}"

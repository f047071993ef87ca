"""The sequence runner: each stage trained as an ordinary run (a session of the offline loop, or of
the objective's loop) in its own folder, after its strategy has prepared it; then the next.

    OUT/sequence.json                      the manifest: the spec's identity, each stage's tasks, final
                                           folder and model (what `surgery forgetting OUT` reads)
    OUT/stage-K-NAME/{checkpoint-N,final,log.jsonl}   stage K's run
    OUT/stage-K-NAME/fisher.safetensors    ewc: the stage's Fisher, once a later stage needed it
    OUT/stage-K-NAME-replay.jsonl          replay: the buffer this stage mixed in (an input of its run)
    OUT/stage-K-NAME/routed/routing.json   adapters: the model after the stage, as a routing
    OUT/merged                             adapters with `merge`: the adapters merged

A sequence that stopped is continued by running it again: finished stages are kept, a stage that
stopped resumes from its last checkpoint (exactly, as `surgery train --resume` does), and a Fisher
or buffer already written is read back. An OUT started by another sequence (another spec, but for
out, eval_every and save_every) is refused, naming the fields that differ.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from surgery.errors import OutputError
from surgery.io.output import atomic_file, write_json
from trainers.checkpoint import differences
from trainers.continual.spec import digest
from trainers.continual.strategy import Plan, Stage

MANIFEST = "sequence.json"
OnStage = Callable[[int, str, str], None]  # (stage index, stage name, the model after it) -> None


@dataclass(frozen=True)
class Done:
    """A finished sequence: each stage's final folder, the model after each stage, the extra folders."""

    finals: tuple[str, ...]
    models: tuple[str, ...]
    extras: dict[str, str]


def run_sequence(plan: Plan, on_stage: OnStage = lambda k, name, model: None, quiet: bool = False) -> Done:
    """Train every stage not yet finished, calling `on_stage` as each stage's model is written (and for
    each stage finished before, so a continued sequence scores them all)."""
    from trainers.loops import train

    claim(plan)
    finals: list[str] = []
    models: list[str] = []
    for stage in plan.stages:
        context = Stage(plan, stage, tuple(finals))
        final = stage.final
        if not finished(final):
            run = plan.strategy.prepare(stage.run, context, plan.config)
            final = os.path.abspath(train(run, resume=last_checkpoint(stage.folder), quiet=quiet))
        finals.append(final)
        models.append(plan.strategy.model_after(context, final))
        write_manifest(plan, finals, models, {})
        on_stage(stage.index, stage.name, models[-1])
    extras = plan.strategy.finish(plan, plan.config, tuple(finals))
    write_manifest(plan, finals, models, extras)
    return Done(tuple(finals), tuple(models), extras)


def finished(final: str) -> bool:
    return os.path.isfile(os.path.join(final, "lineage.json"))


def last_checkpoint(folder: str) -> str | None:
    """The stage's latest resumable checkpoint, if it stopped after writing one."""
    if not os.path.isdir(folder):
        return None
    steps = [int(m[1]) for n in os.listdir(folder) if (m := re.fullmatch(r"checkpoint-(\d+)", n))]
    return os.path.join(folder, f"checkpoint-{max(steps)}") if steps else None


def claim(plan: Plan) -> None:
    """OUT is this sequence's: new, or started by the same spec (then it is continued)."""
    path = os.path.join(plan.out, MANIFEST)
    if os.path.isfile(path):
        with open(path) as f:
            found = json.load(f)
        if found.get("digest") != digest(plan.identity):
            changed = differences(found.get("identity", {}), plan.identity)
            raise OutputError(f"out {plan.out!r} holds another sequence ({'; '.join(changed[:4])}); continue it "
                              f"with the spec that started it, or choose another out")
    elif os.path.isdir(plan.out) and os.listdir(plan.out):
        raise OutputError(f"out {plan.out!r} is not empty and holds no {MANIFEST}; choose another out (or remove "
                          "the folder)")
    os.makedirs(plan.out, exist_ok=True)
    write_manifest(plan, [], [], {})


def manifest(plan: Plan, finals: list[str], models: list[str], extras: dict[str, str]) -> dict:
    return {
        "digest": digest(plan.identity), "identity": plan.identity, "strategy": plan.strategy.name,
        "base": plan.base, "spec": os.path.abspath(plan.file), "extras": extras,
        "stages": [{"name": s.name, "tasks": list(s.tasks), "folder": s.folder,
                    "final": finals[s.index] if s.index < len(finals) else None,
                    "model": models[s.index] if s.index < len(models) else None} for s in plan.stages],
    }


def write_manifest(plan: Plan, finals: list[str], models: list[str], extras: dict[str, str]) -> None:
    with atomic_file(os.path.join(plan.out, MANIFEST)) as tmp:
        write_json(tmp, manifest(plan, finals, models, extras))


def read_manifest(out: str) -> dict | None:
    """The manifest of a sequence folder, or None when `out` is not one."""
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)

"""Checkpoints: the trained model in its standard format (a model or adapter folder), the tokenizer
with the chat template used, `lineage.json`, and under `trainer_state/` what a resume needs:
optimizer, scheduler, data position, random states and the run's identity.

Each checkpoint folder is written atomically (surgery.io.output.atomic_folder, by the run session):
a crash while writing leaves the previous checkpoints as they were and no partial folder under the
final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from surgery.errors import InputError
from surgery.io.output import write_json

if TYPE_CHECKING:
    from trainers.spec import Run

STATE = "trainer_state"
# Fields that do not change the trajectory of the weights: a resume may change them.
VOLATILE = ("out", "eval_every", "save_every")


@dataclass(frozen=True)
class Resumed:
    step: int
    mixture: dict
    optimizer: dict
    scheduler: dict
    rng: list
    trainable: dict[str, torch.Tensor] | None  # None when the folder holds the whole model
    metrics: dict


@dataclass(frozen=True)
class RunIdentity:
    """What a resumed run must share with the run that wrote the checkpoint: the spec's fields that set
    the weights' trajectory, the objective and method with every default filled in (so writing a
    default out changes nothing). Content hashes of the inputs (data files, the base's weights) belong
    here too, so that a resume after an input changed is refused naming the file."""

    fields: dict

    @classmethod
    def of(cls, run: Run) -> RunIdentity:
        fields = {k: v for k, v in run.spec.model_dump(mode="json").items() if k not in VOLATILE}
        fields["objective"] = {"name": run.spec.objective.name, **run.objective_config.model_dump(mode="json")}
        fields["method"] = {"name": run.spec.method.name, **run.method_config.model_dump(mode="json")}
        return cls(fields)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()


def step_folder(out: str, step: int) -> str:
    return os.path.join(out, f"checkpoint-{step}")


def write_state(folder: str, step: int, identity: RunIdentity, mixture: dict, optimizer: dict, scheduler: dict,
                rng: list, trainable: dict[str, torch.Tensor] | None, metrics: dict) -> str:
    """trainer_state/ inside a checkpoint folder being written; returns its path (for the loop's own files)."""
    state = os.path.join(folder, STATE)
    os.makedirs(state)
    write_json(os.path.join(state, "state.json"), {
        "step": step, "digest": identity.digest, "identity": identity.fields, "mixture": mixture, "metrics": metrics})
    torch.save(optimizer, os.path.join(state, "optimizer.pt"))
    torch.save({"scheduler": scheduler, "rng": rng}, os.path.join(state, "schedule_rng.pt"))
    if trainable is not None:
        save_file({k: v.contiguous() for k, v in trainable.items()}, os.path.join(state, "trainable.safetensors"))
    return state


def read_state(folder: str, identity: RunIdentity, total_steps: int, file: str) -> Resumed:
    """A checkpoint's training state, refused when another run (other data, method, lr, ...) wrote it."""
    path = os.path.join(folder, STATE, "state.json")
    if not os.path.isfile(path):
        raise InputError(f"--resume {folder}: not a checkpoint of a training run (no {STATE}/state.json); "
                         "pass a checkpoint-N folder from the run's out folder")
    with open(path) as f:
        state = json.load(f)
    if state["digest"] != identity.digest:
        changed = differences(state["identity"], identity.fields)
        raise InputError(f"--resume {folder}: it was written by a different run ({'; '.join(changed[:4])}); "
                         f"resume with the spec that wrote it, or start {file} afresh")
    if state["step"] > total_steps:
        raise InputError(f"--resume {folder}: it is at step {state['step']}, past schedule.total_steps")
    extra = torch.load(os.path.join(folder, STATE, "schedule_rng.pt"), weights_only=True)
    trainable = os.path.join(folder, STATE, "trainable.safetensors")
    return Resumed(state["step"], state["mixture"],
                   torch.load(os.path.join(folder, STATE, "optimizer.pt"), weights_only=True),
                   extra["scheduler"], extra["rng"], load_file(trainable) if os.path.isfile(trainable) else None,
                   state.get("metrics", {}))


def differences(old: object, new: object, path: str = "") -> list[str]:
    """`optim.lr: 0.001 there, 0.0003 here` for each field that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in differences(old.get(k), new.get(k), f"{path}.{k}" if path else k)]
    return [] if old == new else [f"{path}: {json.dumps(old)} there, {json.dumps(new)} here"]


def lineage(run: Run, train_sets: list, step: int, metrics: dict, parent: str | None, template) -> dict:
    """lineage.json: where the checkpoint came from (base, method, objective, data with sha256, ...)."""
    spec = run.spec
    return {
        "base": os.path.abspath(spec.base),
        "method": {"name": spec.method.name, **run.method_config.model_dump(mode="json")},
        "objective": {"name": spec.objective.name, **run.objective_config.model_dump(mode="json")},
        "data": [{"path": s.path, "weight": w.weight, "rows": len(s.rows), "sha256": s.sha256, **generated(s)}
                 for s, w in zip(train_sets, spec.data.train)],
        "hyper_parameters": {k: spec.model_dump(mode="json")[k]
                             for k in ("optim", "schedule", "batch", "seed", "dtype")},
        "parent": os.path.abspath(parent) if parent else None,
        "steps": step,
        "metrics": metrics,
        "chat_template": template.name,
        "spec": os.path.abspath(run.file),
    }


def generated(dataset) -> dict:
    """{"generated_by": {file: lineage}} for the files of `dataset` that a synthetic-data pipeline wrote
    (Self-Instruct, Constitutional AI: its card lists the file with this sha256), else {}."""
    from trainers.synthetic.card import provenance

    found = {f: p for f, digest in dataset.sha256.items() if (p := provenance(f, digest)) is not None}
    return {"generated_by": found} if found else {}


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)

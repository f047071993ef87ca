"""Checkpoints: the trained model in its standard format (a model or adapter folder), the tokenizer
with the chat template used, `lineage.json`, and under `trainer_state/` what a resume needs:
optimizer, scheduler, data position, random states and the run's identity.

Each checkpoint folder is written atomically (surgery.io.output.atomic_folder): a crash while
writing leaves the previous checkpoints as they were and no partial folder under the final name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from surgery.errors import InputError
from surgery.io.output import write_json

STATE = "trainer_state"


@dataclass(frozen=True)
class Resumed:
    step: int
    mixture: dict
    optimizer: dict
    scheduler: dict
    rng: list
    trainable: dict[str, torch.Tensor] | None  # None when the folder holds the whole model
    metrics: dict


def step_folder(out: str, step: int) -> str:
    return os.path.join(out, f"checkpoint-{step}")


def write_state(folder: str, step: int, run, mixture: dict, optimizer: dict, scheduler: dict, rng: list,
                trainable: dict[str, torch.Tensor] | None, metrics: dict) -> None:
    state = os.path.join(folder, STATE)
    os.makedirs(state)
    write_json(os.path.join(state, "state.json"), {
        "step": step, "digest": run.digest(), "identity": run.identity(), "mixture": mixture, "metrics": metrics})
    torch.save(optimizer, os.path.join(state, "optimizer.pt"))
    torch.save({"scheduler": scheduler, "rng": rng}, os.path.join(state, "schedule_rng.pt"))
    if trainable is not None:
        save_file({k: v.contiguous() for k, v in trainable.items()}, os.path.join(state, "trainable.safetensors"))


def read_state(folder: str, run) -> Resumed:
    """A checkpoint's training state, refused when another run (other data, method, lr, ...) wrote it."""
    path = os.path.join(folder, STATE, "state.json")
    if not os.path.isfile(path):
        raise InputError(f"--resume {folder}: not a checkpoint of a training run (no {STATE}/state.json); "
                         "pass a checkpoint-N folder from the run's out folder")
    with open(path) as f:
        state = json.load(f)
    if state["digest"] != run.digest():
        changed = differences(state["identity"], run.identity())
        raise InputError(f"--resume {folder}: it was written by a different run ({'; '.join(changed[:4])}); "
                         f"resume with the spec that wrote it, or start {run.file} afresh")
    if state["step"] > run.spec.schedule.total_steps:
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


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)

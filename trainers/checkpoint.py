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
import re
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from surgery.errors import InputError, SurgeryError
from surgery.io.format import read_header
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
    allowed_changes: tuple[str, ...] = ()  # inputs that changed since, accepted with --allow-data-change


@dataclass(frozen=True)
class RunIdentity:
    """What a resumed run must share with the run that wrote the checkpoint: the spec's fields that set
    the weights' trajectory, the objective and method with every default filled in (so writing a
    default out changes nothing), and the content of its inputs: `inputs` maps each spec field naming
    an input (base, data.train.N, objective.reference, objective.reward_model) to {file: sha256}."""

    fields: dict
    inputs: dict = field(default_factory=dict)

    @classmethod
    def of(cls, run: Run, inputs: dict | None = None) -> RunIdentity:
        fields = {k: v for k, v in run.spec.model_dump(mode="json").items() if k not in VOLATILE}
        fields["objective"] = {"name": run.spec.objective.name, **run.objective_config.model_dump(mode="json")}
        fields["method"] = {"name": run.spec.method.name, **run.method_config.model_dump(mode="json")}
        return cls(fields, inputs or {})

    @property
    def digest(self) -> str:
        """The spec's part (the inputs are compared file by file, so a change can be named)."""
        return hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()


def input_paths(run: Run) -> dict[str, str]:
    """Spec field -> the input it names: the base, every data.train source, the objective's reference
    and reward model when it has them."""
    paths = {"base": run.spec.base, **{f"data.train.{i}": s.path for i, s in enumerate(run.spec.data.train)}}
    for name in ("reference", "reward_model"):
        path = getattr(run.objective_config, name, None)
        if path:
            paths[f"objective.{name}"] = path
    return paths


def input_files(path: str) -> list[str]:
    """The files whose content an input is: a file itself; a data folder's .jsonl files; a model folder's
    files (weights, config, tokenizer), hidden ones aside. A path that does not exist has none (it is
    refused, located, where it is read)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return []
    return sorted(os.path.join(path, n) for n in os.listdir(path)
                  if not n.startswith(".") and os.path.isfile(os.path.join(path, n)))


def input_hashes(run: Run) -> dict[str, dict[str, str]]:
    """Spec field -> {file: sha256} of every input of the run (see `input_paths`)."""
    return {name: {f: sha256(f) for f in input_files(path)} for name, path in input_paths(run).items()}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def input_changes(old: dict, new: dict) -> list[tuple[str, str]]:
    """(spec field, what changed) for each input file whose content differs, appeared or went."""
    changes = []
    for name in sorted(set(old) & set(new)):  # an input given only now (or only then) is a spec difference
        there, here = old[name], new[name]
        for f in sorted(set(there) | set(here)):
            if f not in here:
                changes.append((name, f"file {f!r} is gone"))
            elif f not in there:
                changes.append((name, f"file {f!r} is new"))
            elif there[f] != here[f]:
                changes.append((name, f"file {f!r} changed (sha256 {there[f][:12]}... there, {here[f][:12]}... here)"))
    return changes


def step_folder(out: str, step: int) -> str:
    return os.path.join(out, f"checkpoint-{step}")


def write_state(folder: str, step: int, identity: RunIdentity, mixture: dict, optimizer: dict, scheduler: dict,
                rng: list, trainable: dict[str, torch.Tensor] | None, metrics: dict,
                allowed_changes: tuple[str, ...] = ()) -> str:
    """trainer_state/ inside a checkpoint folder being written; returns its path (for the loop's own files)."""
    state = os.path.join(folder, STATE)
    os.makedirs(state)
    write_json(os.path.join(state, "state.json"), {
        "step": step, "digest": identity.digest, "identity": identity.fields, "inputs": identity.inputs,
        "mixture": mixture, "metrics": metrics, "allowed_changes": list(allowed_changes)})
    torch.save(optimizer, os.path.join(state, "optimizer.pt"))
    torch.save({"scheduler": scheduler, "rng": rng}, os.path.join(state, "schedule_rng.pt"))
    if trainable is not None:
        save_file({k: v.contiguous() for k, v in trainable.items()}, os.path.join(state, "trainable.safetensors"))
    return state


def read_state(folder: str, identity: RunIdentity, total_steps: int, file: str, allow_changes: bool = False,
               spec_text: str | None = None) -> Resumed:
    """A checkpoint's training state, refused when it is damaged (naming the file, and the latest intact
    checkpoint before it), when another run (other method, lr, ...) wrote it, or when an input's content
    changed since (naming the file; accepted with `allow_changes`, and then listed in `allowed_changes`)."""
    path = os.path.join(folder, STATE, "state.json")
    if not os.path.isdir(os.path.join(folder, STATE)):
        raise InputError(f"--resume {folder}: not a checkpoint of a training run (no {STATE}/state.json); "
                         "pass a checkpoint-N folder from the run's out folder")
    problem = damage(folder)
    if problem:
        raise InputError(f"--resume {folder}: the checkpoint is damaged: {problem}; {intact_before(folder)}")
    with open(path) as f:
        state = json.load(f)
    if state["digest"] != identity.digest:
        changed = differences(state["identity"], identity.fields)
        raise InputError(f"--resume {folder}: it was written by a different run ({'; '.join(changed[:4])}); "
                         f"resume with the spec that wrote it, or start {file} afresh")
    changes = [f"{located_field(file, name, spec_text)}: {what}"
               for name, what in input_changes(state.get("inputs", {}), identity.inputs)]
    if changes and not allow_changes:
        more = f" (and {len(changes) - 1} more change(s))" if len(changes) > 1 else ""
        raise InputError(f"--resume {folder}: {changes[0]} since the checkpoint was written{more}; put the inputs "
                         "back as they were, or pass --allow-data-change to continue on them (recorded in the "
                         "lineage)")
    if state["step"] > total_steps:
        raise InputError(f"--resume {folder}: it is at step {state['step']}, past schedule.total_steps")
    extra = torch.load(os.path.join(folder, STATE, "schedule_rng.pt"), weights_only=True)
    trainable = os.path.join(folder, STATE, "trainable.safetensors")
    return Resumed(state["step"], state["mixture"],
                   torch.load(os.path.join(folder, STATE, "optimizer.pt"), weights_only=True),
                   extra["scheduler"], extra["rng"], load_file(trainable) if os.path.isfile(trainable) else None,
                   state.get("metrics", {}),
                   (*state.get("allowed_changes", []), *(f"{c} (resumed from {folder})" for c in changes)))


def located_field(file: str, name: str, text: str | None) -> str:
    """`run.yaml: data.train.0 (line 7)`, the line where the spec's text is known."""
    from surgery.spec_file import yaml_line

    line = yaml_line(text, name.split(".")) if text else None
    return f"{file}: {name} (line {line})" if line else f"{file}: {name}"


# torch.save archives of trainer_state/ (zip files, checked entry by entry against their CRCs)
ARCHIVES = ("optimizer.pt", "schedule_rng.pt")


def damage(folder: str) -> str | None:
    """What is wrong with a resumable checkpoint's files (`PATH is missing`, `PATH is not valid JSON`, a
    safetensors file cut short...), or None when each reads whole. Nothing is loaded into memory."""
    state = os.path.join(folder, STATE)
    path = os.path.join(state, "state.json")
    if not os.path.isfile(path):
        return f"{path} is missing"
    try:
        with open(path) as f:
            fields = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{path} is not valid JSON ({e}): it was cut short or overwritten"
    if not isinstance(fields, dict) or not {"step", "digest", "mixture"} <= set(fields):
        return f"{path} lacks the fields step, digest and mixture"
    for name in ARCHIVES:
        path = os.path.join(state, name)
        if not os.path.isfile(path):
            return f"{path} is missing"
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return f"{path} cannot be read ({e}): it was cut short or overwritten"
        if bad is not None:
            return f"{path} cannot be read (entry {bad!r} fails its checksum)"
    trainable = os.path.join(state, "trainable.safetensors")
    weights = [trainable] if os.path.isfile(trainable) else []
    weights += [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".safetensors")]
    for path in weights:
        try:
            read_header(path)
        except SurgeryError as e:
            return str(e)
    return None


def steps_of(out: str) -> list[tuple[int, str]]:
    """The checkpoint-N folders of a run's out folder as (N, path), in step order (checkpoint-12 after
    checkpoint-2)."""
    if not os.path.isdir(out):
        return []
    found = [(int(m.group(1)), os.path.join(out, n)) for n in os.listdir(out)
             if (m := re.fullmatch(r"checkpoint-(\d+)", n)) and os.path.isdir(os.path.join(out, n))]
    return sorted(found)


def intact(folder: str) -> bool:
    return damage(folder) is None


def intact_before(folder: str) -> str:
    """Advice after a damaged checkpoint: the latest intact one of the same run before it, or a fresh start."""
    out, name = os.path.split(os.path.normpath(folder))
    step = int(name.rpartition("-")[2]) if re.fullmatch(r"checkpoint-\d+", name) else None
    earlier = [path for n, path in steps_of(out) if step is not None and n < step]
    latest = next((path for path in reversed(earlier) if intact(path)), None)  # each read whole: the latest first
    if latest:
        return f"the latest intact checkpoint before it is {latest}: continue with --resume {latest}"
    return "no earlier checkpoint of this run is intact: start the run again (with --force to replace it)"


def differences(old: object, new: object, path: str = "") -> list[str]:
    """`optim.lr: 0.001 there, 0.0003 here` for each field that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in differences(old.get(k), new.get(k), f"{path}.{k}" if path else k)]
    return [] if old == new else [f"{path}: {json.dumps(old)} there, {json.dumps(new)} here"]


def lineage(run: Run, train_sets: list, step: int, metrics: dict, parent: str | None, template,
            allowed_changes: tuple[str, ...] = ()) -> dict:
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
        "allowed_changes": list(allowed_changes),  # inputs changed under a resume, with --allow-data-change
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

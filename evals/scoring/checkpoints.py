"""What is being evaluated: a checkpoint folder checked for loadability, its content hash, its lineage.

The hash is what the results store is keyed by, so a result follows the weights, not the path: it is
a SHA-256 over every tensor's name, dtype, shape and bytes, in name order, read in chunks (a sharded
and a single-file copy of the same weights hash alike). A PEFT adapter folder hashes its own weights
together with its base's hash, since the adapter alone does not say what the model computes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from surgery.errors import InputError
from surgery.io.format import TensorInfo, read_header
from surgery.io.reader import ModelFolder

CHUNK = 1 << 20
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """A folder that can be evaluated: a full model, or an adapter with `base` the full model under it."""

    path: str
    hash: str
    base: Checkpoint | None = None

    @property
    def is_adapter(self) -> bool:
        return self.base is not None


def open_checkpoint(path: str) -> Checkpoint:
    """Check that `path` can load as a model (or an adapter over a local base) and hash its weights."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise InputError(f"checkpoint {path!r} does not exist or is not a folder; give a model folder")
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        return _open_adapter(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise InputError(f"checkpoint {path!r} has no config.json, so it cannot be loaded as a model; "
                         "give the folder save_pretrained wrote (or an adapter folder with adapter_config.json)")
    tensors = ModelFolder(path).tensors
    if not tensors:
        raise InputError(f"checkpoint {path!r} holds no safetensors weights; convert it with `surgery convert`")
    return Checkpoint(path, tensor_hash(tensors.values()))


def _open_adapter(path: str) -> Checkpoint:
    with open(os.path.join(path, ADAPTER_CONFIG)) as f:
        base_path = json.load(f).get("base_model_name_or_path")
    if not base_path or not os.path.isdir(base_path):
        raise InputError(f"adapter {path!r} names base {base_path!r}, which is not a local folder; set "
                         f"base_model_name_or_path in {ADAPTER_CONFIG} to the base model's folder")
    weights = os.path.join(path, ADAPTER_WEIGHTS)
    if not os.path.isfile(weights):
        raise InputError(f"adapter {path!r} has no {ADAPTER_WEIGHTS}; save the adapter with safetensors")
    base = open_checkpoint(base_path)
    infos, _ = read_header(weights)
    return Checkpoint(path, tensor_hash(infos.values(), salt=base.hash), base)


def tensor_hash(tensors, salt: str = "") -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256(salt.encode())
    for info in sorted(tensors, key=lambda t: t.name):
        h.update(f"{info.name}|{info.dtype}|{list(info.shape)}|".encode())
        _update_bytes(h, info)
    return h.hexdigest()


def _update_bytes(h, info: TensorInfo) -> None:
    with open(info.file, "rb") as f:
        f.seek(info.start)
        left = info.nbytes
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise InputError(f"{info.file}: tensor {info.name!r} is cut short; copy the file again")
            h.update(chunk)
            left -= len(chunk)


def lineage(checkpoint: Checkpoint) -> dict:
    """What made the checkpoint: trainers' lineage.json, and a merge's provenance in the safetensors metadata."""
    found: dict = {}
    file = os.path.join(checkpoint.path, "lineage.json")
    if os.path.isfile(file):
        with open(file) as f:
            found["training"] = json.load(f)
    if not checkpoint.is_adapter:
        merge = {k: v for k, v in ModelFolder(checkpoint.path).metadata.items() if k.startswith("surgery.")}
        if merge:
            found["merge"] = merge
    else:
        found["adapter_of"] = checkpoint.base.path
    return found


def fingerprint(path: str) -> str:
    """Names, sizes and modification times of the folder's weight files: a cheap check, before trusting a
    stored hash, that nothing was rewritten since (any change means hashing again)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        return ""
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    stats = (os.stat(os.path.join(path, f)) for f in files)
    return ";".join(f"{f}:{s.st_size}:{s.st_mtime_ns}" for f, s in zip(files, stats))

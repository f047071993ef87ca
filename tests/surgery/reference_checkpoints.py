"""Test-side readers that share no code with surgery.io: whole checkpoints through the safetensors
library, models through transformers, and the CLI through click's runner."""

from __future__ import annotations

import glob
import hashlib
import os
import signal

import torch
from click.testing import CliRunner
from safetensors.torch import load_file


def state_dict(folder) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (all shards), read by the reference safetensors loader."""
    out: dict[str, torch.Tensor] = {}
    for file in sorted(glob.glob(os.path.join(str(folder), "*.safetensors"))):
        out.update(load_file(file))
    return out


def logits(folder, ids: torch.Tensor | None = None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model_logits(model, ids)


def model_logits(model, ids: torch.Tensor | None = None) -> torch.Tensor:
    ids = torch.tensor([[4, 8, 15, 16, 23, 42, 7, 99]]) if ids is None else ids
    with torch.no_grad():
        return model(ids, use_cache=False).logits  # (1, T, vocab)


def run_cli(*args):
    """`surgery ARGS...`; restores pytest's SIGTERM handler, which the commands replace."""
    from surgery.cli import main

    handler = signal.getsignal(signal.SIGTERM)
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        signal.signal(signal.SIGTERM, handler)


def digest(*roots: str) -> dict[str, str]:
    """sha256 of each given file and of every file under each given folder (links followed): equal
    before and after a command when it left its inputs untouched."""
    out = {}
    for root in map(str, roots):
        paths = [root] if os.path.isfile(root) else sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True))
        for path in paths:
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
    assert out, roots
    return out

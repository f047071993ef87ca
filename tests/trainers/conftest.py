"""Fixtures of the trainers tests: one tiny Llama base (hidden 32, 2 layers, ChatML tokenizer) and a
working folder laid out as the example run specs expect (`models/base`, `runs/`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from surgery.demo.tiny import build_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> str:
    return build_model(str(tmp_path_factory.mktemp("trainers") / "models" / "base"), "llama", seed=0)


@pytest.fixture
def workdir(base, tmp_path, monkeypatch) -> Path:
    """The current folder for a test: models/ (the tiny base) and runs/ (the repository's examples)."""
    os.symlink(os.path.dirname(base), tmp_path / "models")
    os.symlink(REPO / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def spec_dict(**changes) -> dict:
    """A small SFT run on the example instruction data; `changes` replace top-level fields."""
    spec = {
        "base": "models/base",
        "objective": {"name": "sft"},
        "method": {"name": "full"},
        "data": {"train": "runs/data/instruct.jsonl", "eval": "runs/data/eval.jsonl"},
        "chat_template": "chatml",
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 1, "total_steps": 6},
        "batch": {"size": 4, "grad_accum": 2, "max_length": 64},
        "out": "out/run",
    }
    spec.update(changes)
    return spec

"""Shared fixtures: tiny models built once per session (no downloads), one thread for torch."""

from __future__ import annotations

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest
import torch

from surgery.demo.tiny import build_family, build_model

torch.set_num_threads(1)

# Markers that keep a test out of every run whose -m expression does not name them. (pyproject's addopts
# cannot hold `-m 'not slow and not gpu'`: a second -m on the command line would replace it, so
# `-m 'not integration'` would start running the slow and GPU tests.)
OPT_IN = ("slow", "gpu")


def named_markers(expression: str) -> set[str]:
    """The marker names an -m expression mentions: 'slow or not gpu' -> {'slow', 'gpu'}."""
    return set(re.findall(r"[A-Za-z_]\w*", expression)) - {"and", "or", "not"}


def pytest_collection_modifyitems(config, items):
    """Deselect each test marked with an OPT_IN marker that the -m expression does not name."""
    asked = named_markers(config.getoption("markexpr") or "")
    unasked = [m for m in OPT_IN if m not in asked]
    dropped = [item for item in items if any(item.get_closest_marker(m) for m in unasked)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> dict[str, str]:
    """{'base', 'math', 'code', 'chat'}: a tiny Llama (hidden 32, 2 layers) and three fine-tunes."""
    return build_family(str(tmp_path_factory.mktemp("llama")), "llama")


@pytest.fixture(scope="session")
def llama_sharded(tmp_path_factory) -> dict[str, str]:
    """The same shapes, saved as several shards with an index file."""
    return build_family(str(tmp_path_factory.mktemp("llama_sharded")), "llama", shard_size="20KB")


@pytest.fixture(scope="session")
def qwen2(tmp_path_factory) -> dict[str, str]:
    return build_family(str(tmp_path_factory.mktemp("qwen2")), "qwen2")


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory) -> dict[str, str]:
    """GPT-2 shape: Conv1D weights, tied embeddings (no lm_head tensor stored)."""
    return build_family(str(tmp_path_factory.mktemp("gpt2")), "gpt2")


@pytest.fixture(scope="session")
def llama_bf16(tmp_path_factory) -> dict[str, str]:
    return build_family(str(tmp_path_factory.mktemp("llama_bf16")), "llama", dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def families(llama, llama_sharded, qwen2, gpt2) -> dict[str, dict[str, str]]:
    return {"llama": llama, "llama_sharded": llama_sharded, "qwen2": qwen2, "gpt2": gpt2}


@pytest.fixture
def work(llama, tmp_path) -> str:
    """A folder whose `models/` links to the tiny Llama family, as merges/*.yaml expect."""
    return models_folder(llama, tmp_path / "work")


EXPERTS = {"add": "math", "reverse": "code", "refuse": "chat"}  # merges/*.yaml's names -> the family's


def models_folder(family: dict[str, str], folder) -> str:
    """`folder/models/` holding the family under its own names and the names merges/*.yaml use."""
    models = folder / "models"
    models.mkdir(parents=True)
    for name, path in family.items():
        os.symlink(path, models / name)
    for name, same in EXPERTS.items():
        os.symlink(family[same], models / name)
    return str(folder)


@pytest.fixture(scope="session")
def build():
    """Build one more tiny model: build(folder, kind='llama', seed=0, base=None, **config_overrides)."""
    return build_model

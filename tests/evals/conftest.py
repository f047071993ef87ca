"""Fixtures of the evals tests: the small world's character-level model (untrained: its scores are
whatever random weights give, which is all an equality test needs), saved once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest


@pytest.fixture(scope="session")
def char_model(tmp_path_factory) -> str:
    from trainers.world.zoo import init_model

    return init_model(str(tmp_path_factory.mktemp("char") / "model"))

"""A plain `surgery train` (LoRA) and `surgery eval`, run as a user runs them (a process of their own, outside
a git checkout, no verbosity settings), print none of the libraries' messages a user cannot act on, and the
filters that drop them drop nothing else."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest
import yaml

from surgery.cli.third_party import DROPPED, quiet_third_party
from surgery.demo.tiny import build_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOISE = ["publisher trust", "gemm_4bit_forward", "fatal: not a git repository", "chat template is not applied",
         "Custom kwargs can be passed", "is_gradient_checkpointing"]


def _surgery(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "PYTHONWARNINGS")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # no hub here; the kernel lookup notes it too
    command = [os.path.join(os.path.dirname(sys.executable), "surgery"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.integration  # two processes that import torch, transformers, peft and lm-eval (about 30 s of CPU)
def test_train_and_eval_print_no_third_party_noise(tmp_path):
    base = build_model(str(tmp_path / "tiny-instruct"), "llama", seed=0)  # "instruct": lm-eval's chat-template guess
    spec = {"base": base, "objective": {"name": "sft"}, "method": {"name": "lora", "r": 4},
            "data": {"train": os.path.join(REPO, "runs/data/instruct.jsonl")}, "chat_template": "chatml",
            "optim": {"lr": 1e-3}, "schedule": {"total_steps": 1}, "batch": {"size": 2, "max_length": 32},
            "out": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    trained = _surgery(["train", "run.yaml", "--quiet"], tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert f"wrote {tmp_path / 'out' / 'final'}" in trained.stdout
    scored = _surgery(["eval", base, str(tmp_path / "out" / "final"), "--tasks", "world_add", "--limit", "2",
                       "--device", "cpu", "--db", str(tmp_path / "db.sqlite")], tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.count("world_add") == 2  # the table: both models scored
    for text in NOISE:  # lm-eval wraps its notes over lines: compare with whitespace runs as one space
        assert text not in " ".join(trained.stderr.split()), trained.stderr
        assert text not in " ".join(scored.stderr.split()), scored.stderr


def test_the_filters_drop_only_their_messages(caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn("`is_gradient_checkpointing` is deprecated; use ...", FutureWarning, stacklevel=1)
        warnings.warn("`other_property` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`other_property` is deprecated"]
    with caplog.at_level(logging.WARNING):
        for name, texts in DROPPED.items():
            logging.getLogger(name).warning(f"task_x{texts[0]} and more".replace(" ", "\n    ", 2))
            logging.getLogger(name).error(f"{name}: a real failure")
    assert [r.getMessage() for r in caplog.records] == [f"{name}: a real failure" for name in DROPPED]

"""Two processes under torchrun (gloo on CPU), each with half of every step's rows, reach the weights
of one process with the same global batch: the loop weights micro-batches by their token counts and
DDP averages the gradients."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.trainers.conftest import spec_dict
from trainers.loops import train
from trainers.spec import parse_run


@pytest.mark.integration
def test_two_processes_match_one(workdir):
    spec = spec_dict(out="out/ddp", batch={"size": 4, "grad_accum": 1, "max_length": 64}, save_every=3)
    with open("ddp.yaml", "w") as f:
        yaml.safe_dump(spec, f)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    done = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", "29533", "-m", "trainers", "ddp.yaml",
                           "--quiet"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote out/ddp/final" in done.stdout and time.time() - start < 120

    # one process, one micro-batch of all 4 rows: the mean over all their tokens. Two processes see
    # two rows each, with different token counts: a plain mean of the two means would differ.
    one = train(parse_run(spec_dict(out="out/one", batch={"size": 4, "grad_accum": 1, "max_length": 64}), "x.yaml"),
                quiet=True)
    a, b = load_file("out/ddp/final/model.safetensors"), load_file(os.path.join(one, "model.safetensors"))
    base = load_file("models/base/model.safetensors")
    for k in a:
        assert not torch.equal(a[k], base[k])
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    assert os.path.isdir("out/ddp/checkpoint-3/trainer_state")


@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes(workdir):
    """FSDP2 (`parallel: fsdp`) over 2 processes, stopped at a checkpoint and resumed under torchrun,
    against one process: the same weights within float tolerance."""
    spec = spec_dict(out="out/fsdp", parallel="fsdp", batch={"size": 4, "grad_accum": 1, "max_length": 64},
                     save_every=3)
    with open("fsdp.yaml", "w") as f:
        yaml.safe_dump(spec, f)
    torchrun = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc-per-node", "2",
                "--master-port", "29534", "-m", "trainers", "fsdp.yaml", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in (["--set", "out=out/first"], ["--resume", "out/first/checkpoint-3"]):  # resumed into out/fsdp
        done = subprocess.run(torchrun + extra, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
    one = train(parse_run(spec_dict(out="out/one", batch={"size": 4, "grad_accum": 1, "max_length": 64}), "x.yaml"),
                quiet=True)
    a, b = load_file("out/fsdp/final/model.safetensors"), load_file(os.path.join(one, "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)

"""Cast a checkpoint's floating-point tensors to another dtype (`surgery convert`).

A passthrough merge of one model with an output dtype: the engine reads each tensor a block of rows
at a time, casts it exactly as `Tensor.to(dtype)` does (through float32, which holds float16 and
bfloat16 values exactly), and writes it atomically. A float64 tensor is rounded to float32 on the
way (so float64 -> bfloat16 rounds twice); one that stays float64 is copied byte for byte. Integer
buffers are copied unchanged; config.json gets the new dtype.
"""

from __future__ import annotations

import dataclasses

import torch

from surgery.errors import InputError
from surgery.io.opener import open_model
from surgery.merge.plan import DTYPES, MergePlan, TensorJob, plan_merge
from surgery.merge.spec import parse_spec


def plan_convert(path: str, dtype: str, allow_pickle: bool = False) -> MergePlan:
    """The plan that writes every tensor of `path` in `dtype` (float32, float16, bfloat16, float64)."""
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: unknown dtype; choose one of {', '.join(DTYPES)}")
    path = open_path(path, allow_pickle)
    spec = parse_spec({"merge_method": "passthrough", "models": [{"model": path}], "out_dtype": dtype}, "convert")
    plan = plan_merge(spec, "convert", allow_pickle=allow_pickle)
    plan.jobs = [_keep_float64(plan, job) for job in plan.jobs]
    return plan


def _keep_float64(plan: MergePlan, job: TensorJob) -> TensorJob:
    """The engine computes in float32: a float64 tensor that stays float64 is copied byte for byte."""
    stays = job.dtype == torch.float64 and plan.info(job.models[0]).dtype == torch.float64
    return dataclasses.replace(job, copy=True) if stays else job


def open_path(path: str, allow_pickle: bool = False) -> str:
    """The absolute path of a readable model (InputError naming the folder or file otherwise)."""
    model = open_model(path, allow_pickle=allow_pickle)
    model.close()
    return model.path

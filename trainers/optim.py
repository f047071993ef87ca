"""The optimizer and learning-rate schedule of a run: AdamW over the method's parameter groups, linear
warm-up then cosine decay, gradient clipping, and the optimizer state a checkpoint keeps (gathered
whole under FSDP)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from surgery.errors import SpecError
from trainers import parallel

if TYPE_CHECKING:
    from trainers.spec import Run


def make_optimizer(run: Run, model: torch.nn.Module, extra: list[dict] = ()) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D tensors) are not decayed, as in GPT-2 and most recipes since.
    `extra` groups train beside the method's (PPO's value head)."""
    o = run.spec.optim
    if run.method.param_groups is not None:
        groups = run.method.param_groups(model, run.method_config, o.lr)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2]},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    if not groups:
        raise SpecError(run.file, "method", f"method '{run.spec.method.name}' left no parameter to train")
    return torch.optim.AdamW([*groups, *extra], lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, schedule))


def lr_factor(step: int, schedule) -> float:
    """Linear warm-up over warmup_steps, then cosine from 1 to min_lr_ratio at total_steps (or constant)."""
    if step < schedule.warmup_steps:
        return (step + 1) / (schedule.warmup_steps + 1)
    if not schedule.cosine:
        return 1.0
    progress = (step - schedule.warmup_steps) / max(1, schedule.total_steps - schedule.warmup_steps)
    return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def clip(parameters: Iterable[torch.nn.Parameter], max_norm: float | None) -> float:
    """Clip the global gradient norm of `parameters` (those with a gradient) to max_norm; returns the norm."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor


def load_optimizer(optimizer, model, state: dict) -> None:
    if parallel.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def optimizer_state(optimizer, model) -> dict:
    if parallel.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()

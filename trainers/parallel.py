"""Data parallelism through torch.distributed: under `torchrun` each process trains on its share of
every step's rows, with the model replicated (DDP) or sharded (FSDP2, `fully_shard`, for models that
do not fit one device). Run without torchrun, everything here reduces to one process.

Backend: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device
    started: bool  # this process group was started here (and is destroyed at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0


def start() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if size == 1:
        return World(0, 1, device, False)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), device, started)


def stop(world: World) -> None:
    if world.started and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: World, strategy: str) -> torch.nn.Module:
    if world.size == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in decoder_blocks(model):
            fully_shard(block)  # one all-gather per layer, so only one layer is whole at a time
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and not hasattr(model, "config") else model


@contextmanager
def accumulating(model: torch.nn.Module, skip_sync: bool) -> Iterator[None]:
    """Gradients of all but the last micro-batch of a step stay local (no all-reduce): DDP's
    `no_sync`, FSDP2's `set_requires_gradient_sync`."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(not skip_sync)
        yield
    elif skip_sync and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


def all_sum(value: float, world: World) -> float:
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return float(t.item())


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model: torch.nn.Module, world: World, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on the CPU, on every rank; names without wrapper prefixes."""
    if is_sharded(model):  # FSDP: gather the shards
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    if trainable_only:
        names = {n for n, p in unwrap(model).named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in names}
    return state

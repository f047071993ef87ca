"""VeRA folding (Kopiczko et al. 2024, arXiv:2310.11454): one pair of frozen random projections
A (r, in_max) and B (out_max, r) shared by every layer, sliced to each layer's shape, and two
trained vectors per layer: W' = W + (lambda_b * B[:out]) @ (lambda_d * A[:, :in]).

When the adapter was saved without its projections, they are regenerated as PEFT draws them: a CPU
generator seeded with `projection_prng_key` fills A then B with Kaiming-uniform values,
U(-sqrt(6 / fan_in), sqrt(6 / fan_in)), fan_in being the second dimension of each.
"""

from __future__ import annotations

import math

import torch

from surgery.adapters.config import AdapterConfig, names, number, targets
from surgery.adapters.kinds.kind import Kind, Step, one_at_a_time
from surgery.adapters.mapping import Adapter, Delta, need, part_shape
from surgery.errors import InputError


def projections(key: int, r: int, out_max: int, in_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared A (r, in_max) and B (out_max, r) PEFT derives from `key`."""
    generator = torch.Generator(device="cpu").manual_seed(key)
    A = torch.empty(r, in_max).uniform_(-math.sqrt(6 / in_max), math.sqrt(6 / in_max), generator=generator)
    B = torch.empty(out_max, r).uniform_(-math.sqrt(6 / r), math.sqrt(6 / r), generator=generator)
    return A, B


def fold(w: torch.Tensor, rows: tuple[int, int], A: torch.Tensor, B: torch.Tensor, lambda_b: torch.Tensor,
         lambda_d: torch.Tensor, transposed: bool, scale: float = 1.0) -> torch.Tensor:
    """Rows [r0, r1) of W + scale * (lambda_b B) @ (lambda_d A), sliced to W; stored (in, out) when `transposed`."""
    r0, r1 = rows
    down = lambda_d.float().unsqueeze(1) * A.float()  # (r, in_max)
    if transposed:  # w (r1 - r0, out): its rows are inputs
        up = lambda_b.float().unsqueeze(1) * B.float()[: w.shape[1]]  # (out, r)
        return w.float() + scale * (down[:, r0:r1].T @ up.T)  # (r1 - r0, out)
    up = lambda_b.float()[r0:r1].unsqueeze(1) * B.float()[r0:r1]  # (r1 - r0, r)
    return w.float() + scale * (up @ down[:, : w.shape[1]])  # (r1 - r0, in)


def shared_projections(step: Step) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapter's A (r, in_max) and B (out_max, r): stored in the file, or regenerated from the key;
    kept for every layer of the adapter."""
    config, (out_max, in_max) = step.adapter.config, step.adapter.projection
    if config.save_projection:
        return step.kept("vera_A", lambda: step.whole("vera_A")), step.kept("vera_B", lambda: step.whole("vera_B"))
    pair = step.kept("vera_AB", lambda: torch.cat(
        [t.reshape(-1) for t in projections(config.projection_prng_key, config.r, out_max, in_max)]))
    n = config.r * in_max
    return pair[:n].reshape(config.r, in_max), pair[n:].reshape(out_max, config.r)


def _fold_step(w: torch.Tensor, rows: tuple[int, int], step: Step) -> torch.Tensor:
    A, B = shared_projections(step)
    return fold(w, rows, A, B, step["lambda_b"], step["lambda_d"], step.delta.transposed, step.delta.scale)


def read_config(path: str, file: str, raw: dict) -> AdapterConfig:
    key = raw.get("projection_prng_key", 0)
    if not isinstance(key, int):
        raise InputError(f"{file}: projection_prng_key: {key!r} is not an integer")
    return AdapterConfig(path, "VERA", number(file, raw, "r", int), fan_in_fan_out=bool(raw.get("fan_in_fan_out")),
                         target_modules=targets(raw), modules_to_save=names(raw.get("modules_to_save")),
                         save_projection=bool(raw.get("save_projection", True)), projection_prng_key=key)


def _check_projections(adapter: Adapter, module: str, parts: dict[str, str], r: int, out: int, inp: int) -> None:
    need(adapter, module, parts, "vera_A", "vera_B")
    A, B = part_shape(adapter, parts["vera_A"]), part_shape(adapter, parts["vera_B"])  # (r, in_max), (out_max, r)
    if A[0] != r or B[1] != r or A[1] < inp or B[0] < out:
        raise InputError(f"{adapter.file}: module {module!r}: shared projections vera_A {list(A)} / vera_B "
                         f"{list(B)} cannot be sliced to rank {r}, {inp} inputs and {out} outputs")


def map_module(adapter: Adapter, base, module: str, parts: dict[str, str], target: str, shared: dict[str, str]) -> None:
    need(adapter, module, parts, "lambda_b", "lambda_d")
    out, r = part_shape(adapter, parts["lambda_b"])[0], part_shape(adapter, parts["lambda_d"])[0]
    if r != adapter.config.r:
        raise InputError(f"{adapter.file}: module {module!r}: tensor {parts['lambda_d']!r} has rank {r} but the "
                         f"config says r={adapter.config.r}")
    W = base.tensors[target].shape  # (out, in), or (in, out) with fan_in_fan_out
    transposed = adapter.config.fan_in_fan_out if W[0] == W[1] else W[0] != out
    if W[1 if transposed else 0] != out:
        raise InputError(f"{adapter.file}: module {module!r}: tensor {parts['lambda_b']!r} scales {out} outputs but "
                         f"the base weight {target!r} is {list(W)}; the adapter was trained on another model size")
    inp = W[0] if transposed else W[1]
    parts = {**parts, **shared}
    if adapter.config.save_projection:
        _check_projections(adapter, module, parts, r, out, inp)
    adapter.deltas[target] = Delta("vera", module, parts, adapter.weight, transposed)
    adapter.projection = tuple(max(a, b) for a, b in zip(adapter.projection, (out, inp)))  # type: ignore[assignment]


KIND = Kind("vera", "VeRA", {"vera": one_at_a_time(_fold_step)}, peft_type="VERA", read_config=read_config,
            map_module=map_module)

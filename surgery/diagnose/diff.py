"""Checkpoint diff diagnostics (`surgery diff`): how far models are from each other, or from a
base, per tensor, per layer and per module type, streamed a block of rows at a time.

Without a base, for every pair (A, B) of the models listed (A before B): the relative change
||A − B||_F / ||B||_F. With a base, each model's task vector τᵢ = Mᵢ − BASE and:

* change ||τᵢ||_F / ||BASE||_F;
* cosine similarity of every pair of task vectors, τᵢ·τⱼ / (||τᵢ|| ||τⱼ||);
* sign conflicts, the disagreement TIES resolves by electing a sign (Yadav et al. 2023,
  arXiv:2306.01708): a parameter is *contested* when at least two models have a nonzero τᵢ there,
  and *conflicting* when its nonzero τᵢ do not all have the same sign. The conflict share is
  conflicting / contested. Example with three models and five parameters,
  τ₁ = [1, −1, 0, 2, 0], τ₂ = [1, 1, 3, 0, 0], τ₃ = [−1, 0, 0, 1, 0]: parameters 0, 1 and 3 are
  contested (2 is changed by one model only, 4 by none), 0 (+, +, −) and 1 (−, +) conflict, 3 (+, +)
  does not, so the share is 2/3.

Every number is a ratio of float64 sums over blocks (`Sums`), so per-layer, per-type and whole-model
figures are exact aggregates of the per-tensor ones, whatever the block size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations

import torch

from surgery.errors import InputError
from surgery.io.format import num_rows, row_numel
from surgery.io.reader import ModelFolder
from surgery.merge.layers import layer_of, natural_key

DEFAULT_BLOCK = 16 * 1024**2
Sums = dict[str, float]
Progress = Callable[[str, int], None]


def add(a: Sums, b: Sums) -> Sums:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in a.keys() | b.keys()}


def pair_sums(models: list[torch.Tensor]) -> Sums:
    """Sums for ||Mᵢ − Mⱼ||² and ||Mⱼ||² over one block; models are (rows, ...) float32."""
    out = {"n": float(models[0].numel())}
    for j, m in enumerate(models):
        out[f"r2:{j}"] = _sq(m)
    for i, j in combinations(range(len(models)), 2):
        out[f"d2:{i}:{j}"] = _sq(models[i] - models[j])
    return out


def task_sums(base: torch.Tensor, models: list[torch.Tensor]) -> Sums:
    """Sums for task-vector norms, dot products and sign conflicts over one block."""
    tau = torch.stack([m - base for m in models])  # (N, rows, ...)
    out = {"n": float(base.numel()), "b2": _sq(base)}
    for i in range(len(models)):
        out[f"t2:{i}"] = _sq(tau[i])
    for i, j in combinations(range(len(models)), 2):
        out[f"dot:{i}:{j}"] = torch.sum(tau[i] * tau[j], dtype=torch.float64).item()
    positive, negative = (tau > 0).sum(0), (tau < 0).sum(0)  # (rows, ...) models per sign
    out["contested"] = float(((positive + negative) >= 2).sum().item())
    out["conflicts"] = float(((positive > 0) & (negative > 0)).sum().item())
    return out


def _sq(t: torch.Tensor) -> float:
    return torch.sum(t * t, dtype=torch.float64).item()


@dataclass
class Diff:
    labels: list[str]                      # a short name per model, in the order given
    base: str | None                       # the base's label, when there is one
    tensors: dict[str, Sums] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # tensor -> why it is not compared

    def group(self, key: Callable[[str], object]) -> dict[object, Sums]:
        """Sums added up per key(tensor name), e.g. per layer or per module type."""
        out: dict[object, Sums] = {}
        for name, sums in self.tensors.items():
            k = key(name)
            out[k] = add(out.get(k, {}), sums)
        return out

    def total(self) -> Sums:
        return self.group(lambda name: "all").get("all", {})

    def columns(self) -> list[str]:
        n = len(self.labels)
        if self.base is None:
            return [f"change {self.labels[i]}/{self.labels[j]}" for i, j in combinations(range(n), 2)]
        cols = [f"change {label}" for label in self.labels]
        cols += [f"cos {self.labels[i]},{self.labels[j]}" for i, j in combinations(range(n), 2)]
        return cols + (["sign conflicts"] if n >= 2 else [])

    def metrics(self, s: Sums) -> dict[str, float | None]:
        """The columns' values for one set of sums (None where a ratio is undefined)."""
        n = len(self.labels)
        if self.base is None:
            values = [_ratio(s, f"d2:{i}:{j}", f"r2:{j}", root=True) for i, j in combinations(range(n), 2)]
        else:
            values = [_ratio(s, f"t2:{i}", "b2", root=True) for i in range(n)]
            values += [_cosine(s, i, j) for i, j in combinations(range(n), 2)]
            values += [_ratio(s, "conflicts", "contested")] if n >= 2 else []
        return dict(zip(self.columns(), values))


def _ratio(s: Sums, top: str, bottom: str, root: bool = False) -> float | None:
    if not s.get(bottom):
        return None
    r = s.get(top, 0.0) / s[bottom]
    return math.sqrt(r) if root else r


def _cosine(s: Sums, i: int, j: int) -> float | None:
    norm = math.sqrt(s.get(f"t2:{i}", 0.0) * s.get(f"t2:{j}", 0.0))
    return s.get(f"dot:{i}:{j}", 0.0) / norm if norm else None


def layer_key(name: str) -> int | str:
    """A tensor's layer index, or 'other' for the embeddings, final norm and head."""
    layer = layer_of(name)
    return "other" if layer is None else layer


def labels_of(paths: list[str]) -> list[str]:
    """Folder names, made unique with the position when two are the same."""
    names = [os.path.basename(os.path.normpath(p)) or p for p in paths]
    return [f"{n}#{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def diff_models(paths: list[str], base: str | None = None, block_bytes: int = DEFAULT_BLOCK,
                progress: Progress | None = None, allow_pickle: bool = False) -> Diff:
    """Compare the models at `paths` (two or more, or one or more with a `base`), tensor by tensor."""
    return run_diff(*open_models(paths, base, allow_pickle), block_bytes, progress)


def open_models(paths: list[str], base: str | None, allow_pickle: bool = False) -> tuple[list[ModelFolder], Diff]:
    """The folders (base first, when given) and an empty result naming the models. Headers only."""
    if len(paths) < (1 if base else 2):
        raise InputError("diff needs two models to compare, or a --base and at least one model")
    everything = ([base] if base else []) + list(paths)
    folders = [ModelFolder(p, allow_pickle=allow_pickle) for p in everything]
    labels = labels_of(everything)
    return folders, Diff(labels[1:] if base else labels, labels[0] if base else None)


def read_bytes(folders: list[ModelFolder]) -> int:
    return sum(i.nbytes for f in folders for i in f.tensors.values())


def run_diff(folders: list[ModelFolder], result: Diff, block_bytes: int = DEFAULT_BLOCK,
             progress: Progress | None = None) -> Diff:
    """Fill `result` with every tensor's sums, streaming a block of rows at a time; closes the folders."""
    try:
        for name in sorted({n for f in folders for n in f.tensors}, key=natural_key):  # layers.2 before layers.10
            _compare(result, folders, name, result.base is not None, block_bytes, progress)
    finally:
        for f in folders:
            f.close()
    if not result.tensors:
        raise InputError("the models share no tensor of the same shape; nothing to compare "
                         f"({len(result.skipped)} skipped)")
    return result


def _compare(result: Diff, folders: list[ModelFolder], name: str, has_base: bool, block_bytes: int,
             progress: Progress | None) -> None:
    why = _skip_reason(folders, result, name, has_base)
    if why:
        result.skipped[name] = why
        return
    info = folders[-1].tensors[name]
    sums: Sums = {}
    for span in spans(info.shape, block_bytes, len(folders)):
        blocks = [f.read(name, span).float() for f in folders]  # each (rows, ...)
        sums = add(sums, task_sums(blocks[0], blocks[1:]) if has_base else pair_sums(blocks))
    result.tensors[name] = sums
    if progress:
        progress(name, sum(f.tensors[name].nbytes for f in folders))


def _skip_reason(folders: list[ModelFolder], result: Diff, name: str, has_base: bool) -> str:
    labels = ([result.base] if has_base else []) + result.labels
    missing = [label for f, label in zip(folders, labels) if name not in f.tensors]
    if missing:
        return f"missing from {', '.join(missing)}"
    shapes = {f.tensors[name].shape for f in folders}
    if len(shapes) > 1:
        return "shapes differ: " + ", ".join(f"{label} {list(f.tensors[name].shape)}"
                                             for f, label in zip(folders, labels))
    if not folders[0].tensors[name].dtype.is_floating_point:
        return "not floating point"
    return ""


def spans(shape: tuple[int, ...], block_bytes: int, inputs: int) -> list[tuple[int, int]]:
    """Row blocks whose float32 working set (inputs plus about as many temporaries) fits block_bytes."""
    rows = num_rows(shape)
    step = max(1, block_bytes // (max(row_numel(shape), 1) * 4 * 2 * inputs))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)] or [(0, 0)]

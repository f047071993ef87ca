"""LoRA adapters of one base merged into one LoRA adapter, module by module (`surgery merge-adapters`).

Every check (types, options, bases, module shapes and kinds, ranks, flags) runs on configs and
safetensors headers before the output exists; then each module's factors are read, combined
(`surgery.adapters.combine`) and appended to the output file, one module in memory at a time.

Accepted: plain LoRA, with rsLoRA, rank and alpha patterns, embeddings and GPT-2's Conv1D. Refused:
DoRA (its magnitude renormalises W + delta per column, so DoRA adapters do not add up), `lora_bias`,
`modules_to_save` (a whole module cannot be weighted in adapter space), IA3 and VeRA. The copy of
a base embedding PEFT saves beside an embedding LoRA (`...embed_tokens.base_layer.weight`) is carried
over, once, when every input that holds it holds the same values. A module that
only some inputs adapt is merged as if the others had a zero delta there: exact, since an adapter
that leaves a module alone adds nothing to it; the report lists such modules.

The output is a PEFT LoRA folder with lora_alpha = r per module (scale 1, no rsLoRA), so its delta
is exactly B @ A as written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from surgery.adapters.combine import COMBINATIONS, SPARSE, Term, cat, combined_delta, svd_factors
from surgery.adapters.config import WEIGHTS, AdapterConfig, raw_config
from surgery.adapters.load import read_config
from surgery.adapters.lora_format import adapter_config, factor_keys
from surgery.adapters.lowrank import relative_error
from surgery.adapters.mapping import AdapterWeights, group_parts
from surgery.errors import InputError, NumericsError, SpecError
from surgery.io.output import atomic_folder, check_output_path, write_json
from surgery.io.writer import Shard, ShardWriter

REPORT = "merge_adapters.json"


@dataclass(frozen=True)
class AdapterMergeSettings:
    combination: str
    rank: int | None = None       # svd combinations: the merged rank (default: the largest input rank)
    density: float | None = None  # ties/dare combinations: share of each delta kept
    seed: int = 0                 # dare combinations: seeds the drops, per module


@dataclass(frozen=True)
class AdapterInput:
    """One input adapter."""

    config: AdapterConfig
    weights: AdapterWeights
    weight: float
    base_name: str | None
    task_type: str | None


@dataclass(frozen=True)
class Part:
    """One input's factors of one module."""

    source: int
    A: str              # tensor name of A (r, in)
    B: str              # tensor name of B (out, r)
    rank: int
    scale: float        # PEFT's scaling of that adapter on that module (without the user's weight)


@dataclass(frozen=True)
class Module:
    name: str
    kind: str                   # linear, conv1d or embedding (the names of `surgery.adapters.lora_format`)
    shape: tuple[int, int]      # (out, in) of B @ A
    parts: tuple[Part, ...]
    rank: int = 0               # of the merged module


@dataclass
class AdapterMergePlan:
    sources: list[AdapterInput]
    modules: list[Module]
    settings: AdapterMergeSettings
    dtype: torch.dtype
    carried: dict[str, int] = field(default_factory=dict)  # saved base layer -> the input it is copied from
    errors: dict[str, float] = field(default_factory=dict)  # module -> ||target - B A|| / ||target||, once written

    def close(self) -> None:
        for s in self.sources:
            s.weights.close()


def check_settings(s: AdapterMergeSettings) -> None:
    if s.combination is None:
        raise SpecError("--combination", "", f"needed for LoRA adapters: one of {', '.join(COMBINATIONS)}")
    if s.combination not in COMBINATIONS:
        raise SpecError("--combination", str(s.combination),
                        f"LoRA adapters merge with one of {', '.join(COMBINATIONS)}")
    if s.combination == "cat" and s.rank is not None:
        raise SpecError("--rank", str(s.rank), "cat's rank is the sum of the input ranks; drop --rank, or use svd")
    if s.rank is not None and s.rank < 1:
        raise SpecError("--rank", str(s.rank), "the rank must be at least 1")
    if s.combination in SPARSE and s.density is None:
        raise SpecError("--density", "", f"{s.combination} needs the share of each delta kept, in (0, 1], e.g. 0.5")
    if s.combination not in SPARSE and s.density is not None:
        raise SpecError("--density", str(s.density), f"applies only to {', '.join(SPARSE)}, not {s.combination}")
    if s.density is not None and not 0 < s.density <= 1:
        raise SpecError("--density", str(s.density), "the density must be in (0, 1]")


def open_source(path: str, weight: float) -> AdapterInput:
    raw = raw_config(path)
    kind = str(raw.get("peft_type", "")).upper()
    if kind != "LORA":
        raise InputError(f"{os.path.join(path, 'adapter_config.json')}: peft_type: {kind or 'missing'} cannot be "
                         "merged in adapter space (LoRA and soft prompts can); fold it into the base with "
                         "`surgery fold`")
    config = read_config(path)
    for flag, what in (("use_dora", "DoRA renormalises W + delta per column, so DoRA adapters do not add up"),
                       ("lora_bias", "lora_bias adds a bias delta, which this merge does not carry")):
        if getattr(config, flag):
            raise InputError(f"{config.file}: {flag}: true: {what}; fold the adapters into the base instead "
                             "(`surgery fold BASE A1 A2 OUT --weight ...`)")
    return AdapterInput(config, AdapterWeights(path), weight, raw.get("base_model_name_or_path"), raw.get("task_type"))


def check_same(sources: list[AdapterInput], field_name: str, what: str) -> None:
    """Inputs that state `field_name` must state the same value; one that leaves it out is not compared."""
    stated = [(s, getattr(s, field_name)) for s in sources if getattr(s, field_name)]
    for s, value in stated[1:]:
        if value != stated[0][1]:
            raise InputError(f"{s.config.path}: {what} is {value!r} but {stated[0][0].config.path} says "
                             f"{stated[0][1]!r}; adapters merged in adapter space must share one base and task "
                             "(if both name the same model, give one copy's adapter_config.json the other's value)")


def source_modules(i: int, s: AdapterInput) -> list[Module]:
    """The LoRA modules of input `i`, checked from the header alone."""
    modules, _, replaced = group_parts(s.weights.tensors)
    whole = sorted(n for n in replaced.values() if ".base_layer." not in n)
    if whole:
        raise InputError(f"{s.config.weights_file}: tensor {whole[0]!r} is a whole module (modules_to_save), which "
                         "cannot be weighted in adapter space; fold the adapters into the base instead")
    return [_module(i, s, name, parts) for name, parts in sorted(modules.items())]


def carried(sources: list[AdapterInput]) -> dict[str, int]:
    """Saved base layers (PEFT's copy of an adapted embedding): tensor -> the first input holding it.
    Every input holding one must hold the same values, or the adapters saw different vocabularies."""
    out: dict[str, int] = {}
    for i, s in enumerate(sources):
        for name in sorted(n for n in s.weights.tensors if ".base_layer." in n):
            if name not in out:
                out[name] = i
                continue
            first = sources[out[name]]
            if not torch.equal(first.weights.read(name), s.weights.read(name)):
                raise InputError(f"{s.config.weights_file}: tensor {name!r} (a saved base layer) differs from the one "
                                 f"in {first.config.weights_file}; the adapters were trained on different vocabularies")
    return out


def _module(i: int, s: AdapterInput, name: str, parts: dict[str, str]) -> Module:
    extra = sorted(set(parts) - {"A", "B", "embedding_A", "embedding_B"})
    if extra:
        raise InputError(f"{s.config.weights_file}: module {name!r} has {extra} besides its LoRA factors "
                         "(DoRA or lora_bias); only plain LoRA merges in adapter space")
    embedding = "embedding_A" in parts or "embedding_B" in parts
    a, b = ("embedding_A", "embedding_B") if embedding else ("A", "B")
    if a not in parts or b not in parts:
        raise InputError(f"{s.config.weights_file}: module {name!r} has {sorted(parts)} but lacks its "
                         f"{'A' if a not in parts else 'B'} factor; the adapter file is incomplete: save it again")
    A, B = s.weights.tensors[parts[a]].shape, s.weights.tensors[parts[b]].shape  # (r, in), (out, r)
    if len(A) != 2 or len(B) != 2 or A[0] != B[1]:
        raise InputError(f"{s.config.weights_file}: module {name!r}: factors {parts[a]!r} {list(A)} and "
                         f"{parts[b]!r} {list(B)} are not A (r, in) and B (out, r) of one rank; only linear and "
                         "embedding LoRA merge")
    r, _ = s.config.rank_alpha(name)
    if A[0] != r:
        raise InputError(f"{s.config.weights_file}: module {name!r}: tensor {parts[a]!r} has rank {A[0]} but the "
                         f"config (r / rank_pattern) gives {r}; the config does not belong to these weights")
    kind = "embedding" if embedding else "conv1d" if s.config.fan_in_fan_out else "linear"
    part = Part(i, parts[a], parts[b], A[0], s.config.lora_scale(name))
    return Module(name, kind, (B[0], A[1]), (part,))


def joined(sources: list[AdapterInput], found: list[Module], into: dict[str, Module]) -> None:
    """Add one input's modules to the union; the same module must have one kind and shape everywhere."""
    for m in found:
        have = into.get(m.name)
        if have is None:
            into[m.name] = m
            continue
        first = sources[have.parts[0].source].config.path
        if (have.kind == "embedding") != (m.kind == "embedding") or have.shape != m.shape:
            raise InputError(f"{sources[m.parts[0].source].config.path}: module {m.name!r} is a {m.kind} LoRA of "
                             f"(out, in) {list(m.shape)} but in {first} a {have.kind} LoRA of {list(have.shape)}; "
                             "the adapters were trained on different bases")
        kind = "conv1d" if "conv1d" in (have.kind, m.kind) else have.kind  # PEFT sets fan_in_fan_out for Conv1D itself
        into[m.name] = Module(m.name, kind, m.shape, have.parts + m.parts)


def with_ranks(modules: list[Module], settings: AdapterMergeSettings) -> list[Module]:
    """Each module's merged rank: the sum of its inputs' ranks (cat), or --rank / the largest input rank."""
    largest = max(p.rank for m in modules for p in m.parts)
    out = []
    for m in modules:
        rank = sum(p.rank for p in m.parts) if settings.combination == "cat" else settings.rank or largest
        if rank > min(m.shape):
            flag = "--rank" if settings.rank else "the largest input rank"
            raise SpecError("--rank", str(rank), f"module {m.name!r} is (out, in) {list(m.shape)}, so its rank can "
                            f"be at most {min(m.shape)}; {flag} is too large: pass --rank {min(m.shape)} or lower")
        out.append(Module(m.name, m.kind, m.shape, m.parts, rank))
    return out


def plan_adapter_merge(paths: list[str], weights: list[float], settings: AdapterMergeSettings) -> AdapterMergePlan:
    """Open and check everything: flags, configs and headers; reads no factor."""
    check_settings(settings)
    sources = [open_source(p, w) for p, w in zip(paths, weights)]
    check_same(sources, "base_name", "base_model_name_or_path")
    check_same(sources, "task_type", "task_type")
    union: dict[str, Module] = {}
    for i, s in enumerate(sources):
        joined(sources, source_modules(i, s), union)
    if not union:
        raise InputError(f"{paths[0]}: no LoRA factors in any input; nothing to merge")
    dtypes = {s.weights.tensors[p.A].dtype for m in union.values() for p in m.parts for s in [sources[p.source]]}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    modules = with_ranks(sorted(union.values(), key=lambda m: m.name), settings)
    return AdapterMergePlan(sources, modules, settings, dtype, carried(sources))


def terms(plan: AdapterMergePlan, m: Module) -> list[Term]:
    out = []
    for p in m.parts:
        s = plan.sources[p.source]
        A, B = (_finite(s, name, s.weights.read(name).float()) for name in (p.A, p.B))
        out.append(Term(A, B, p.scale, s.weight))
    return out


def _finite(s: AdapterInput, name: str, t: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise InputError(f"{s.config.weights_file}: tensor {name!r} holds NaN or Inf; the adapter is broken: use an "
                         "earlier checkpoint of it")
    return t


def merged_factors(plan: AdapterMergePlan, m: Module) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A (rank, in), B (out, rank), relative truncation error) of module `m`."""
    found = terms(plan, m)
    if plan.settings.combination == "cat":
        A, B = cat(found)
        return A, B, 0.0
    s = plan.settings
    delta = combined_delta(found, s.combination, s.density, s.seed, m.name)  # (out, in)
    A, B = svd_factors(delta, m.rank)
    return A, B, relative_error(delta, B, A)


def entries(plan: AdapterMergePlan) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    out = []
    for m in plan.modules:
        a, b = factor_keys(m.name, m.kind)
        out += [(a, plan.dtype, (m.rank, m.shape[1])), (b, plan.dtype, (m.shape[0], m.rank))]
    for name, i in plan.carried.items():
        info = plan.sources[i].weights.tensors[name]
        out.append((name, info.dtype, tuple(info.shape)))
    return out


def write_merge(plan: AdapterMergePlan, out: str, force: bool = False) -> str:
    """Write the merged adapter to `out`, atomically; returns its absolute path."""
    out = check_output_path(out, [s.config.path for s in plan.sources], force)
    with atomic_folder(out, replace=force) as tmp:
        writer = ShardWriter(tmp, [Shard(WEIGHTS, tuple(entries(plan)))], {"format": "pt"})
        try:
            for m in plan.modules:
                A, B, plan.errors[m.name] = merged_factors(plan, m)
                if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
                    raise NumericsError(f"module {m.name!r}: the merged factors hold NaN or Inf (weights too large?); "
                                        "nothing was written")
                a, b = factor_keys(m.name, m.kind)
                writer.write(a, A.to(plan.dtype))
                writer.write(b, B.to(plan.dtype))
            for name, i in plan.carried.items():
                writer.write(name, plan.sources[i].weights.read(name))
            writer.finish()
        finally:
            writer.abort()
        write_json(os.path.join(tmp, "adapter_config.json"), output_config(plan))
        write_json(os.path.join(tmp, REPORT), report(plan))
    return out


def output_config(plan: AdapterMergePlan) -> dict:
    base = next((s.base_name for s in plan.sources if s.base_name), None)
    task = next((s.task_type for s in plan.sources if s.task_type), None)
    ranks = {m.name: m.rank for m in plan.modules}
    kinds = {m.name: m.kind for m in plan.modules}
    return adapter_config(ranks, kinds, [], base, task)


def partial(plan: AdapterMergePlan) -> list[str]:
    """Modules that only some inputs adapt (merged with a zero delta for the others)."""
    return [m.name for m in plan.modules if len(m.parts) < len(plan.sources)]


def report(plan: AdapterMergePlan) -> dict:
    s = plan.settings
    return {"combination": s.combination, "rank": s.rank, "density": s.density, "seed": s.seed,
            "inputs": [{"path": x.config.path, "weight": x.weight} for x in plan.sources],
            "partial_modules": partial(plan),
            "modules": [{"module": m.name, "kind": m.kind, "rank": m.rank, "inputs": [p.source for p in m.parts],
                         "relative_error": plan.errors.get(m.name)} for m in plan.modules]}


def describe(plan: AdapterMergePlan) -> str:
    ranks = sorted({m.rank for m in plan.modules})
    lines = [f"{plan.settings.combination}: {len(plan.modules)} modules from {len(plan.sources)} adapters, "
             f"rank {ranks[0] if len(ranks) == 1 else f'{ranks[0]}-{ranks[-1]}'}"]
    if partial(plan):
        lines.append(f"{len(partial(plan))} modules adapted by only some inputs (zero delta for the others), "
                     f"e.g. {partial(plan)[0]}")
    if plan.errors and plan.settings.combination != "cat":
        worst = max(plan.errors, key=plan.errors.get)
        lines.append(f"largest truncation error ||target - BA|| / ||target||: {plan.errors[worst]:.3g} ({worst})")
    return "\n".join(lines)

"""The spec of an evolutionary merge search (mergekit-evolve's config: `genome`, `tasks`, `limit`, ...,
plus our `budget`, `population`, `sigma0`, `seed` and `genome.bounds`) and the genome it describes:
which numbers the optimiser tunes and how a point of the search becomes a merge spec the engine runs.

A genotype is a vector x in the unit cube [0, 1]^n (CMA-ES samples there; `cma` keeps it inside);
gene k's value is lo_k + x_k (hi_k - lo_k), within the bounds of that gene. The layout is mergekit's:
(layer groups, models, parameter sets, genes), flattened in that order, where a parameter set is one
per tensor-name filter and then the default set, and the genes are the method's tuned parameters
(weight, and density for the sparsifying methods). Non-smooth genomes become one slice per layer
group (mergekit's `_discrete_config_slices`); smooth ones become per-model gradients over the
groups, which the engine interpolates across the layers (mergekit's `_smooth_config_models`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from surgery.errors import InputError, SpecError
from surgery.io.locate import resolve_path
from surgery.merge.methods import REGISTRY
from surgery.merge.params import check_value
from surgery.merge.spec import DTypeName
from surgery.spec_file import located, read, validate

# method -> the per-model parameters the search tunes (mergekit's METHOD_PARAM_MAPS, widened to every
# method of the task-vector family; slerp is left out: see README)
GENES: dict[str, tuple[str, ...]] = {
    "linear": ("weight",), "task_arithmetic": ("weight",), "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"), "dare_linear": ("weight", "density"), "breadcrumbs": ("weight", "density"),
    "breadcrumbs_ties": ("weight", "density"), "della": ("weight", "density"), "della_linear": ("weight", "density"),
}
DEFAULT_BOUNDS = {"weight": (0.0, 1.0), "density": (0.1, 1.0)}
NEGATIVE_WEIGHTS = (-1.0, 1.0)  # weight's default bounds with allow_negative_weights
NORMALIZED_BY_DEFAULT = ("ties", "dare_ties", "linear")  # mergekit's default for `normalize: null`


class GenomeSpec(BaseModel):
    """mergekit's ModelGenomeDefinition, with `bounds` added."""

    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=1, description="the models merged (paths, relative to --models-dir)")
    merge_method: str = Field(description="the engine's merge method; its tuned parameters are GENES[method]")
    base_model: str | None = Field(None, description="the base of task-vector methods")
    tokenizer_source: str | None = Field(None, description="passed to every merge spec")
    layer_granularity: int = Field(0, ge=0, description="layers per group with their own genes; 0: one group")
    normalize: bool | None = Field(None, description="the method's normalize; null: true for ties, dare_ties, linear")
    allow_negative_weights: bool = Field(False, description="let weights go below zero (default bounds [-1, 1])")
    filters: list[str] | None = Field(None, description="tensor-name substrings with genes of their own")
    smooth: bool = Field(False, description="interpolate each gene across the layers instead of a step per group")
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict, description="gene -> [low, high]")

    @field_validator("filters")
    @classmethod
    def _filters(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (any(not f for f in v) or len(set(v)) < len(v)):
            raise ValueError("filters must be distinct, non-empty tensor-name substrings")
        return v


class TaskSpec(BaseModel):
    """One objective: an lm-eval task (through the results store) and its weight in the fitness."""

    model_config = ConfigDict(extra="forbid")
    name: str
    weight: float = 1.0
    metric: str | None = Field(None, description="must be the task's stored metric when given (default: it)")

    @model_validator(mode="before")
    @classmethod
    def _plain_name(cls, value):
        return {"name": value} if isinstance(value, str) else value


class EvolveSpec(BaseModel):
    """mergekit's EvolMergeConfiguration, with the optimiser's settings (mergekit's CLI flags) added."""

    model_config = ConfigDict(extra="forbid")
    genome: GenomeSpec
    tasks: list[TaskSpec] = Field(min_length=1)
    limit: int | None = Field(None, gt=0, description="documents scored per task")
    num_fewshot: int | None = Field(None, ge=0)
    apply_chat_template: bool = Field(False, description="lm-eval's option (mergekit's default is true)")
    random_init: bool = Field(False, description="start CMA-ES from a seeded random point instead of mergekit's")
    shuffle: bool = Field(False, description="mergekit only: ignored here (a warning says so)")
    fewshot_as_multiturn: bool = Field(False, description="mergekit only: ignored here (a warning says so)")
    budget: int = Field(100, gt=0, description="evaluations at most (mergekit's --max-fevals)")
    population: int | None = Field(None, ge=2, description="candidates per generation (default: cma's 4 + 3 ln n)")
    sigma0: float = Field(1 / 6, gt=0, le=1, description="CMA-ES's initial step, as a share of each gene's range")
    seed: int = Field(0, description="seeds the optimiser and every merge's random draws")
    dtype: DTypeName | None = Field(None, description="dtype of the candidates written (default: the inputs')")

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in v]
        if len(set(names)) < len(names):
            raise ValueError("a task is named twice; give each task once with its weight")
        return v


IGNORED = ("shuffle", "fewshot_as_multiturn")  # mergekit fields accepted so its configs load


@dataclass(frozen=True)
class Genome:
    """A genome resolved against its models: model paths made absolute, the layer count read, the bounds
    of each gene checked. `shape` is (groups, models, parameter sets, genes)."""

    spec: GenomeSpec
    models: tuple[str, ...]      # absolute paths, in spec order
    base: str | None             # absolute path
    layers: int
    bounds: tuple[tuple[float, float], ...]  # per gene, in GENES order

    @property
    def genes(self) -> tuple[str, ...]:
        return GENES[self.spec.merge_method]

    @property
    def groups(self) -> int:
        return self.layers // self.spec.layer_granularity if self.spec.layer_granularity else 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.groups, len(self.models), len(self.spec.filters or []) + 1, len(self.genes))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def values(self, x) -> np.ndarray:
        """The genotype `x` (n,) in the unit cube as parameter values, shape (groups, models, sets, genes)."""
        unit = np.asarray(x, dtype=np.float64).reshape(self.shape)
        lo, hi = (np.array(b) for b in zip(*self.bounds))  # each (genes,)
        return lo + unit * (hi - lo)

    def unit(self, values: np.ndarray) -> np.ndarray:
        """Parameter values (groups, models, sets, genes) as a genotype (n,), clipped into the unit cube."""
        lo, hi = (np.array(b) for b in zip(*self.bounds))
        return np.clip((values - lo) / (hi - lo), 0.0, 1.0).reshape(-1)

    def initial(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """mergekit's starting point (weight 1/models, every other gene 1) clipped into the bounds, or a
        uniform draw from `rng` (random_init)."""
        if rng is not None:
            return rng.random(self.size)
        values = np.ones(self.shape)
        values[..., 0] = 1 / len(self.models)  # weight is always the first gene
        return self.unit(values)


def load_evolve_spec(path: str) -> tuple[EvolveSpec, str]:
    """The spec file validated (errors located as `file: field (line N): problem`), and its text."""
    spec = read(path, "evolve spec", "with genome and tasks")
    return parse_evolve_spec(spec.data, path, spec.text), spec.text


def parse_evolve_spec(data: dict, file: str = "<evolve spec>", text: str | None = None) -> EvolveSpec:
    spec = validate(EvolveSpec, data, file, text)
    check_method(spec.genome, file, text)
    check_bounds(spec.genome, file, text)
    return spec


def check_method(genome: GenomeSpec, file: str, text: str | None = None) -> None:
    """A method the search knows, with a base where it needs one, and the base not among the models."""
    method = genome.merge_method
    if method not in GENES:
        raise located(file, "genome.merge_method", f"cannot evolve {method!r}; the methods with tunable weights "
                      f"are {', '.join(GENES)}", text)
    if REGISTRY[method].base == "required":
        if not genome.base_model:
            raise located(file, "genome.base_model", f"{method} needs a base_model (the model the others' task "
                          "vectors are taken from)", text)
        if genome.base_model in genome.models:
            i = genome.models.index(genome.base_model)
            raise located(file, f"genome.models.{i}", f"the base model is also listed as a model; {method} takes "
                          "task vectors from it, so its genes would do nothing: remove it here", text)


def check_bounds(genome: GenomeSpec, file: str, text: str | None = None) -> tuple[tuple[float, float], ...]:
    """Each gene's [low, high]: given or default, low < high, both inside the method's own range for
    that parameter (density in (0, 1] for TIES), weights >= 0 unless negative weights are allowed."""
    genes, fields = GENES[genome.merge_method], REGISTRY[genome.merge_method].per_model.model_fields
    for gene in genome.bounds:
        if gene not in genes:
            raise located(file, f"genome.bounds.{gene}", f"{genome.merge_method} tunes {', '.join(genes)}; "
                          f"'{gene}' is not one of them", text)
    out = []
    for gene in genes:
        default = NEGATIVE_WEIGHTS if gene == "weight" and genome.allow_negative_weights else DEFAULT_BOUNDS[gene]
        lo, hi = genome.bounds.get(gene, default)
        where = f"genome.bounds.{gene}"
        for i, value in enumerate((lo, hi)):
            try:
                check_value(fields[gene], value, file, f"{where}.{i}")
            except SpecError as e:
                raise located(file, e.field, e.problem, text) from None
        if gene == "weight" and lo < 0 and not genome.allow_negative_weights:
            raise located(file, f"{where}.0", f"a negative weight bound ({lo}) needs allow_negative_weights: "
                          "true; or raise the bound to 0", text)
        if not lo < hi:
            raise located(file, where, f"low must be below high (got [{lo}, {hi}])", text)
        out.append((float(lo), float(hi)))
    return tuple(out)


def resolve_genome(spec: GenomeSpec, file: str, text: str | None = None, models_dir: str | None = None) -> Genome:
    """The genome against its models: each path found (relative ones under `models_dir`), the layer count
    read from a plan of the starting point's merge (every model, name and shape checked, nothing read),
    `layer_granularity` checked against it, and the starting point's merge planned with the real groups."""
    models = tuple(_found(m, f"genome.models.{i}", file, text, models_dir) for i, m in enumerate(spec.models))
    base = _found(spec.base_model, "genome.base_model", file, text, models_dir) if spec.base_model else None
    bounds = check_bounds(spec, file, text)
    one_group = Genome(spec.model_copy(update={"layer_granularity": 0}), models, base, 0, bounds)
    layers = _planned_layers(one_group, file)
    if spec.layer_granularity and layers % spec.layer_granularity:
        raise located(file, "genome.layer_granularity", f"the models have {layers} layers, which groups of "
                      f"{spec.layer_granularity} do not divide; choose a divisor of {layers}", text)
    genome = Genome(spec, models, base, layers, bounds)
    _planned_layers(genome, file)
    return genome


def _found(ref: str, field: str, file: str, text: str | None, models_dir: str | None) -> str:
    """An absolute path for a model reference (`base+adapter` references too, part by part)."""
    try:
        return "+".join(resolve_path(part, models_dir) for part in ref.split("+"))
    except InputError as e:
        raise located(file, field, str(e), text) from None


def _planned_layers(genome: Genome, file: str) -> int:
    """The layer count of the starting point's merge, planned by the engine (nothing read or written)."""
    from evals.search.candidates import plan_spec

    try:
        plan = plan_spec(merge_spec(genome, genome.initial()), file)
    except SpecError as e:
        raise SpecError(file, "genome", f"the engine refuses the merges it makes ({e.field}: {e.problem})") from None
    for folder in plan.folders.values():
        folder.close()
    return len(plan.out_layers)


def ignored_fields(spec: EvolveSpec) -> list[str]:
    """mergekit fields set here that change nothing in this search, for a warning each."""
    return [name for name in IGNORED if getattr(spec, name)]


# ---- genotype -> merge spec -----------------------------------------------------------------------

def merge_spec(genome: Genome, x, seed: int = 0, dtype: str | None = None) -> dict:
    """The merge spec (mergekit's YAML as a dict) of genotype `x`; absolute model paths, so it runs anywhere."""
    method = genome.spec.merge_method
    values = genome.values(x)  # (groups, models, sets, genes)
    normalize = genome.spec.normalize if genome.spec.normalize is not None else method in NORMALIZED_BY_DEFAULT
    spec: dict = {"merge_method": method}
    if genome.base:
        spec["base_model"] = genome.base
    if genome.spec.smooth or genome.groups == 1:
        spec["models"] = _models(genome, values)
    else:
        spec["slices"] = _slices(genome, values)
    spec["parameters"] = {"normalize": normalize}
    if genome.spec.tokenizer_source:
        spec["tokenizer_source"] = genome.spec.tokenizer_source
    return spec | ({"dtype": dtype} if dtype else {}) | {"seed": seed}


def _models(genome: Genome, values: np.ndarray) -> list[dict]:
    """One entry per model, each gene a gradient over the groups (a plain value for one group)."""
    out = []
    for m, model in enumerate(genome.models):
        per_set = values[:, m]  # (groups, sets, genes)
        params = {g: _setting([_plain(per_set[:, s, k].tolist()) for s in range(per_set.shape[1])], genome.spec.filters)
                  for k, g in enumerate(genome.genes)}
        out.append({"model": model, "parameters": params})
    return out


def _slices(genome: Genome, values: np.ndarray) -> list[dict]:
    """One slice per layer group: every model's layers of the group with that group's genes, and the base's."""
    step, out = genome.spec.layer_granularity, []
    for group in range(genome.groups):
        layers = (group * step, (group + 1) * step)
        sources = [{"model": model, "layer_range": list(layers),
                    "parameters": {g: _setting([float(v) for v in values[group, m, :, k]], genome.spec.filters)
                                   for k, g in enumerate(genome.genes)}}
                   for m, model in enumerate(genome.models)]
        if genome.base:
            sources.append({"model": genome.base, "layer_range": list(layers)})
        out.append({"sources": sources})
    return out


def _setting(per_set: list, filters: list[str] | None) -> object:
    """A parameter's setting: the default set's value, or one condition per filter and then the default."""
    if not filters:
        return per_set[-1]
    return [{"filter": f, "value": v} for f, v in zip(filters, per_set)] + [{"value": per_set[-1]}]


def _plain(values: list[float]) -> float | list[float]:
    return float(values[0]) if len(values) == 1 else [float(v) for v in values]


def spec_yaml(spec: dict, header: str = "") -> str:
    """A merge spec as YAML for `surgery merge`, keys in the order built, floats written exactly."""
    body = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=120)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body

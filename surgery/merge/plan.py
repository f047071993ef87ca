"""From a validated spec to a merge plan: every output tensor, where its inputs are, its resolved
parameters and output dtype. Every name, shape and parameter is checked here, before the first byte
is written; errors name the spec field, the tensor and the models involved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ValidationError

from surgery.errors import InputError, SpecError
from surgery.io.format import TensorInfo, nbytes
from surgery.io.locate import resolve_path
from surgery.io.reader import ModelFolder
from surgery.merge.layers import is_pre, layer_of, layer_template, num_layers, with_layer
from surgery.merge.methods import REGISTRY
from surgery.merge.methods.method import Method
from surgery.merge.params import build, check_parameters, fields_by_alias, first_value
from surgery.merge.spec import DTYPE_NAMES, MergeSpec
from surgery.vocab.plan import VocabPlan, plan_vocabulary

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass(frozen=True)
class TensorSource:
    model: str      # the model as the spec names it
    name: str       # the tensor's name in that model
    where: str      # the spec field that brought this model in, for errors


@dataclass(frozen=True)
class TensorJob:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    base: TensorSource | None
    models: tuple[TensorSource, ...]
    shared: BaseModel
    per_model: tuple[BaseModel, ...]
    copy: bool = False  # bytes copied unchanged (integer buffers)

    @property
    def sources(self) -> tuple[TensorSource, ...]:
        return ((self.base,) if self.base else ()) + self.models


@dataclass(frozen=True)
class SliceInputs:
    """One output slice: its base and other inputs, each with a layer range and parameters."""

    where: str
    base: tuple[str, tuple[int, int], str] | None        # (model, range, spec field)
    others: tuple[tuple[str, tuple[int, int], dict | None, str], ...]
    params: dict | None

    @property
    def length(self) -> int:
        (a, b) = (self.base[1] if self.base else self.others[0][1])
        return b - a


@dataclass
class MergePlan:
    spec: MergeSpec
    file: str
    method: Method
    folders: dict[str, ModelFolder]
    jobs: list[TensorJob]
    config_model: str
    config: dict
    tokenizer_path: str = ""  # folder the tokenizer files and chat template are copied from
    out_layers: list[int] = field(default_factory=list)  # config-source layer feeding each output layer
    vocab: VocabPlan | None = None  # vocabulary surgery (tokenizer_source); None when nothing was compared
    warnings: list[str] = field(default_factory=list)  # parameters ignored or kept for mergekit compatibility
    provenance: dict[str, str] = field(default_factory=dict)  # metadata entries replacing the engine's own
    # (an operation run as a merge, e.g. fold, names itself and its inputs)
    fell_back: list[str] = field(default_factory=list)  # tensors the last run gave the method's fallback

    @property
    def merged(self) -> int:
        """Tensors the method computes (the rest are integer buffers, copied)."""
        return sum(not j.copy for j in self.jobs)

    def info(self, src: TensorSource) -> TensorInfo:
        return self.folders[src.model].tensors[src.name]

    @property
    def write_bytes(self) -> int:
        return sum(nbytes(j.dtype, j.shape) for j in self.jobs)

    @property
    def read_bytes(self) -> int:
        return sum(self.info(s).nbytes for j in self.jobs for s in j.sources)


def plan_merge(spec: MergeSpec, file: str, out_dtype: str | None = None, allow_pickle: bool = False,
               models_dir: str | None = None, opened: dict | None = None) -> MergePlan:
    """Check everything and lay out every output tensor; relative model paths are read from `models_dir`.
    `opened` maps model names to readers already open (e.g. a FoldedModel), used instead of opening them."""
    method = _method(spec, file)
    warnings = check_parameters(spec, method, file)
    slices = _slices(spec, method, file)
    folders = _open(spec, file, allow_pickle, models_dir, opened)
    first_fields = dict(reversed(_model_fields(spec)))  # each model's first spec field, for errors
    vocab = plan_vocabulary(spec, file, folders, first_fields, models_dir)
    folders = vocab.wrap(folders) if vocab else folders  # embedding rows aligned by token
    slices = [_check_ranges(s, folders, file) for s in slices]
    dtype = DTYPES[out_dtype or spec.out_dtype or spec.dtype] if (out_dtype or spec.out_dtype or spec.dtype) else None
    jobs: list[TensorJob] = []
    first, last = slices[0], slices[-1]
    ref0 = _ref_model(first)
    non_layer = [n for n in folders[ref0].tensors if layer_of(n) is None]
    for name in sorted(n for n in non_layer if is_pre(n)):
        jobs.append(_job(spec, method, file, folders, first, name, 0, None, 0.0, dtype))
    out_layers, out_index = [], 0
    for s in slices:
        for k in range(s.length):
            t = k / (s.length - 1) if s.length > 1 else 1.0
            ref_layer = _range_of(s, _ref_model(s))[0] + k
            for name in layer_template(list(folders[_ref_model(s)].tensors), ref_layer):
                jobs.append(_job(spec, method, file, folders, s, name, k, out_index, t, dtype))
            out_layers.append(ref_layer)
            out_index += 1
    ref_last = _ref_model(last)
    for name in sorted(n for n in folders[ref_last].tensors if layer_of(n) is None and not is_pre(n)):
        jobs.append(_job(spec, method, file, folders, last, name, 0, None, 0.0, dtype))
    config_model = spec.base_model or ref0
    config = output_config(folders[config_model].config, out_layers, jobs)
    tokenizer = _tokenizer_path(spec, file, folders[config_model].path, models_dir)
    return MergePlan(spec, file, method, folders, jobs, config_model, config, tokenizer, out_layers, vocab, warnings)


def _tokenizer_path(spec: MergeSpec, file: str, base: str, root: str | None) -> str:
    source = spec.tokenizer_source
    if source in (None, "base", "union"):
        return base  # union: the base's files, extended by `write_vocabulary`
    try:
        return resolve_path(source, root)
    except InputError as e:
        raise SpecError(file, "tokenizer_source", str(e)) from None


def _method(spec: MergeSpec, file: str) -> Method:
    if spec.merge_method not in REGISTRY:
        raise SpecError(file, "merge_method", f"unknown method {spec.merge_method!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[spec.merge_method]


def _slices(spec: MergeSpec, method: Method, file: str) -> list[SliceInputs]:
    if spec.models:
        out = [_models_slice(spec, method, file)]
    else:
        out = [_slice(spec, method, file, i) for i in range(len(spec.slices))]
    for s in out:
        _check_count(method, s, file)
    return out


FULL = (0, -1)  # layer range placeholder: all layers, filled in once the folders are open


def _models_slice(spec: MergeSpec, method: Method, file: str) -> SliceInputs:
    base = None
    if method.base == "required":
        if not spec.base_model:
            raise SpecError(file, "base_model",
                            f"{method.name} needs a base_model (the model the others are compared to)")
        base = (spec.base_model, FULL, "base_model")
    others = tuple((m.model, FULL, m.parameters, f"models.{i}") for i, m in enumerate(spec.models)
                   if base is None or m.model != spec.base_model)
    return SliceInputs("models", base, others, None)


def _slice(spec: MergeSpec, method: Method, file: str, i: int) -> SliceInputs:
    sl = spec.slices[i]
    where = f"slices.{i}"
    srcs = [(s.model, tuple(s.layer_range), s.parameters, f"{where}.sources.{j}") for j, s in enumerate(sl.sources)]
    lengths = {b - a for _, (a, b), _, _ in srcs}
    if len(lengths) > 1:
        raise SpecError(file, f"{where}.sources",
                        f"every source of a slice needs the same number of layers; got {sorted(lengths)}")
    base = None
    if method.base == "required":
        name = sl.base_model or spec.base_model
        if not name:
            raise SpecError(file, f"{where}.base_model", f"{method.name} needs a base_model")
        match = [s for s in srcs if s[0] == name]
        if not match:
            raise SpecError(file, f"{where}.sources", f"base_model {name!r} is not among this slice's sources; "
                            "add it with its layer_range")
        base = (name, match[0][1], match[0][3])
        srcs = [s for s in srcs if s[0] != name]
    return SliceInputs(where, base, tuple(srcs), sl.parameters)


def _check_count(method: Method, s: SliceInputs, file: str) -> None:
    n = len(s.others)
    names = ", ".join(repr(o[0]) for o in s.others) or "none"
    if n < method.min_models or (method.max_models is not None and n > method.max_models):
        want = (f"exactly {method.min_models}" if method.min_models == method.max_models
                else f"at least {method.min_models}" if method.max_models is None else f"at most {method.max_models}")
        base = " besides the base_model" if method.base == "required" else ""
        raise SpecError(file, s.where, f"{method.name} takes {want} model(s){base}; got {n} ({names})")


def _open(spec: MergeSpec, file: str, allow_pickle: bool, root: str | None,
          opened: dict | None = None) -> dict[str, ModelFolder]:
    folders = dict(opened or {})
    for ref, where in _model_fields(spec):
        if ref not in folders:
            model, *adapters = _split_adapter(ref, root)  # mergekit's `base+adapter`: folded in as it is read
            try:
                if len(adapters) > 1:
                    raise InputError(f"{ref!r} names {len(adapters)} adapters but a model takes one (`model+adapter`); "
                                     "fold several with `surgery fold` first")
                path, adapters = resolve_path(model, root), [resolve_path(a, root) for a in adapters]
            except InputError as e:  # the spec names a folder that is not there: a spec error, located
                raise SpecError(file, where, str(e)) from None
            folders[ref] = ModelFolder(path, allow_pickle=allow_pickle)  # corrupt files: InputError naming the file
            if adapters:
                folders[ref] = fold_on_read(folders[ref], adapters[0])
    return folders


def _split_adapter(ref: str, root: str | None) -> list[str]:
    """`base+adapter` -> [base, adapter]; a folder whose own name holds a `+` stays whole."""
    if "+" not in ref or os.path.isdir(os.path.join(root or os.getcwd(), os.path.expanduser(ref))):
        return [ref]
    return ref.split("+")


def fold_on_read(folder: ModelFolder, adapter: str):
    from surgery.adapters.folded_model import FoldedModel  # local: only specs that name an adapter load this

    return FoldedModel(folder, [(adapter, 1.0)])


def _model_fields(spec: MergeSpec) -> list[tuple[str, str]]:
    out = [(spec.base_model, "base_model")] if spec.base_model else []
    out += [(m.model, f"models.{i}.model") for i, m in enumerate(spec.models or [])]
    for i, sl in enumerate(spec.slices or []):
        out += [(sl.base_model, f"slices.{i}.base_model")] if sl.base_model else []
        out += [(s.model, f"slices.{i}.sources.{j}.model") for j, s in enumerate(sl.sources)]
    return out


def _check_ranges(s: SliceInputs, folders: dict[str, ModelFolder], file: str) -> SliceInputs:
    """Checks layer ranges against the models' depths; returns the slice with full ranges filled in."""
    entries = ([s.base] if s.base else []) + [(m, r, w) for m, r, _, w in s.others]
    counts = {m: num_layers(list(folders[m].tensors)) for m, _, _ in entries}
    for model, (a, b), where in entries:
        if (a, b) == FULL:
            if len(set(counts.values())) > 1:
                raise SpecError(file, where, f"model {model!r} has {counts[model]} layers but the others have "
                                f"{sorted(set(counts.values()))}; merging needs equal depths "
                                "(use slices for other layouts)")
        elif b > counts[model]:
            raise SpecError(file, f"{where}.layer_range",
                            f"[{a}, {b}] is past the end of {model!r}, which has {counts[model]} layers")

    def fill(model: str, r: tuple[int, int]) -> tuple[int, int]:
        return (0, counts[model]) if r == FULL else r

    base = (s.base[0], fill(s.base[0], s.base[1]), s.base[2]) if s.base else None
    return SliceInputs(s.where, base, tuple((m, fill(m, r), p, w) for m, r, p, w in s.others), s.params)


def _range_of(s: SliceInputs, model: str) -> tuple[int, int]:
    for m, r, *_ in ([s.base] if s.base else []) + list(s.others):
        if m == model:
            return r
    raise KeyError(model)


def _ref_model(s: SliceInputs) -> str:
    return s.base[0] if s.base else s.others[0][0]


def _source_name(s: SliceInputs, model: str, name: str, k: int) -> str:
    if layer_of(name) is None:
        return name
    return with_layer(name, _range_of(s, model)[0] + k)


def _job(spec: MergeSpec, method: Method, file: str, folders: dict[str, ModelFolder], s: SliceInputs,
         name: str, k: int, out_layer: int | None, t: float, dtype: torch.dtype | None) -> TensorJob:
    out_name = name if out_layer is None else with_layer(name, out_layer)
    base = _source(folders, s.base[0], _source_name(s, s.base[0], name, k), s.base[2], name) if s.base else None
    models = tuple(_source(folders, m, _source_name(s, m, name, k), w, name) for m, _, _, w in s.others)
    shapes = {src: folders[src.model].tensors[src.name].shape for src in ((base,) if base else ()) + models}
    ref_info = folders[(base or models[0]).model].tensors[(base or models[0]).name]
    _check_shapes(out_name, shapes)
    shared = _resolve(method.shared, method, [s.params, spec.parameters], out_name, t, file, "parameters")
    per_model = tuple(_resolve(method.per_model, method, [p, s.params, spec.parameters], src.name, t, file,
                               f"{w}.parameters", model_name=m)
                      for (m, _, p, w), src in zip(s.others, models))
    problem = method.check(shared, per_model) if method.check is not None else None
    if problem:
        raise SpecError(file, s.where, f"{method.name}: {problem} (tensor {out_name!r})")
    floating = ref_info.dtype.is_floating_point
    return TensorJob(out_name, ref_info.shape, (dtype or ref_info.dtype) if floating else ref_info.dtype,
                     base, models, shared, per_model, copy=not floating)


def _source(folders: dict[str, ModelFolder], model: str, name: str, where: str, wanted: str) -> TensorSource:
    folder = folders[model]
    if name in folder.tensors:
        return TensorSource(model, name, where)
    tied = _tied_alias(folder, name)
    if tied:
        return TensorSource(model, tied, where)
    raise InputError(f"tensor {name!r} is missing from model {model!r} ({folder.path}), but the merge needs it "
                     f"(for output tensor {wanted!r}); the models do not share an architecture")


def _tied_alias(folder: ModelFolder, name: str) -> str | None:
    """A model with tied embeddings stores no output head: its input embedding stands in for it."""
    if not name.endswith("lm_head.weight") or not folder.config.get("tie_word_embeddings", False):
        return None
    embeds = [n for n in folder.tensors if n.endswith(("embed_tokens.weight", "wte.weight"))]
    return embeds[0] if len(embeds) == 1 else None


def _check_shapes(name: str, shapes: dict[TensorSource, tuple[int, ...]]) -> None:
    items = list(shapes.items())
    for src, shape in items[1:]:
        if shape != items[0][1]:
            raise InputError(
                f"tensor {name!r}: shape {list(items[0][1])} in {items[0][0].model!r} but {list(shape)} in "
                f"{src.model!r}; merged models need the same shapes (a different vocabulary size needs vocabulary "
                "surgery first)")


def _resolve(params: type[BaseModel], method: Method, sources: list, tensor: str, t: float, file: str,
             where: str, model_name: str | None = None) -> BaseModel:
    values = {key: first_value(sources, key, tensor, t) for key in fields_by_alias(params)}
    for key in method.required:
        if key in values and values[key] is None:
            whose = f" for model {model_name!r}" if model_name else ""
            raise SpecError(file, f"{where}.{key}", f"{method.name} needs '{key}'{whose} (tensor {tensor!r}); "
                            "set it here or in the top-level parameters")
    try:
        return build(params, values)
    except ValidationError as e:
        raise SpecError(file, where,
                        f"{e.errors()[0]['msg'].removeprefix('Value error, ')} (tensor {tensor!r})") from None


def output_config(config: dict, out_layers: list[int], jobs: list[TensorJob]) -> dict:
    """The base's config with the layer count (and per-layer lists) following the output layers."""
    out = dict(config)
    old = next((config[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in config), None)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in out:
            out[key] = len(out_layers)
    if old is not None and len(out_layers) != old:
        for key, value in config.items():
            if isinstance(value, list) and len(value) == old:
                out[key] = [value[i] for i in out_layers]
    float_dtypes = {j.dtype for j in jobs if j.dtype.is_floating_point}
    if len(float_dtypes) == 1:
        name = str(next(iter(float_dtypes))).removeprefix("torch.")
        for key in ("dtype", "torch_dtype"):
            if key in out:
                out[key] = name
    return out

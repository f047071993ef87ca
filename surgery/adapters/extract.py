"""Extract a LoRA adapter from a fine-tune: per weight matrix, the truncated SVD of the task vector
TUNED − BASE, written as a PEFT adapter folder (`surgery extract-lora`).

The rank is fixed (`rank`) or, per matrix, the smallest keeping a share of the spectral energy Σσ²
(`energy`); see `surgery.adapters.lowrank` for the factors (√σ in each) and `surgery.adapters.lora_format` for PEFT's
layout. Linear weights, GPT-2's Conv1D weights and embeddings become LoRA modules. Other tensors that
differ (norms, biases of modules without a LoRA) put their whole module in `modules_to_save`; a
bias of a module that has a LoRA has no place in a plain LoRA adapter and is dropped. Every tensor
gets a row in the report: action, rank, relative reconstruction error ||ΔW − BA||/||ΔW|| and
relative size of its change ||ΔW||/||W_base||.

Two streaming passes, one tensor in memory at a time: a scan (which tensors differ, energy ranks from
the singular values), then the SVD and the write. All checks happen before the output is created.
The same idea as mergekit's `mergekit-extract-lora`; LoRA itself is Hu et al. 2021 (arXiv:2106.09685).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from surgery.adapters.lora_format import TRANSPOSED, adapter_config, factor_keys, saved_key
from surgery.adapters.lowrank import energy_rank, factors, relative_error, spectrum
from surgery.errors import InputError, NumericsError, SpecError
from surgery.io.output import atomic_folder, check_output_path, write_json
from surgery.io.reader import ModelFolder
from surgery.io.writer import Shard, ShardWriter
from surgery.merge.layers import PRE_MARKERS, natural_key
from surgery.merge.plan import DTYPES

ADAPTER_FILE = "adapter_model.safetensors"
REPORT_FILE = "extraction.json"
CONV1D_MODEL_TYPES = ("gpt2",)
CONV1D_MODULES = ("c_attn", "c_proj", "c_fc")
Progress = Callable[[str, int], None]  # (tensor name, bytes read)


@dataclass(frozen=True)
class ExtractSettings:
    rank: int | None = None          # fixed rank for every matrix
    energy: float | None = None      # or: the share of Σσ² to keep, per matrix
    modules: str | None = None       # regular expression searched in tensor names; others are excluded
    dtype: str = "float32"           # dtype of the stored factors
    device: str = "cpu"              # where the SVD runs


@dataclass(frozen=True)
class Entry:
    """One tensor of TUNED and what the extraction does with it."""

    tensor: str
    shape: tuple[int, ...]
    kind: str                        # linear, conv1d, embedding, or other
    action: str                      # lora, saved, dropped, excluded, unchanged
    rank: int | None = None
    error: float | None = None       # ||ΔW − B A||_F / ||ΔW||_F once written
    change: float | None = None      # ||ΔW||_F / ||W_base||_F (None when the base is all zeros)
    norm: float | None = None        # ||ΔW||_F
    note: str = ""

    @property
    def module(self) -> str:
        return self.tensor.rsplit(".", 1)[0]


@dataclass
class Extraction:
    base: ModelFolder
    tuned: ModelFolder
    settings: ExtractSettings
    entries: list[Entry]

    @property
    def lora(self) -> list[Entry]:
        return [e for e in self.entries if e.action == "lora"]

    @property
    def saved_modules(self) -> list[str]:
        return sorted({e.module for e in self.entries if e.action == "saved"})

    def close(self) -> None:
        self.base.close()
        self.tuned.close()

    def saved_tensors(self) -> list[str]:
        """Every tensor of TUNED in a saved module (the module is stored whole)."""
        modules = set(self.saved_modules)
        return sorted(n for n in self.tuned.tensors if n.rsplit(".", 1)[0] in modules)


def check_settings(s: ExtractSettings) -> None:
    if (s.rank is None) == (s.energy is None):
        raise SpecError("--rank/--energy", "", "give exactly one: a fixed --rank N or an --energy share such as 0.9")
    if s.rank is not None and s.rank < 1:
        raise SpecError("--rank", str(s.rank), "the rank must be at least 1")
    if s.energy is not None and not 0 < s.energy <= 1:
        raise SpecError("--energy", str(s.energy), "the energy share must be in (0, 1], e.g. 0.9")
    if s.dtype not in DTYPES:
        raise SpecError("--dtype", s.dtype, f"choose one of {', '.join(DTYPES)}")
    if s.modules is not None:
        try:
            re.compile(s.modules)
        except re.error as e:
            raise SpecError("--modules", s.modules, f"not a valid regular expression ({e})") from None


def kind_of(name: str, shape: tuple[int, ...], config: dict) -> str:
    """linear, conv1d or embedding for a 2-D `.weight` a LoRA can replace; other for the rest."""
    module, _, leaf = name.rpartition(".")
    if leaf != "weight" or len(shape) != 2:
        return "other"
    if any(m in module.rsplit(".", 1)[-1] for m in PRE_MARKERS):
        return "embedding"
    if config.get("model_type") in CONV1D_MODEL_TYPES and module.rsplit(".", 1)[-1] in CONV1D_MODULES:
        return "conv1d"
    return "linear"


def lora_shape(entry: Entry) -> tuple[int, int]:
    """(out, in) of the product B @ A: the weight's shape, reversed for Conv1D and embeddings."""
    rows, cols = entry.shape
    return (cols, rows) if entry.kind in TRANSPOSED else (rows, cols)


def selected(name: str, settings: ExtractSettings) -> bool:
    return settings.modules is None or re.search(settings.modules, name) is not None


def check_ranks(tuned: ModelFolder, settings: ExtractSettings) -> None:
    """A fixed rank must fit every matrix it applies to: min(out, in) >= rank. Headers only."""
    if settings.rank is None:
        return
    for name, info in sorted(tuned.tensors.items()):
        if kind_of(name, info.shape, tuned.config) != "other" and selected(name, settings):
            if min(info.shape) < settings.rank:
                raise SpecError("--rank", str(settings.rank), f"tensor {name!r} of shape {list(info.shape)} allows "
                                f"rank at most {min(info.shape)}; lower --rank, use --energy, or exclude it with "
                                "--modules")


def open_extraction(base: str, tuned: str, out: str, settings: ExtractSettings, force: bool = False,
                    allow_pickle: bool = False) -> Extraction:
    """Open and check everything that can be checked from headers; reads no tensor data."""
    check_settings(settings)
    folders = ModelFolder(base, allow_pickle=allow_pickle), ModelFolder(tuned, allow_pickle=allow_pickle)
    check_output_path(out, [f.path for f in folders], force)
    check_counterparts(*folders)
    check_ranks(folders[1], settings)
    return Extraction(*folders, settings, [])


def check_counterparts(base: ModelFolder, tuned: ModelFolder) -> None:
    """Some tensor of TUNED must be in BASE with its shape, or TUNED is another architecture or width and
    every tensor would be skipped. Headers only."""
    missing = sorted((n for n in tuned.tensors if n not in base.tensors), key=natural_key)
    reshaped = sorted((n for n, i in tuned.tensors.items() if n in base.tensors and base.tensors[n].shape != i.shape),
                      key=natural_key)
    if len(missing) + len(reshaped) < len(tuned.tensors):
        return
    found = [f"{len(missing)} not in BASE, e.g. {missing[0]!r}"] if missing else []
    if reshaped:
        name = reshaped[0]
        found.append(f"{len(reshaped)} of another shape, e.g. {name!r} {list(tuned.tensors[name].shape)} in TUNED but "
                     f"{list(base.tensors[name].shape)} in BASE")
    raise InputError(f"TUNED {tuned.path} is not a fine-tune of BASE {base.path}: none of its {len(tuned.tensors)} "
                     f"tensors has a counterpart of the same shape in BASE ({'; '.join(found)}); give the BASE it was "
                     "fine-tuned from (the same architecture and width)")


def scan_bytes(x: Extraction) -> int:
    return sum(i.nbytes for i in x.tuned.tensors.values()) + sum(
        x.base.tensors[n].nbytes for n in x.tuned.tensors if n in x.base.tensors)


def scan(x: Extraction, progress: Progress | None = None) -> Extraction:
    """Pass 1: read each pair of tensors once; decide every tensor's action (and energy rank)."""
    entries = []
    for name in sorted(x.tuned.tensors):
        entries.append(_scan_one(x, name))
        if progress:
            progress(name, x.tuned.tensors[name].nbytes * 2)
    entries = _resolve_others(entries)
    if not any(e.action == "lora" for e in entries):
        raise InputError(f"no linear or embedding weight differs between {x.base.path} and {x.tuned.path}"
                         + (f" among tensors matching --modules {x.settings.modules!r}" if x.settings.modules else "")
                         + f"; there is no adapter to extract ({_tally(x, entries)})")
    return replace(x, entries=entries)


def _tally(x: Extraction, entries: list[Entry]) -> str:
    """What the scan found, in counts: why no tensor gave a LoRA."""
    base = x.base.tensors
    compared = [e for e in entries if e.tensor in base and base[e.tensor].shape == e.shape]
    kinds = [("unchanged", lambda e: e.action == "unchanged"),
             (f"not matched by --modules {x.settings.modules!r}", lambda e: e.action == "excluded"),
             ("changed but not a weight a LoRA carries (norms, biases)", lambda e: e.action in ("saved", "dropped"))]
    parts = [f"{n} {label}" for label, test in kinds if (n := sum(map(test, compared)))]
    skipped = len(entries) - len(compared)
    elsewhere = f"; {skipped} are not in BASE or have another shape there" if skipped else ""
    return (f"of the {len(entries)} tensors of TUNED, {len(compared)} are in BASE with the same shape: "
            + ", ".join(parts or ["none"]) + elsewhere)


def _scan_one(x: Extraction, name: str) -> Entry:
    info = x.tuned.tensors[name]
    entry = Entry(name, info.shape, kind_of(name, info.shape, x.tuned.config), "dropped")
    other = x.base.tensors.get(name)
    if other is None or other.shape != info.shape:
        why = "not in BASE" if other is None else f"shape {list(other.shape)} in BASE"
        return replace(entry, note=f"{why}: no task vector")
    base = x.base.read(name).float()
    delta = x.tuned.read(name).float() - base  # the task vector, shaped like the tensor
    if not delta.any():
        return replace(entry, action="unchanged")
    if not torch.isfinite(delta).all():
        raise NumericsError(f"tensor {name!r}: the task vector holds NaN or Inf ({x.tuned.path} or {x.base.path} "
                            "has non-finite values there); fix the checkpoint or exclude the tensor with --modules")
    entry = replace(entry, change=_ratio(delta, base), norm=torch.linalg.vector_norm(delta).item())
    if not selected(name, x.settings):
        return replace(entry, action="excluded", note="not matched by --modules")
    if entry.kind == "other":
        return replace(entry, action="saved")  # settled in _resolve_others
    return replace(entry, action="lora", rank=_rank(x.settings, task_matrix(entry, delta)),
                   note=_tied_note(entry, x.tuned))


def _tied_note(entry: Entry, tuned: ModelFolder) -> str:
    """PEFT's embedding LoRA changes the input embedding only; a tied head not stored on its own
    (so with no LoRA of its own) keeps the base's weights."""
    input_embedding = entry.module.endswith(("embed_tokens", "wte", "tok_embeddings"))
    head_stored = any(n.endswith("lm_head.weight") for n in tuned.tensors)
    tied = tuned.config.get("tie_word_embeddings") and input_embedding and not head_stored
    return "tied to the output head, which the adapter leaves unchanged" if tied else ""


def _ratio(delta: torch.Tensor, base: torch.Tensor) -> float | None:
    """||delta|| / ||base||; None for a base of zeros."""
    norm = torch.linalg.vector_norm(base).item()
    return torch.linalg.vector_norm(delta).item() / norm if norm else None


def _rank(settings: ExtractSettings, matrix: torch.Tensor) -> int:
    if settings.rank is not None:
        return settings.rank
    return energy_rank(spectrum(matrix.to(settings.device)).cpu(), settings.energy)


def task_matrix(entry: Entry, delta: torch.Tensor) -> torch.Tensor:
    """The matrix B @ A must equal: ΔW (out, in), or its transpose for Conv1D and embeddings."""
    return delta.T if entry.kind in TRANSPOSED else delta


def _resolve_others(entries: list[Entry]) -> list[Entry]:
    """A changed non-matrix tensor saves its module, unless that module has a LoRA (then it is dropped)."""
    lora_modules = {e.module for e in entries if e.action == "lora"}
    return [replace(e, action="dropped", note="its module has a LoRA; a plain LoRA adapter cannot carry it")
            if e.action == "saved" and e.module in lora_modules else e for e in entries]


def adapter_entries(x: Extraction) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor of the adapter file, in write order."""
    dtype, out = DTYPES[x.settings.dtype], []
    for e in x.lora:
        rows, cols = lora_shape(e)
        a, b = factor_keys(e.module, e.kind)
        out += [(a, dtype, (e.rank, cols)), (b, dtype, (rows, e.rank))]
    for name in x.saved_tensors():
        info = x.tuned.tensors[name]
        out.append((saved_key(name), info.dtype, info.shape))
    return out


def write_bytes(x: Extraction) -> int:
    """Bytes read by pass 2: both models' copies of each LoRA tensor, TUNED's of each saved one."""
    return sum(2 * x.tuned.tensors[e.tensor].nbytes for e in x.lora) + sum(
        x.tuned.tensors[n].nbytes for n in x.saved_tensors())


def write_adapter(x: Extraction, out: str, force: bool = False, progress: Progress | None = None) -> Extraction:
    """Pass 2: SVD of each LoRA tensor, factors and saved modules into a PEFT adapter folder, atomically."""
    out = check_output_path(out, [x.base.path, x.tuned.path], force)
    entries = {e.tensor: e for e in x.entries}
    with atomic_folder(out, replace=force) as tmp:
        writer = ShardWriter(tmp, [Shard(ADAPTER_FILE, tuple(adapter_entries(x)))], {"format": "pt"})
        try:
            for e in x.lora:
                entries[e.tensor] = _write_factors(x, e, writer)
                if progress:
                    progress(e.tensor, 2 * x.tuned.tensors[e.tensor].nbytes)
            for name in x.saved_tensors():
                writer.write(saved_key(name), x.tuned.read(name))
                if progress:
                    progress(name, x.tuned.tensors[name].nbytes)
            writer.finish()
        finally:
            writer.abort()
        x = replace(x, entries=list(entries.values()))
        write_json(os.path.join(tmp, "adapter_config.json"), _config(x))
        write_json(os.path.join(tmp, REPORT_FILE), report(x))
    return x


def _write_factors(x: Extraction, e: Entry, writer: ShardWriter) -> Entry:
    device, dtype = x.settings.device, DTYPES[x.settings.dtype]
    delta = x.tuned.read(e.tensor).to(device, torch.float32) - x.base.read(e.tensor).to(device, torch.float32)
    matrix = task_matrix(e, delta)  # (out, in)
    b, a = (f.to(dtype) for f in factors(matrix, e.rank))  # (out, r), (r, in)
    a_key, b_key = factor_keys(e.module, e.kind)
    writer.write(a_key, a.cpu())
    writer.write(b_key, b.cpu())
    return replace(e, error=relative_error(matrix, b, a))


def _config(x: Extraction) -> dict:
    archs = x.tuned.config.get("architectures") or []
    task = "CAUSAL_LM" if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs) else None
    ranks = {e.module: e.rank for e in x.lora}
    kinds = {e.module: e.kind for e in x.lora}
    return adapter_config(ranks, kinds, x.saved_modules, x.base.path, task)


def report(x: Extraction) -> dict:
    """extraction.json: the settings and one record per tensor of TUNED."""
    return {"base": x.base.path, "tuned": x.tuned.path, "settings": asdict(x.settings),
            "factor_split": "sqrt(sigma) in each factor: A = sqrt(S) V^T, B = U sqrt(S)",
            "tensors": [{**asdict(e), "shape": list(e.shape)} for e in x.entries]}


def describe(x: Extraction, everything: bool = False) -> str:
    """The report as a table: LoRA modules, saved and dropped tensors (unchanged ones with `everything`)."""
    rows = [e for e in x.entries if everything or e.action != "unchanged"]
    width = max((len(e.tensor) for e in rows), default=6)
    lines = [f"{'tensor':<{width}}  {'action':<9}  {'rank':>5}  {'rel.error':>9}  {'change':>9}  note"]
    for e in rows:
        rank = "" if e.rank is None else str(e.rank)
        error = "" if e.error is None else f"{e.error:.2e}"
        change = f"{e.change:.2e}" if e.change is not None else "" if e.norm is None else f"|Δ|{e.norm:.1e}"
        lines.append(f"{e.tensor:<{width}}  {e.action:<9}  {rank:>5}  {error:>9}  {change:>9}  {e.note}".rstrip())
    unchanged = sum(e.action == "unchanged" for e in x.entries)
    lines.append(f"{len(x.lora)} LoRA modules, {len(x.saved_modules)} saved modules, "
                 f"{sum(e.action in ('dropped', 'excluded') for e in x.entries)} tensors dropped, "
                 f"{unchanged} unchanged")
    return "\n".join(lines)

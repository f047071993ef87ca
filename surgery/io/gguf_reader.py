"""A GGUF file read as a Hugging Face model: the same interface as `ModelFolder` (`path`, `tensors`,
`config`, `metadata`, `read(name, rows)`, `close()`), so the merge engine streams it like a folder.

Names and layouts are transformers' GGUF loader's: each tensor under the name the Hugging Face model
gives it (`surgery.io.gguf_arch`), shapes outermost first, the query and key rows of llama-family
files put back in Hugging Face's rotary order. A block of rows is read with one `pread` of its bytes
(rows of a GGUF tensor are contiguous, whatever the quantization) and dequantized with the `gguf`
package's routines (`gguf.quants.dequantize`, which transformers' loader uses too); a permuted tensor
is read in whole heads. Quantized tensors come out as float32, F16 and BF16 ones as stored, so memory
is the engine's block plus at most one block of raw bytes. A type the `gguf` package cannot
dequantize is refused when the file is opened, naming the tensor.

Config and tokenizer come from the file's metadata as transformers builds them
(`surgery.io.gguf_config`, `surgery.io.gguf_vocab`); they are written once per file and process into
a temporary `side_folder`, from which the engine copies them beside a merged model.
"""

from __future__ import annotations

import os
import tempfile
import threading

import numpy as np
import torch

from surgery.errors import InputError
from surgery.io.format import TensorInfo, nbytes
from surgery.io.gguf_arch import Architecture, architecture, from_rotary, name_map, rotary_heads
from surgery.io.gguf_config import hf_config
from surgery.io.gguf_format import GGUFHeader, GGUFTensor, read_header, type_name, type_sizes
from surgery.io.gguf_vocab import save_tokenizer
from surgery.io.output import write_json

NATIVE = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16, 28: torch.float64, 24: torch.int8,
          25: torch.int16, 26: torch.int32, 27: torch.int64}  # ggml types read without dequantizing
_SIDE: dict[tuple, tempfile.TemporaryDirectory] = {}  # (file, size, mtime) -> config and tokenizer files
_CONFIGS: dict[tuple, dict] = {}
_LOCK = threading.Lock()


class GGUFModel:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        require_gguf(self.path)
        self.header = read_header(self.path)
        self.arch = _architecture(self.header)
        self.config = _config(self.header)
        self.metadata = {k: v for k, v in self.header.metadata.items()  # provenance of a GGUF we wrote
                         if k.startswith("surgery.") and isinstance(v, str)}
        self.stored, self.ignored = _mapped(self.header, self.arch, self.config)
        self.tensors = {name: _info(self.path, name, t) for name, t in self.stored.items()}
        self.encodings = {name: type_name(t.type) for name, t in self.stored.items()}
        self._fd: int | None = None
        self._fd_lock = threading.Lock()  # the engine reads ahead in a worker thread
        self._heads = {name: rotary_heads(self.arch, t.name, self.config) for name, t in self.stored.items()}

    @property
    def side_folder(self) -> str:
        """A folder holding config.json, generation_config.json and the tokenizer files of this model."""
        return side_folder(self)

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Rows [r0, r1) of tensor `name`, dequantized (float32) or as stored (F16, BF16, F32, integers)."""
        info, stored = self.tensors[name], self.stored[name]
        r0, r1 = rows if rows is not None else (0, info.rows)
        if not 0 <= r0 <= r1 <= info.rows:
            raise IndexError(f"rows [{r0}, {r1}) outside tensor {name!r} of {info.rows} rows")  # caller bug
        heads = self._heads[name]
        step = info.rows // heads if heads and len(info.shape) > 1 else 1  # whole heads of a permuted tensor
        a, b = (r0 // step) * step, -(-r1 // step) * step
        block = self._rows(stored, info, a, b)
        if heads:
            block = from_rotary(block, step if len(info.shape) > 1 else info.numel // heads)
        return block[r0 - a:r1 - a] if len(info.shape) > 1 else block

    def _rows(self, t: GGUFTensor, info: TensorInfo, a: int, b: int) -> torch.Tensor:
        row_bytes = t.nbytes // max(info.rows, 1)
        raw = np.empty((b - a) * row_bytes, dtype=np.uint8)
        self._pread(t, memoryview(raw), t.start + a * row_bytes)
        shape = ((b - a), *info.shape[1:]) if len(info.shape) > 1 else info.shape
        if t.type in NATIVE:
            return torch.from_numpy(raw).view(NATIVE[t.type]).reshape(shape)
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        block, size = type_sizes()[t.type]
        values = dequantize(raw.reshape(-1, t.dims[0] // block * size), GGMLQuantizationType(t.type))  # (rows, in)
        return torch.from_numpy(np.ascontiguousarray(values)).reshape(shape)

    def _pread(self, t: GGUFTensor, view: memoryview, offset: int) -> None:
        with self._fd_lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
        done = 0
        while done < len(view):  # one pread returns at most ~2 GiB
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise InputError(f"{self.path}: short read of tensor {t.name!r} (file truncated while reading?)")
            done += got

    def close(self) -> None:
        with self._fd_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __repr__(self) -> str:
        return f"GGUFModel({self.path!r}, {self.arch.gguf}, {len(self.tensors)} tensors)"


def require_gguf(path: str) -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"{path}: reading a GGUF file needs the gguf package: pip install gguf")


def _architecture(header: GGUFHeader) -> Architecture:
    name = header.metadata.get("general.architecture")
    if not isinstance(name, str):
        raise InputError(f"{header.path}: the GGUF metadata has no general.architecture; the file cannot be read")
    return architecture(name, header.path)


def _key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _config(header: GGUFHeader) -> dict:
    """config.json's content for this file (cached per file and process: building it imports transformers)."""
    key = _key(header.path)
    if key not in _CONFIGS:
        from transformers import AutoModelForCausalLM  # noqa: F401 - registers the model classes

        config = hf_config(header.metadata, header.tensors, header.path)
        config.architectures = [_class_name(config)]
        config.dtype = torch.float32  # what transformers' loader gives and `surgery import-gguf` wrote
        _CONFIGS[key] = config.to_diff_dict()  # what `save_pretrained` writes
    return dict(_CONFIGS[key])


def _class_name(config) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]


def _mapped(header: GGUFHeader, arch: Architecture, config: dict) -> tuple[dict[str, GGUFTensor], list[str]]:
    """Hugging Face name -> the file's tensor; also the file's tensors no model tensor maps to."""
    to_gguf = name_map(arch, config)
    by_gguf = {g: hf for hf, g in to_gguf.items()}
    stored = {by_gguf[n]: t for n, t in header.tensors.items() if n in by_gguf}
    tied = config.get("tie_word_embeddings") and "lm_head.weight" in to_gguf
    missing = sorted(hf for hf in to_gguf if hf not in stored and not (tied and hf == "lm_head.weight"))
    if missing:
        raise InputError(f"{header.path}: the file lacks {len(missing)} of the model's tensors "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); it is incomplete")
    _check_types(header.path, stored)
    return dict(sorted(stored.items())), sorted(n for n in header.tensors if n not in by_gguf)


def _check_types(path: str, stored: dict[str, GGUFTensor]) -> None:
    for name, t in stored.items():
        if t.type not in NATIVE and not dequantizable(t.type):
            raise InputError(f"{path}: tensor {t.name!r} ({name}) is stored as {type_name(t.type)}, which the gguf "
                             "package cannot dequantize; re-quantize the model to another type (e.g. Q8_0 or Q4_K) "
                             "with llama-quantize, or upgrade gguf")


def dequantizable(type_id: int) -> bool:
    """Whether `gguf.quants.dequantize` knows this type (tried on one zero block)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    try:
        dequantize(np.zeros((1, type_sizes()[type_id][1]), dtype=np.uint8), GGMLQuantizationType(type_id))
    except NotImplementedError:
        return False
    return True


def _info(path: str, name: str, t: GGUFTensor) -> TensorInfo:
    """What the reader returns: `nbytes` are the dequantized bytes (the stored ones are `t.nbytes`)."""
    dtype = NATIVE.get(t.type, torch.float32)
    return TensorInfo(name, path, dtype, t.shape, t.start, nbytes(dtype, t.shape))


def side_folder(model: GGUFModel) -> str:
    """config.json, generation_config.json and the tokenizer, written once per file and process."""
    key = _key(model.path)
    with _LOCK:
        if key not in _SIDE:
            folder = tempfile.TemporaryDirectory(prefix="surgery-gguf-")
            _write_side_files(model, folder.name)
            _SIDE[key] = folder
    return _SIDE[key].name


def _write_side_files(model: GGUFModel, folder: str) -> None:
    from transformers import AutoConfig, GenerationConfig

    write_json(os.path.join(folder, "config.json"), model.config)
    settings = {k: v for k, v in model.config.items() if k != "model_type"}
    config = AutoConfig.for_model(model.config["model_type"], **settings)
    GenerationConfig.from_model_config(config).save_pretrained(folder)
    save_tokenizer(model.header.metadata, model.header.types, folder, model.path)

"""A model folder saved by transformers with a bitsandbytes `quantization_config`, read dequantized:
the interface of `ModelFolder`, so a QLoRA user's 4-bit base merges with its adapter directly.

What transformers saves for a quantized `Linear` named P:
- 4-bit (NF4 or FP4, `Linear4bit`): `P.weight` the packed codes (uint8, two per byte, flattened),
  `P.weight.absmax` and `P.weight.quant_map` (the per-block scale and the 16-value code book),
  with double quantization `P.weight.nested_absmax` and `P.weight.nested_quant_map` (the scales are
  themselves 8-bit blocks), and `P.weight.quant_state.bitsandbytes__nf4` (or `__fp4`): the JSON of
  the rest (shape, dtype, block sizes, offset), packed into a uint8 tensor.
- 8-bit (`Linear8bitLt`): `P.weight` int8 (out, in), `P.SCB` one float32 scale per output row
  (absmax / 127 each), and `P.weight_format`.
Every other tensor (embeddings, norms, the output head) is stored as it was.

Dequantization is bitsandbytes' own functional API on the CPU (`QuantState.from_dict` and
`dequantize_4bit`, `int8_vectorwise_dequant`), what transformers' `dequantize()` calls. An 8-bit
weight is dequantized a block of rows at a time (each row has its own scale); a 4-bit one is
dequantized whole when first read and kept until another is read, since its blocks run across
rows: memory is the engine's block plus one dequantized tensor. The config is given without its
`quantization_config`, so what is written is a plain model.
"""

from __future__ import annotations

import dataclasses
import json
import threading

import torch

from surgery.errors import InputError
from surgery.io.format import TensorInfo, nbytes
from surgery.io.reader import ModelFolder

STATE = ".quant_state.bitsandbytes__"
PARTS_4BIT = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
KINDS_4BIT = ("nf4", "fp4")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class Quantized:
    kind: str                      # 'nf4', 'fp4' or 'int8'
    parts: dict[str, str]          # role -> stored tensor name
    info: TensorInfo               # the dequantized tensor: its dtype and shape


class BitsAndBytesFolder:
    def __init__(self, path: str, allow_pickle: bool = False):
        self.raw = ModelFolder(path, allow_pickle=allow_pickle)
        self.path, self.metadata = self.raw.path, self.raw.metadata
        self.config = {k: v for k, v in self.raw.config.items() if k != "quantization_config"}
        self.quantized = _quantized(self.raw, _default_dtype(self.config))
        hidden = {p for q in self.quantized.values() for role, p in q.parts.items() if role != "weight"}
        self.tensors = {n: (self.quantized[n].info if n in self.quantized else i)
                        for n, i in self.raw.tensors.items() if n not in hidden}
        self.encodings = {n: q.kind for n, q in self.quantized.items()}
        self._cache: tuple[str, torch.Tensor] | None = None
        self._lock = threading.Lock()  # the engine reads ahead in a worker thread

    @property
    def side_folder(self) -> str:
        return self.path

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        if name not in self.quantized:
            return self.raw.read(name, rows)
        q = self.quantized[name]
        r0, r1 = rows if rows is not None else (0, q.info.rows)
        if q.kind == "int8":
            return _int8(self.raw, q, r0, r1)
        with self._lock:
            if self._cache is None or self._cache[0] != name:
                self._cache = None  # free the previous tensor before making the next
                self._cache = (name, _four_bit(self.raw, q))
            return self._cache[1][r0:r1].clone()

    def close(self) -> None:
        self._cache = None
        self.raw.close()

    def __repr__(self) -> str:
        return f"BitsAndBytesFolder({self.path!r}, {len(self.quantized)} quantized tensors)"


def _default_dtype(config: dict) -> torch.dtype:
    """The model's own dtype, which 8-bit weights are dequantized to (4-bit ones state theirs)."""
    return DTYPES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), torch.float32)


def _quantized(raw: ModelFolder, dtype: torch.dtype) -> dict[str, Quantized]:
    out = {}
    for name in raw.tensors:
        if STATE in name:
            weight = name.split(STATE)[0]
            out[weight] = _four_bit_entry(raw, weight, name)
        elif name.endswith(".SCB"):
            weight = name.removesuffix("SCB") + "weight"
            out[weight] = _int8_entry(raw, weight, name, dtype)
    for name, info in raw.tensors.items():
        if name not in out and info.dtype in (torch.uint8, torch.int8) and name.endswith(".weight"):
            raise InputError(f"{raw.path}: tensor {name!r} is stored as {str(info.dtype).removeprefix('torch.')} "
                             "without the bitsandbytes state that says how to dequantize it (a 4-bit quant_state or "
                             "an 8-bit SCB); the checkpoint is incomplete or in another format")
    return out


def _four_bit_entry(raw: ModelFolder, weight: str, state_name: str) -> Quantized:
    kind = state_name.split(STATE)[1]
    if kind not in KINDS_4BIT or weight not in raw.tensors:
        raise InputError(f"{raw.path}: tensor {state_name!r}: bitsandbytes 4-bit format {kind!r} "
                         f"{'is unknown (nf4 and fp4 are read)' if kind not in KINDS_4BIT else 'has no weight'}")
    state = _state(raw, state_name)
    try:
        dtype, shape = DTYPES[state["dtype"]], tuple(int(d) for d in state["shape"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{raw.path}: tensor {weight!r}: its {kind} quant state lacks a known dtype and shape "
                         f"({state!r})") from None
    parts = {"weight": weight, "quant_state": state_name}
    parts.update({p: f"{weight}.{p}" for p in PARTS_4BIT if f"{weight}.{p}" in raw.tensors})
    base = raw.tensors[weight]
    info = TensorInfo(weight, base.file, dtype, shape, base.start, nbytes(dtype, shape))
    return Quantized(kind, parts, info)


def _state(raw: ModelFolder, name: str) -> dict:
    try:
        state = json.loads(bytes(raw.read(name).numpy()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{raw.path}: tensor {name!r} is not a bitsandbytes quant state (not JSON)") from None
    if not isinstance(state, dict):
        raise InputError(f"{raw.path}: tensor {name!r} is not a bitsandbytes quant state")
    return state


def _int8_entry(raw: ModelFolder, weight: str, scb: str, dtype: torch.dtype) -> Quantized:
    base = raw.tensors.get(weight)
    if base is None or base.dtype != torch.int8 or len(base.shape) != 2 or raw.tensors[scb].shape != base.shape[:1]:
        got = "missing" if base is None else f"{str(base.dtype).removeprefix('torch.')} {list(base.shape)}"
        raise InputError(f"{raw.path}: tensor {scb!r} is an 8-bit scale but {weight!r} is {got}, not an int8 matrix "
                         "with one row per scale; the checkpoint is not a bitsandbytes 8-bit one")
    parts = {"weight": weight, "SCB": scb}
    if weight.removesuffix("weight") + "weight_format" in raw.tensors:
        parts["weight_format"] = weight.removesuffix("weight") + "weight_format"
    info = TensorInfo(weight, base.file, dtype, base.shape, base.start, nbytes(dtype, base.shape))
    return Quantized("int8", parts, info)


def bitsandbytes():
    import logging

    # on CPUs with avx512_bf16 its import tries an optional kernel and warns when it is not installed
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes.functional as functional
    except ImportError:
        raise InputError("reading a bitsandbytes checkpoint needs bitsandbytes: pip install bitsandbytes") from None
    return functional


def _int8(raw: ModelFolder, q: Quantized, r0: int, r1: int) -> torch.Tensor:
    """Rows [r0, r1): int8 codes times their row's scale / 127, in the model's dtype."""
    codes = raw.read(q.parts["weight"], (r0, r1))                   # (rows, in) int8
    scales = raw.read(q.parts["SCB"])[r0:r1].float()               # (rows,)
    return bitsandbytes().int8_vectorwise_dequant(codes, scales).to(q.info.dtype)


def _four_bit(raw: ModelFolder, q: Quantized) -> torch.Tensor:
    """The whole weight, dequantized as bitsandbytes does, shape (out, in)."""
    functional = bitsandbytes()
    state = {role: raw.read(name) for role, name in q.parts.items() if role != "weight"}
    state[f"quant_state.bitsandbytes__{q.kind}"] = state.pop("quant_state")
    try:
        quant_state = functional.QuantState.from_dict(state, device=torch.device("cpu"))
    except (ValueError, KeyError, AssertionError) as e:
        raise InputError(f"{raw.path}: tensor {q.info.name!r}: bitsandbytes cannot rebuild its {q.kind} quant state "
                         f"({type(e).__name__}: {e})") from None
    codes = raw.read(q.parts["weight"]).view(torch.uint8)
    if codes.numel() * 2 != q.info.numel:
        raise InputError(f"{raw.path}: tensor {q.info.name!r}: {codes.numel()} bytes of {q.kind} codes cannot hold "
                         f"shape {list(q.info.shape)} ({q.info.numel} values, two per byte)")
    return functional.dequantize_4bit(codes, quant_state).reshape(q.info.shape).to(q.info.dtype)

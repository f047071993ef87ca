"""A GGUF file written as it streams: the header (every key-value pair and every tensor's name, shape,
type and offset, all known before the merge starts) first, then each tensor's rows as they arrive,
quantized block of rows by block of rows with the `gguf` package's routines, each tensor padded to
the file's alignment. No whole tensor is held, except that the query and key rows of llama-family
models are permuted into llama.cpp's rotary layout a whole head at a time.

Types, as llama.cpp's `convert_hf_to_gguf.py` chooses them for its `--outtype`: one-dimensional
tensors (norms, biases) stay F32; matrices take the requested type (F32, F16, BF16 or Q8_0), or F16
where their rows are not whole Q8_0 blocks of 32.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import numpy as np
import torch

from surgery.errors import OutputError
from surgery.io.gguf_arch import to_rotary
from surgery.io.gguf_format import DEFAULT_ALIGNMENT, Typed, build_header, tensor_bytes, type_sizes

QUANTS = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8}  # --quant -> ggml type of the matrices
F32, F16 = 0, 1


@dataclass(frozen=True)
class Entry:
    name: str                  # llama.cpp's name, e.g. blk.0.attn_q.weight
    source: str                # the name the engine writes it under (Hugging Face's)
    dims: tuple[int, ...]      # innermost first (ggml's ne)
    type: int                  # ggml type id
    head_rows: int = 0         # rows per head of a tensor permuted into llama.cpp's rotary layout (0: none)


def tensor_type(shape: tuple[int, ...], quant: str) -> int:
    """The ggml type llama.cpp's converter gives a tensor of this shape for `--outtype quant`."""
    if len(shape) < 2:
        return F32
    wanted = QUANTS[quant]
    return wanted if shape[-1] % type_sizes()[wanted][0] == 0 else F16


class GGUFFileWriter:
    """Writes `entries`, in order, into the open binary file `f`, after the header."""

    def __init__(self, f, metadata: dict[str, Typed], entries: list[Entry]):
        self.f, self.entries = f, entries
        header, self.offsets = build_header(metadata, [(e.name, e.dims, e.type) for e in entries])
        self._io(lambda: f.write(header))
        self.sizes = type_sizes()
        self.i, self.left, self.pending = 0, 0, None  # tensor being written, its bytes to go, buffered rows
        self.bytes_written = 0

    def write(self, name: str, block: torch.Tensor) -> None:
        """Append the next rows of tensor `name` (Hugging Face layout)."""
        if self.left == 0:
            self._start(name)
        entry = self.entries[self.i]
        if name != entry.source:
            raise RuntimeError(f"GGUF writer expected tensor {entry.source!r}, got {name!r}")  # engine bug
        rows = block.float().reshape(-1, entry.dims[0])  # (rows, innermost)
        if entry.head_rows and len(entry.dims) == 1:  # a bias arrives whole: permute its values
            rows = to_rotary(rows.reshape(-1), entry.head_rows).reshape(1, -1)
        elif entry.head_rows:
            rows = self._whole_heads(rows, entry.head_rows)
            if rows is None:
                return
        self._encode(entry, rows)

    def _start(self, name: str) -> None:
        if self.i >= len(self.entries):
            raise RuntimeError(f"GGUF writer got tensor {name!r} after the last planned one")  # engine bug
        entry = self.entries[self.i]
        self.left = tensor_bytes(entry.dims, entry.type, self.sizes)

    def _whole_heads(self, rows: torch.Tensor, head_rows: int) -> torch.Tensor | None:
        """The buffered rows that make whole heads, permuted; the rest stays buffered."""
        rows = rows if self.pending is None else torch.cat([self.pending, rows])
        whole = rows.shape[0] // head_rows * head_rows
        self.pending = rows[whole:] if whole < rows.shape[0] else None
        return to_rotary(rows[:whole], head_rows) if whole else None

    def _encode(self, entry: Entry, rows: torch.Tensor) -> None:
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        data = quantize(np.ascontiguousarray(rows.numpy()), GGMLQuantizationType(entry.type))
        raw = memoryview(np.ascontiguousarray(data)).cast("B")
        if len(raw) > self.left:
            raise RuntimeError(f"tensor {entry.source!r}: more bytes than planned")  # engine bug
        self._io(lambda: self.f.write(raw))
        self.left -= len(raw)
        self.bytes_written += len(raw)
        if self.left == 0:
            self._io(lambda: self.f.write(b"\0" * (-self.f.tell() % DEFAULT_ALIGNMENT)))
            self.i += 1

    def abort(self) -> None:
        """Nothing to release: the file is the output's, closed by it."""

    def finish(self) -> None:
        if self.i != len(self.entries) or self.pending is not None:
            missing = [e.source for e in self.entries[self.i:]]
            raise RuntimeError(f"GGUF writer finished with {len(missing)} tensors unwritten: {missing[:3]}")  # bug

    def _io(self, op):
        try:
            return op()
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OutputError(f"{self.f.name}: disk full while writing the GGUF file; free space and run "
                                  "again") from None
            raise OutputError(f"{self.f.name}: cannot write ({e.strerror})") from None

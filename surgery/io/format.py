"""The safetensors file format: header parsing and building, and the dtype table.

Format: 8-byte little-endian header length N, N bytes of JSON, then the raw data. Each tensor's
`data_offsets` are relative to the start of the data. We parse it ourselves so that a tensor (or a
block of its rows) is read with one `pread` into memory we own: no memory map keeps pages resident.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import torch

from surgery.errors import InputError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


def nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return dtype.itemsize * math.prod(shape)


def num_rows(shape: tuple[int, ...]) -> int:
    """Rows (the first axis) of a tensor; a 0-d or 1-d tensor is a single row."""
    return shape[0] if len(shape) > 1 else 1


def row_numel(shape: tuple[int, ...]) -> int:
    """Elements of one row (the first axis); a 0-d or 1-d tensor is a single row."""
    return math.prod(shape[1:]) if len(shape) > 1 else math.prod(shape)


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is; reading it is the reader's job."""

    name: str
    file: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (the first axis); a 0-d or 1-d tensor is one row."""
        rows = num_rows(self.shape)
        return self.nbytes // max(rows, 1)

    @property
    def rows(self) -> int:
        return num_rows(self.shape)


def read_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse one .safetensors file's header; checks every offset against the file's size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise InputError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, MAX_HEADER):
                raise InputError(f"{path}: corrupt safetensors header (claims {n} bytes, file has {size})")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: corrupt safetensors header ({e}); re-export or re-download this file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    infos = {name: _tensor_info(path, name, entry, 8 + n, size) for name, entry in header.items()}
    check_tiling(path, list(infos.values()), 8 + n, size)
    return infos, meta


def check_tiling(path: str, infos: list[TensorInfo], data_start: int, size: int) -> None:
    """The tensors' byte ranges, in offset order, must cover the data section exactly, each tensor's bytes
    its own (as the safetensors library requires): an overlap would read one tensor's bytes as another's.
    Overlaps are looked for first, since an entry pointed at another's bytes also leaves a gap behind."""
    ranges = sorted(infos, key=lambda i: (i.start, i.nbytes))
    for a, b in zip(ranges, ranges[1:]):
        if b.start < a.start + a.nbytes:
            raise InputError(f"{path}: tensors {a.name!r} and {b.name!r} overlap: both hold bytes "
                             f"[{b.start - data_start}, {min(a.start + a.nbytes, b.start + b.nbytes) - data_start}) "
                             "of the data; the header's data_offsets are corrupt: re-export or copy the file again")
    pos, before = data_start, None
    for info in ranges:
        if info.start > pos:
            where = f"after {before.name!r}" if before else f"before {info.name!r}"
            raise InputError(f"{path}: no tensor holds bytes [{pos - data_start}, {info.start - data_start}) of the "
                             f"data ({where}); the header's data_offsets are corrupt: re-export or copy the file again")
        pos, before = info.start + info.nbytes, info
    if pos != size:
        last = f"after the last tensor {before.name!r}" if before else "in a file with no tensors"
        raise InputError(f"{path}: bytes [{pos - data_start}, {size - data_start}) of the data, {last}, belong to no "
                         "tensor; the file is corrupt (a failed write, or joined files): re-export or copy it again")


def _tensor_info(path: str, name: str, entry: object, data_start: int, size: int) -> TensorInfo:
    try:
        dtype = DTYPES[entry["dtype"]]  # type: ignore[index]
        shape = tuple(int(d) for d in entry["shape"])  # type: ignore[index]
        begin, end = (int(x) for x in entry["data_offsets"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: tensor {name!r}: malformed or unsupported header entry {entry!r}") from None
    expected = nbytes(dtype, shape)
    if end - begin != expected or begin < 0:
        raise InputError(f"{path}: tensor {name!r}: header says {end - begin} bytes, "
                         f"shape {list(shape)} needs {expected}")
    if data_start + end > size:
        raise InputError(
            f"{path}: truncated: tensor {name!r} ends at byte {data_start + end} but the file has {size}; "
            "the file was cut short (interrupted copy or download): copy it again"
        )
    return TensorInfo(name, path, dtype, shape, data_start + begin, end - begin)


def build_header(entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str]) -> tuple[bytes, list[int]]:
    """The bytes of a header for tensors written in this order, and each tensor's data offset."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offsets, pos = [], 0
    for name, dtype, shape in entries:
        n = nbytes(dtype, shape)
        header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
        offsets.append(pos)
        pos += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(blob)) + blob, offsets

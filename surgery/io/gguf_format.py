"""The GGUF file format (llama.cpp's single-file checkpoint): header parsing and building.

Layout (little-endian): magic `GGUF`, version (uint32, 2 or 3), tensor count and key-value count
(uint64 each), the key-value pairs (key string, value type uint32, value), one info per tensor (name,
dimension count uint32, dimensions uint64 each, innermost first, type uint32, data offset uint64),
padding to `general.alignment` (default 32), then the tensor data, each tensor at its offset from
the start of the data. A string is a uint64 length and UTF-8 bytes; an array is an element type
(uint32), a count (uint64) and the elements.

We parse it ourselves, as we do safetensors headers, so that a tensor (or a block of its rows) is
read with one `pread` into memory we own, and so that every size and offset is checked against the
file before any data is read: a truncated file or a header that lies about a tensor's size is an
`InputError` naming the file and the tensor, never a crash halfway through a merge.
"""

from __future__ import annotations

import functools
import io
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from surgery.errors import InputError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_STRING = 1 << 30

# value type id -> (struct code, size) for the scalar types; 8 is a string, 9 an array
SCALARS: dict[int, tuple[str, int]] = {
    0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4),
    7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8),
}
STRING, ARRAY = 8, 9
NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
         12: "<f8"}


@dataclass(frozen=True)
class Typed:
    """A metadata value with its GGUF type, for writing: `kind` a value type id, `item` the element
    type of an array."""

    kind: int
    value: object
    item: int | None = None


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file as its header states it; `dims` innermost first (ggml's `ne`)."""

    name: str
    dims: tuple[int, ...]
    type: int          # ggml type id (gguf.GGMLQuantizationType)
    start: int         # absolute byte offset of the data in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape as torch sees it: outermost first (a Linear weight (out, in))."""
        return tuple(reversed(self.dims))


@dataclass(frozen=True)
class GGUFHeader:
    path: str
    version: int
    metadata: dict[str, object]
    types: dict[str, tuple[int, int | None]]  # key -> (value type, element type of an array)
    tensors: dict[str, GGUFTensor]
    alignment: int
    data_start: int


@functools.cache
def type_sizes() -> dict[int, tuple[int, int]]:
    """ggml type id -> (elements per block, bytes per block), from the gguf package."""
    from gguf import GGML_QUANT_SIZES

    return {int(k): v for k, v in GGML_QUANT_SIZES.items()}


def type_name(type_id: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type {type_id}"


def tensor_bytes(dims: tuple[int, ...], type_id: int, sizes: dict[int, tuple[int, int]]) -> int:
    block, size = sizes[type_id]
    return math.prod(dims[1:]) * (dims[0] // block) * size


class _Cursor:
    """Reads the header sequentially; a read past the end of the file is a truncated file."""

    def __init__(self, path: str):
        self.path, self.size = path, os.path.getsize(path)
        self.last_item: int | None = None  # element type of the last array read
        self.f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by read_header

    def take(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise InputError(f"{self.path}: truncated GGUF file: it ends inside {what} (the file has {self.size} "
                             "bytes); the file was cut short (interrupted copy or download): copy it again")
        return data

    def scalar(self, kind: int, what: str):
        code, size = SCALARS[kind]
        return struct.unpack("<" + code, self.take(size, what))[0]

    def string(self, what: str) -> str:
        n = self.scalar(10, what)
        if n > min(MAX_STRING, self.size):
            raise InputError(f"{self.path}: corrupt GGUF header: {what} claims a string of {n} bytes")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{self.path}: corrupt GGUF header: {what} is not UTF-8 text") from None

    @property
    def pos(self) -> int:
        return self.f.tell()


def read_header(path: str) -> GGUFHeader:
    """Parse a GGUF file's header and check every tensor's size and place against the file."""
    try:
        cur = _Cursor(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return _parse(cur)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    finally:
        cur.f.close()


def _parse(cur: _Cursor) -> GGUFHeader:
    magic = cur.take(4, "the magic number")
    if magic != MAGIC:
        raise InputError(f"{cur.path}: not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF')")
    version = cur.scalar(4, "the version")
    if version not in VERSIONS:
        hint = " (a big-endian file: convert it on a little-endian machine)" if version > 0xFFFF else ""
        raise InputError(f"{cur.path}: GGUF version {version} is not supported (only {VERSIONS}){hint}")
    n_tensors, n_kv = cur.scalar(10, "the tensor count"), cur.scalar(10, "the key-value count")
    if n_tensors * 24 + n_kv * 12 > cur.size:  # the smallest tensor info and key-value pair
        raise InputError(f"{cur.path}: truncated or corrupt GGUF file: its header announces {n_tensors} tensors and "
                         f"{n_kv} key-value pairs, which cannot fit in its {cur.size} bytes; copy the file again")
    metadata, types = {}, {}
    for i in range(n_kv):
        key = cur.string(f"key-value pair {i}")
        kind = cur.scalar(4, f"the type of {key!r}")
        metadata[key], types[key] = _value(cur, kind, key), (kind, cur.last_item if kind == ARRAY else None)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment % 8:
        raise InputError(f"{cur.path}: corrupt GGUF header: general.alignment is {alignment!r} (a multiple of 8)")
    infos = [_tensor_info(cur, i) for i in range(n_tensors)]
    data_start = cur.pos + (-cur.pos % alignment)
    tensors = _place(cur, infos, data_start)
    return GGUFHeader(cur.path, version, metadata, types, tensors, alignment, data_start)


def _value(cur: _Cursor, kind: int, key: str):
    if kind in SCALARS:
        return cur.scalar(kind, f"the value of {key!r}")
    if kind == STRING:
        return cur.string(f"the value of {key!r}")
    if kind != ARRAY:
        raise InputError(f"{cur.path}: corrupt GGUF header: {key!r} has unknown value type {kind}")
    item, n = cur.scalar(4, f"the array {key!r}"), cur.scalar(10, f"the array {key!r}")
    cur.last_item = item
    if item in NUMPY:
        if n * SCALARS[item][1] > cur.size:
            raise _too_long(cur, key, n)
        values = np.frombuffer(cur.take(n * SCALARS[item][1], f"the array {key!r}"), dtype=NUMPY[item])
        return values.astype(bool).tolist() if item == 7 else values.tolist()
    if n * 8 > cur.size:
        raise _too_long(cur, key, n)
    values = [_value(cur, item, f"{key}[{j}]") for j in range(n)]
    cur.last_item = item  # an inner array set its own
    return values


def _too_long(cur: _Cursor, key: str, n: int) -> InputError:
    return InputError(f"{cur.path}: truncated or corrupt GGUF file: array {key!r} claims {n} elements, more than "
                      f"its {cur.size} bytes can hold; copy the file again")


def _tensor_info(cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string(f"the name of tensor {i}")
    n_dims = cur.scalar(4, f"tensor {name!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise InputError(f"{cur.path}: corrupt GGUF header: tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS})")
    dims = tuple(cur.scalar(10, f"tensor {name!r}") for _ in range(n_dims))
    return name, dims, cur.scalar(4, f"tensor {name!r}"), cur.scalar(10, f"tensor {name!r}")


def _place(cur: _Cursor, infos: list, data_start: int) -> dict[str, GGUFTensor]:
    """Each tensor's absolute place, checked: known type, whole blocks, inside the file, no overlap."""
    sizes, tensors = type_sizes(), {}
    for name, dims, type_id, offset in infos:
        if name in tensors:
            raise InputError(f"{cur.path}: corrupt GGUF header: tensor {name!r} appears twice")
        if type_id not in sizes:
            raise InputError(f"{cur.path}: tensor {name!r} has ggml type id {type_id}, which this gguf package "
                             "does not know; upgrade gguf (pip install -U gguf) or re-export the file")
        if dims[0] % sizes[type_id][0]:
            raise InputError(f"{cur.path}: corrupt GGUF header: tensor {name!r} rows of {dims[0]} elements are not "
                             f"whole {type_name(type_id)} blocks of {sizes[type_id][0]}")
        tensors[name] = GGUFTensor(name, dims, type_id, data_start + offset, tensor_bytes(dims, type_id, sizes))
    ordered = sorted(tensors.values(), key=lambda t: t.start)
    for t, following in zip(ordered, ordered[1:] + [None]):
        if following is not None and t.start + t.nbytes > following.start:
            raise InputError(f"{cur.path}: corrupt GGUF header: tensor {t.name!r} (shape {list(t.shape)}, "
                             f"{type_name(t.type)}) needs {t.nbytes} bytes but tensor {following.name!r} starts "
                             f"{following.start - t.start} bytes after it; the header lies about its size")
        if t.start + t.nbytes > cur.size:
            raise InputError(f"{cur.path}: truncated: tensor {t.name!r} ends at byte {t.start + t.nbytes} but the "
                             f"file has {cur.size}; the file was cut short (interrupted copy or download), or its "
                             "header lies about the tensor's size: copy it again")
    return tensors


# Writing -----------------------------------------------------------------------------------------

def _pack_scalar(kind: int, value) -> bytes:
    return struct.pack("<" + SCALARS[kind][0], value)


def _pack_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(kind: int, value, item: int | None) -> bytes:
    if kind in SCALARS:
        return _pack_scalar(kind, value)
    if kind == STRING:
        return _pack_string(value)
    head = struct.pack("<IQ", item, len(value))
    if item in NUMPY and item != 7:
        return head + np.asarray(value, dtype=NUMPY[item]).tobytes()
    return head + b"".join(_pack_value(item, v, None) for v in value)


def build_header(metadata: dict[str, Typed], tensors: list[tuple[str, tuple[int, ...], int]],
                 alignment: int = DEFAULT_ALIGNMENT) -> tuple[bytes, list[int]]:
    """The header bytes (padded to the alignment) for tensors written in this order, `dims` innermost
    first, and each tensor's offset from the start of the data (each aligned, as llama.cpp requires)."""
    sizes, out = type_sizes(), io.BytesIO()
    out.write(MAGIC + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, typed in metadata.items():
        out.write(_pack_string(key) + struct.pack("<I", typed.kind) + _pack_value(typed.kind, typed.value, typed.item))
    offsets, pos = [], 0
    for name, dims, type_id in tensors:
        out.write(_pack_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims))
        out.write(struct.pack("<IQ", type_id, pos))
        offsets.append(pos)
        pos += tensor_bytes(dims, type_id, sizes)
        pos += -pos % alignment
    out.write(b"\0" * (-out.tell() % alignment))
    return out.getvalue(), offsets

"""Sharded safetensors writer that streams: each shard's header is written first (every output
name, dtype and shape is known before the merge starts), then data blocks are appended in order, so
no whole tensor, let alone a whole model, is ever held to write it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from surgery.errors import OutputError
from surgery.io.format import build_header, nbytes, read_header

INDEX = "model.safetensors.index.json"
COPY_CHUNK = 16 * 1024**2


@dataclass(frozen=True)
class Shard:
    file: str
    entries: tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]

    @property
    def nbytes(self) -> int:
        return sum(nbytes(d, s) for _, d, s in self.entries)


def plan_shards(entries: list[tuple[str, torch.dtype, tuple[int, ...]]], max_bytes: int) -> list[Shard]:
    """Greedy, in write order: a shard is closed when the next tensor would push it past the cap."""
    groups: list[list] = [[]]
    size = 0
    for entry in entries:
        n = nbytes(entry[1], entry[2])
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += n
    if len(groups) == 1:
        return [Shard("model.safetensors", tuple(groups[0]))]
    total = len(groups)
    return [Shard(f"model-{i + 1:05d}-of-{total:05d}.safetensors", tuple(g)) for i, g in enumerate(groups)]


@dataclass
class ShardWriter:
    """Writes the planned shards into `folder`; tensors must arrive in plan order, in row blocks."""

    folder: str
    shards: list[Shard]
    metadata: dict[str, str]
    _order: list[tuple[int, str, int]] = field(default_factory=list)  # (shard, name, bytes)
    _pos: int = 0
    _left: int = 0
    _file: object = None
    _shard: int = -1
    bytes_written: int = 0

    def __post_init__(self) -> None:
        self._order = [(i, n, nbytes(d, s)) for i, sh in enumerate(self.shards) for n, d, s in sh.entries]

    def write(self, name: str, block: torch.Tensor) -> None:
        """Append `block` (the next rows of tensor `name`, already in the output dtype)."""
        if self._left == 0:
            self._start_next(name)
        shard, expected, _ = self._order[self._pos]
        if name != expected:
            raise RuntimeError(f"writer expected tensor {expected!r}, got {name!r}")  # engine bug
        data = block.contiguous().reshape(-1).view(torch.uint8).numpy() if block.numel() else b""
        if len(data) > self._left:
            raise RuntimeError(f"tensor {name!r}: more bytes than planned")  # engine bug
        self._io(lambda: self._file.write(data))
        self._left -= len(data)  # numpy uint8: len is the byte count
        self.bytes_written += len(data)
        if self._left == 0:
            self._pos += 1

    def _start_next(self, name: str) -> None:
        shard, expected, nbytes = self._order[self._pos]
        if shard != self._shard:
            self._close_file()
            self._shard = shard
            header, _ = build_header(list(self.shards[shard].entries), self.metadata)
            path = os.path.join(self.folder, self.shards[shard].file)
            self._file = self._io(lambda: open(path, "wb"))
            self._io(lambda: self._file.write(header))
        self._left = nbytes  # 0 for an empty tensor: its one empty block completes it in `write`

    def finish(self) -> None:
        """Close the last shard and write the index (for more than one shard)."""
        if self._pos != len(self._order):
            missing = [n for _, n, _ in self._order[self._pos:]]
            raise RuntimeError(f"writer finished with {len(missing)} tensors unwritten: {missing[:3]}")  # engine bug
        self._close_file()
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in self.shards)},
                "weight_map": {n: s.file for s in self.shards for n, _, _ in s.entries},
            }
            self._io(lambda: _write_text(os.path.join(self.folder, INDEX), json.dumps(index, indent=2)))

    def _close_file(self) -> None:
        if self._file is not None:
            self._io(self._file.close)
            self._file = None

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _io(self, op):
        try:
            return op()
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OutputError(f"{self.folder}: disk full while writing the merged model; free space and run again "
                                  f"(the model needs {sum(s.nbytes for s in self.shards) / 1e9:.2f} GB)") from None
            raise OutputError(f"{self.folder}: cannot write ({e.strerror})") from None


def add_metadata(path: str, extra: dict[str, str]) -> None:
    """Rewrite the safetensors file `path` with `extra` added to its header's metadata (for files another
    library wrote); the tensors' bytes are copied unchanged, in one pass."""
    infos, metadata = read_header(path)
    order = sorted(infos.values(), key=lambda i: i.start)
    header, _ = build_header([(i.name, i.dtype, i.shape) for i in order], {**metadata, **extra})
    tmp = f"{path}.partial"
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(header)
            if order:
                src.seek(order[0].start)  # the data section, which the tensors tile exactly
                shutil.copyfileobj(src, dst, COPY_CHUNK)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class QueuedWriter:
    """A ShardWriter fed from a thread of its own: the merge computes block k + 1 while block k is
    copied into the file. One block waits at most, so memory stays bounded; an error in the writing
    thread is raised by the next call."""

    def __init__(self, writer: ShardWriter):
        self.writer = writer
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="surgery-write")
        self.pending: Future | None = None

    def write(self, name: str, block: torch.Tensor) -> None:
        self.wait()
        self.pending = self.pool.submit(self.writer.write, name, block)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def finish(self) -> None:
        self.wait()
        self.writer.finish()

    def abort(self) -> None:
        try:
            self.wait()
        except Exception:  # noqa: BLE001 - aborting after a failure: the first error is the one raised
            pass
        finally:
            self.pool.shutdown(wait=True)
            self.writer.abort()


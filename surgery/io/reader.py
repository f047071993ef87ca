"""Lazy reader of a Hugging Face model folder: names, shapes and dtypes from headers alone,
tensor data (or a block of rows) read on demand with one `pread` each.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from functools import cached_property

import torch

from surgery.errors import InputError
from surgery.io.format import TensorInfo, read_header

INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelFolder:
    """One checkpoint folder, single-file or sharded. Nothing is read until asked for."""

    def __init__(self, path: str, allow_pickle: bool = False):
        self.path = os.path.abspath(path)
        if not os.path.isdir(self.path):
            raise InputError(f"model folder {path!r} does not exist (or is not a folder); check the path in your spec")
        self.allow_pickle = allow_pickle
        self._fds: dict[str, int] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        self.tensors, self.metadata = self._scan()

    def _scan(self) -> tuple[dict[str, TensorInfo], dict[str, str]]:
        files = self._safetensors_files()
        if not files:
            return self._scan_pickle(), {}
        tensors: dict[str, TensorInfo] = {}
        metadata: dict[str, str] = {}
        for file in files:
            infos, meta = read_header(file)
            metadata.update(meta)
            for name, info in infos.items():
                if name in tensors:
                    raise InputError(f"{self.path}: tensor {name!r} appears in two shards "
                                     f"({tensors[name].file}, {file})")
                tensors[name] = info
        return tensors, metadata

    def _safetensors_files(self) -> list[str]:
        index = os.path.join(self.path, INDEX)
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{index}: not a valid safetensors index ({e!r})") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not os.path.exists(os.path.join(self.path, f))]
            if missing:
                raise InputError(f"{index}: lists shard(s) {missing} that are not in the folder; copy them in")
            return [os.path.join(self.path, f) for f in files]
        return sorted(glob.glob(os.path.join(self.path, "*.safetensors")))

    def _scan_pickle(self) -> dict[str, TensorInfo]:
        found = [f for f in PICKLE_FILES if os.path.exists(os.path.join(self.path, f))]
        if not found:
            raise InputError(f"{self.path}: no *.safetensors files (nor {INDEX}) in this model folder")
        if not self.allow_pickle:
            raise InputError(
                f"{self.path}: holds only pickle checkpoints ({found[0]}), which can run code when loaded; "
                "convert it to safetensors, or pass --allow-pickle to load it with weights_only=True"
            )
        self._pickled = self._load_pickle()
        return {
            name: TensorInfo(name, "<pickle>", t.dtype, tuple(t.shape), -1, t.numel() * t.element_size())
            for name, t in self._pickled.items()
        }

    def _load_pickle(self) -> dict[str, torch.Tensor]:
        index = os.path.join(self.path, "pytorch_model.bin.index.json")
        files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
                 else ["pytorch_model.bin"])
        out: dict[str, torch.Tensor] = {}
        for file in files:
            # weights_only refuses arbitrary objects; mmap keeps the data on disk until read.
            out.update(torch.load(os.path.join(self.path, file), map_location="cpu", weights_only=True, mmap=True))
        return out

    @property
    def side_folder(self) -> str:
        """Where config.json and the tokenizer files are: the folder itself."""
        return self.path

    @cached_property
    def config(self) -> dict:
        file = os.path.join(self.path, "config.json")
        if not os.path.exists(file):
            return {}
        try:
            with open(file) as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{file}: invalid JSON ({e})") from None

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor `name` (or rows [r0, r1) of it) in its stored dtype, in memory we own."""
        info = self.tensors[name]
        r0, r1 = rows if rows is not None else (0, info.rows)
        if not 0 <= r0 <= r1 <= info.rows:
            raise IndexError(f"rows [{r0}, {r1}) outside tensor {name!r} of {info.rows} rows")  # caller bug
        shape = ((r1 - r0), *info.shape[1:]) if len(info.shape) > 1 else info.shape
        if self._pickled is not None:
            t = self._pickled[name]
            return (t[r0:r1] if len(info.shape) > 1 else t).clone()
        nbytes = (r1 - r0) * info.row_bytes
        if not nbytes:
            return torch.empty(shape, dtype=info.dtype)
        buf = torch.empty(nbytes, dtype=torch.uint8)  # not zeroed first, as a bytearray would be
        self._pread_into(info, memoryview(buf.numpy()), info.start + r0 * info.row_bytes)
        return buf.view(info.dtype).reshape(shape)

    def blocks(self, name: str, block_bytes: int) -> Iterator[torch.Tensor]:
        """Tensor `name` as consecutive blocks of rows of about `block_bytes` each (at least one row)."""
        info = self.tensors[name]
        if info.rows == 0 or len(info.shape) < 2:
            yield self.read(name)
            return
        step = max(1, block_bytes // max(1, info.row_bytes))
        for r in range(0, info.rows, step):
            yield self.read(name, (r, min(r + step, info.rows)))

    def _pread_into(self, info: TensorInfo, view: memoryview, offset: int) -> None:
        fd, done = self._fd(info.file), 0
        while done < len(view):  # one pread returns at most ~2 GiB
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise InputError(f"{info.file}: short read of tensor {info.name!r} (file truncated while merging?)")
            done += got

    def _fd(self, file: str) -> int:
        """The file's descriptor, opened on first use; threads that race to open it share one."""
        fd = self._fds.get(file)
        if fd is None:
            fd = os.open(file, os.O_RDONLY)
            kept = self._fds.setdefault(file, fd)
            if kept != fd:
                os.close(fd)
            fd = kept
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __repr__(self) -> str:
        return f"ModelFolder({self.path!r}, {len(self.tensors)} tensors)"

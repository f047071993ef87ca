"""What is in a checkpoint folder, read from headers alone: tensors, shapes, dtypes, parameter
count, shards, and the provenance a merge stored in the safetensors metadata."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from surgery.adapters.config import is_adapter
from surgery.adapters.summary import summarize
from surgery.io.reader import ModelFolder
from surgery.merge.layers import natural_key


@dataclass(frozen=True)
class Inspection:
    path: str
    files: tuple[str, ...]
    tensors: tuple[tuple[str, str, tuple[int, ...]], ...]  # (name, dtype, shape)
    parameters: int
    nbytes: int
    dtypes: dict[str, int]
    provenance: dict[str, str]
    config: dict
    adapter: dict | None = None  # a PEFT adapter folder: type, ranks, alpha, targets (surgery.adapters.summary)

    def as_json(self) -> str:
        return json.dumps({
            "path": self.path, "files": self.files, "parameters": self.parameters, "bytes": self.nbytes,
            "dtypes": self.dtypes, "provenance": self.provenance, **({"adapter": self.adapter} if self.adapter else {}),
            "tensors": [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in self.tensors],
        }, indent=2)


def inspect_folder(path: str, allow_pickle: bool = False) -> Inspection:
    folder = ModelFolder(path, allow_pickle=allow_pickle)
    infos = sorted(folder.tensors.values(), key=lambda i: natural_key(i.name))  # layers.2 before layers.10
    dtypes = Counter()
    for i in infos:
        dtypes[str(i.dtype).removeprefix("torch.")] += i.numel
    return Inspection(
        path=folder.path,
        files=tuple(sorted({i.file.rsplit("/", 1)[-1] for i in infos})),
        tensors=tuple((i.name, str(i.dtype).removeprefix("torch."), i.shape) for i in infos),
        parameters=sum(i.numel for i in infos),
        nbytes=sum(i.nbytes for i in infos),
        dtypes=dict(dtypes),
        provenance={k: v for k, v in folder.metadata.items() if k.startswith("surgery.")},
        config=folder.config,
        adapter=summarize(path) if is_adapter(path) else None,
    )

"""Training data: JSONL files (or folders of them) read into rows, checked against the shapes an
objective accepts, encoded once, and drawn step by step from a mixture of datasets.

Row shapes: `{"prompt", "completion"}`, `{"messages": [{"role", "content"}, ...]}` (chat),
`{"text"}` (plain text, for pretraining), `{"prompt", "chosen", "rejected"}` (preference pairs) and
`{"prompt", "completion", "label"}` (unpaired preference, `label` true for a desirable completion, for
KTO). Other fields are kept (a `task` label, say) and ignored.

The mixture draws each row's dataset with probability proportional to the dataset's size, or to
size^(1/T) with temperature sampling (T > 1 flattens the mixture towards uniform, as in multi-task
tuning of mT5 and T0). Within a dataset, rows come in a seeded permutation, a new one each epoch.
The draw of step s depends only on the seed, s and each dataset's cursor, so resuming restores it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch

from surgery.errors import InputError
from trainers.jsonl import read_json_lines

# Row shapes and their fields, the most specific first. `preference` is for pairwise objectives (DPO).
SHAPES = {
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion", "label"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Row:
    fields: dict
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}: line {self.line}"


@dataclass(frozen=True)
class Dataset:
    path: str  # as given in the spec
    files: tuple[str, ...]
    sha256: dict[str, str]  # file -> digest
    rows: tuple[Row, ...] = field(repr=False)


def jsonl_files(path: str, spec_field: str) -> list[str]:
    """A .jsonl file, or every .jsonl file of a folder (sorted, so the order never depends on the disk)."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".jsonl"))
        if files:
            return files
        raise InputError(f"{spec_field}: folder {path!r} holds no .jsonl file")
    raise InputError(f"{spec_field}: no such file or folder {path!r}")


def read_dataset(path: str, shapes: tuple[str, ...], spec_field: str) -> Dataset:
    files = jsonl_files(path, spec_field)
    rows, digests = [], {}
    for file in files:
        found = read_json_lines(file)
        digests[file] = found.sha256
        for number, obj in found.objects():
            row = Row(obj, file, number)
            check_row(row, shapes)
            rows.append(row)
    if not rows:
        raise InputError(f"{spec_field}: {path!r} holds no rows")
    return Dataset(path, tuple(files), digests, tuple(rows))


def check_row(row: Row, shapes: tuple[str, ...]) -> str:
    """The row's shape among those the objective accepts; otherwise an error naming what is missing."""
    if not isinstance(row.fields, dict):
        raise InputError(f"{row.where}: a row is a JSON object, not {type(row.fields).__name__}")
    missing = {s: [k for k in SHAPES[s] if k not in row.fields] for s in shapes}
    shape = next((s for s in shapes if not missing[s]), None)
    accepted = " or ".join("/".join(SHAPES[s]) for s in shapes)
    if shape is None:
        other = next((s for s in SHAPES if all(k in row.fields for k in SHAPES[s])), None)
        if other is not None:
            raise InputError(f"{row.where}: this objective trains on {accepted} rows, not '{other}' rows")
        if all(len(missing[s]) == len(SHAPES[s]) for s in shapes):
            raise InputError(f"{row.where}: a row of this objective has {accepted}; found "
                             f"{', '.join(sorted(row.fields)) or 'no field'}")
        near = min(shapes, key=lambda s: (len(missing[s]), -len(SHAPES[s])))
        raise InputError(f"{row.where}: missing field '{missing[near][0]}' (a {'/'.join(SHAPES[near])} row has "
                         f"{', '.join(SHAPES[near])})")
    for key in SHAPES[shape]:
        if key == "label" and not isinstance(row.fields[key], bool):
            raise InputError(f"{row.where}: field 'label' must be true or false, not {row.fields[key]!r}")
        if key not in ("messages", "label") and not isinstance(row.fields[key], str):
            raise InputError(f"{row.where}: field '{key}' must be a string, not {type(row.fields[key]).__name__}")
    if shape == "messages":
        check_messages(row)
    return shape


def check_messages(row: Row) -> None:
    messages = row.fields["messages"]
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{row.where}: 'messages' must be a non-empty list of {{role, content}}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise InputError(f"{row.where}: messages.{i} must be {{\"role\": one of {', '.join(ROLES)}, "
                             "\"content\": a string}")
    if not any(m["role"] == "assistant" for m in messages):
        raise InputError(f"{row.where}: the conversation has no assistant turn, so nothing to learn from")


def truncate(example: dict[str, list[int]], max_length: int) -> tuple[dict[str, list[int]], bool]:
    """Cut every token sequence of an encoded example to max_length; says whether any was longer."""
    over = any(len(v) > max_length for v in example.values() if isinstance(v, list))
    if not over:
        return example, False
    return {k: v[:max_length] if isinstance(v, list) else v for k, v in example.items()}, True


def mixture_probabilities(sizes: list[int], weights: list[float | None], temperature: float) -> list[float]:
    """p_i ∝ w_i where given, else size_i^(1/T); T = 1 is proportional to size."""
    raw = [w if w is not None else n ** (1.0 / temperature) for n, w in zip(sizes, weights)]
    return [r / sum(raw) for r in raw]


class Mixture:
    """Draws (dataset, row) pairs step by step; its state is the cursor of each dataset. Each row's
    dataset is drawn at random, or with `exact` each step holds every dataset's share of its rows
    exactly (rounded by largest remainder), in a seeded order: a replay buffer mixed at ratio r gives
    every step r of its rows."""

    def __init__(self, sizes: list[int], probabilities: list[float], seed: int, exact: bool = False):
        self.sizes, self.probs, self.seed = sizes, torch.tensor(probabilities, dtype=torch.float64), seed
        self.exact = exact
        self.cursors = [0] * len(sizes)
        self.orders: dict[int, tuple[int, list[int]]] = {}  # dataset -> (epoch, permutation), the current epoch only

    def draw(self, step: int, count: int) -> list[tuple[int, int]]:
        g = torch.Generator().manual_seed(hash_seed(self.seed, step))
        if self.exact:
            picks = [d for d, n in enumerate(exact_counts(self.probs.tolist(), count)) for _ in range(n)]
            picks = [picks[i] for i in torch.randperm(count, generator=g).tolist()]
        else:
            picks = torch.multinomial(self.probs, count, replacement=True, generator=g).tolist()
        return [(d, self.next_row(d)) for d in picks]

    def next_row(self, d: int) -> int:
        n, k = self.sizes[d], self.cursors[d]
        self.cursors[d] += 1
        return self.order(d, k // n)[k % n]

    def order(self, d: int, epoch: int) -> list[int]:
        if self.orders.get(d, (None,))[0] != epoch:
            g = torch.Generator().manual_seed(hash_seed(self.seed, d, epoch))
            self.orders[d] = (epoch, torch.randperm(self.sizes[d], generator=g).tolist())
        return self.orders[d][1]

    def state_dict(self) -> dict:
        return {"cursors": list(self.cursors)}

    def load_state_dict(self, state: dict) -> None:
        self.cursors = list(state["cursors"])


def exact_counts(probabilities: list[float], count: int) -> list[int]:
    """`count` split in proportion to `probabilities`, rounded by largest remainder (ties to the first)."""
    share = [p * count for p in probabilities]
    counts = [int(x) for x in share]
    for i in sorted(range(len(share)), key=lambda i: counts[i] - share[i])[:count - sum(counts)]:
        counts[i] += 1
    return counts


def hash_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")

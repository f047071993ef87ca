"""A JSON-lines file read once: its sha256 and every non-blank line parsed, each with its line number, so
a line that is not JSON is refused naming the file and the line. The datasets, the Self-Instruct seeds
and the CAI prompts read their files through it; what a row must hold is each reader's own check."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from surgery.errors import InputError


@dataclass(frozen=True)
class JsonLines:
    path: str
    sha256: str
    text: str

    def objects(self) -> Iterator[tuple[int, object]]:
        """(line number from 1, the parsed value) of each non-blank line, parsed as they are asked for: a
        reader's own check of one line comes before a JSON error on a later one."""
        for number, line in enumerate(self.text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{self.path}: line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
            yield number, value


def read_json_lines(path: str) -> JsonLines:
    with open(path, "rb") as f:
        raw = f.read()
    return JsonLines(path, hashlib.sha256(raw).hexdigest(), raw.decode("utf-8", errors="replace"))

"""Documents of the BIG-bench tasks shipped beside this file (see NOTICE.md for source and licence)."""

from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _jsonl(name: str):
    from datasets import Dataset, DatasetDict

    from surgery.errors import InputError

    path = os.path.join(HERE, name)
    if not os.path.isfile(path):
        raise InputError(f"task data {path} is missing; restore it from the repository (git checkout -- {path})")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return DatasetDict({"test": Dataset.from_list(rows)})


def arithmetic(**_):
    return _jsonl("bigbench_arithmetic.jsonl")


def general_knowledge(**_):
    return _jsonl("bigbench_general_knowledge.jsonl")

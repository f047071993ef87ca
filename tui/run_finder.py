"""Finds training runs under a few folders: a run is a folder holding `log.jsonl` (trainers/loops/session.py).

The walk is shallow and skips what cannot hold a run (checkpoint folders, hidden folders,
virtual environments), so it stays cheap enough to repeat every few seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

LOG = "log.jsonl"
MAX_DEPTH = 4  # folders below a root: runs/<group>/<run>/round-2 is as deep as runs nest
SKIP = {"final", "trainer_state", "node_modules", "__pycache__", "site-packages"}


def find_runs(roots: Sequence[str], max_depth: int = MAX_DEPTH) -> list[str]:
    """Run folders (absolute) under the roots, each once, in path order."""
    found: set[str] = set()
    for root in roots:
        found.update(_walk(os.path.abspath(root), max_depth))
    return sorted(found)


def _walk(folder: str, depth: int) -> list[str]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    runs = [folder] if any(e.name == LOG and e.is_file() for e in entries) else []
    if depth == 0:
        return runs
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False) and not _skipped(entry.name):
            runs += _walk(entry.path, depth - 1)
    return runs


def _skipped(name: str) -> bool:
    return name.startswith((".", "checkpoint-")) or name in SKIP

"""Watches the training runs under a few folders: finds them now and then, and on every poll reads
only what their logs gained since the last one (tui/log_tail.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tui.log_tail import LogTail
from tui.run_finder import LOG, find_runs
from tui.run_progress import Progress, advance, total_steps

RESCAN_EVERY = 5  # polls between two looks for new runs


@dataclass
class Watched:
    tail: LogTail
    progress: Progress


class RunWatch:
    """Not thread-safe: poll from one thread at a time."""

    def __init__(self, roots: Sequence[str], rescan_every: int = RESCAN_EVERY):
        self.roots = [os.path.abspath(r) for r in roots]
        self.rescan_every = rescan_every
        self.watched: dict[str, Watched] = {}
        self.polls = 0

    def poll(self, rescan: bool = False) -> dict[str, Progress]:
        """{run folder: progress} after reading every log's new lines; looks for new runs on the first
        poll, every `rescan_every` polls and when asked."""
        if rescan or self.polls % self.rescan_every == 0:
            self._rescan()
        self.polls += 1
        for folder, w in self.watched.items():
            records, restarted = w.tail.read()
            progress = Progress() if restarted else w.progress
            w.progress = replace(advance(progress, records), updated=w.tail.mtime)
            if w.progress.total is None:
                w.progress = replace(w.progress, total=total_steps(folder))
        return {folder: w.progress for folder, w in self.watched.items()}

    def _rescan(self) -> None:
        found = find_runs(self.roots)
        self.watched = {f: self.watched.get(f) or Watched(LogTail(os.path.join(f, LOG)), Progress()) for f in found}

    def label(self, folder: str) -> str:
        """The run's folder relative to the root it was found under (the root's own name if it is the run)."""
        for root in self.roots:
            if folder == root:
                return os.path.basename(root) or root
            if folder.startswith(root.rstrip(os.sep) + os.sep):
                return os.path.relpath(folder, root)
        return folder

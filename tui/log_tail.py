"""Reads what was appended to a JSONL log since the last read: the offset of the last complete line is
remembered, so a refresh reads only the new bytes.

A half-written last line (no newline yet) is left for the next read. A log rewritten in place (a
resumed training run keeps only the records up to its checkpoint, trainers/loops/session.py `Log`) is
noticed because the last line read is no longer where it was; the log is then read again from the start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass
class LogTail:
    """The read position in one log; `read()` returns the records appended since the last call."""

    path: str
    offset: int = 0
    last_line: bytes = b""  # the last complete line read, ending at `offset`
    inode: int | None = None
    mtime: float | None = None  # when the log was last written, as of the last read

    def read(self) -> tuple[list[dict], bool]:
        """(new records, restarted): `restarted` when the log was rewritten and is read from the start."""
        try:
            with open(self.path, "rb") as f:
                restarted = self._moved(f)
                if restarted:
                    self.offset, self.last_line = 0, b""
                f.seek(self.offset)
                chunk = f.read()
        except OSError:  # not there (yet, or any more), or not readable
            return [], False
        complete = chunk[:chunk.rfind(b"\n") + 1]  # up to the last newline: a cut-off line waits
        if complete:
            self.offset += len(complete)
            self.last_line = complete.splitlines(keepends=True)[-1]
        return parse_lines(complete), restarted

    def _moved(self, f) -> bool:
        """Was the file replaced or rewritten since the last read?"""
        stat = os.fstat(f.fileno())
        replaced = self.inode is not None and stat.st_ino != self.inode
        self.inode, self.mtime = stat.st_ino, stat.st_mtime
        if replaced:
            return True
        if not self.last_line:
            return False
        f.seek(self.offset - len(self.last_line))
        return f.read(len(self.last_line)) != self.last_line


def parse_lines(data: bytes) -> list[dict]:
    """One dict per line of JSON; blank lines, lines that do not parse and non-objects are skipped."""
    records = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records

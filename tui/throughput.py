"""How far a merge has gone: tensors and bytes written, bytes per second and time left, from the
engine's progress calls (`(tensor name, bytes written)` per block). Written by the merge's thread,
read by the interface's; plain numbers, so a read between two updates is merely a little stale."""

from __future__ import annotations

import time


class Throughput:
    def __init__(self, total_bytes: int, tensors: int, clock=time.monotonic):
        self.total, self.tensors, self.clock = total_bytes, tensors, clock
        self.start = clock()
        self.done_bytes, self.done_tensors, self.last = 0, 0, None

    def add(self, name: str, nbytes: int) -> None:
        if name != self.last:
            self.done_tensors, self.last = self.done_tensors + 1, name
        self.done_bytes += nbytes

    @property
    def rate(self) -> float:
        """Bytes per second since the start."""
        return self.done_bytes / max(self.clock() - self.start, 1e-6)

    def seconds_left(self) -> float | None:
        rate = self.rate
        return (self.total - self.done_bytes) / rate if rate > 0 else None

    def line(self) -> str:
        """'tensor 3/21  1.2 MiB/s  4s left'."""
        left = self.seconds_left()
        eta = "" if left is None else f"  {_duration(left)} left"
        return f"tensor {self.done_tensors}/{self.tensors}  {size(self.rate)}/s{eta}"


def size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"

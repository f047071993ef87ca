"""A progress bar over bytes written, showing tensors done and throughput."""

from __future__ import annotations

from tqdm import tqdm


class Bar:
    def __init__(self, total_bytes: int, tensors: int, disable: bool = False):
        self.tensors, self.done, self.last = tensors, 0, None
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="merge",
                        disable=disable, dynamic_ncols=True)

    def update(self, name: str, nbytes: int) -> None:
        if name != self.last:
            self.done += 1
            self.last = name
            self.bar.set_postfix_str(f"tensor {self.done}/{self.tensors}", refresh=False)
        self.bar.update(nbytes)

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

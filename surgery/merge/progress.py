"""A progress bar over bytes written, showing tensors done and throughput."""

from __future__ import annotations

from tqdm import tqdm


class Bar:
    def __init__(self, total_bytes: int, tensors: int, disable: bool = False, desc: str = "merge"):
        self.total, self.tensors, self.done, self.last, self.disable = total_bytes, tensors, 0, None, disable
        self.desc = desc
        self.bar: tqdm | None = None  # opened on the first block, so early errors print no empty bar

    def update(self, name: str, nbytes: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, unit="B", unit_scale=True, unit_divisor=1024, desc=self.desc,
                            disable=self.disable, dynamic_ncols=True)
        if name != self.last:
            self.done += 1
            self.last = name
            self.bar.set_postfix_str(f"tensor {self.done}/{self.tensors}", refresh=False)
        self.bar.update(nbytes)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

"""What the training benchmarks (bench/train.py, bench/train_preference.py) share: starting a side in
a fresh child process and reading back its per-step report, and, inside the child, the same torch
thread count on both sides, its resident size and the report it writes.

The runner side imports no torch: a child's ru_maxrss starts from the parent's resident size at fork.
Measuring the child itself (os.wait4 rusage, the /proc samplers, other work from /proc/stat) is
bench/run.py's `measure`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess

from run import PYTHON, Measured, measure

# ---- inside a child ------------------------------------------------------------------------------

def start_torch(threads: int):
    """Common start of a side: the same number of torch threads on both; returns torch."""
    import torch

    torch.set_num_threads(threads)
    return torch


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def write_report(path: str, cfg: dict, steps: list[dict], extra: dict) -> None:
    with open(path, "w") as f:
        json.dump({"cfg": cfg, "steps": steps, **extra, "maxrss_self_kib": maxrss_kib()}, f)


# ---- the runner ----------------------------------------------------------------------------------

def run_child(script: str, side: str, cfg: dict, report: str, log: str, threads: int) -> tuple[Measured, dict | None]:
    """`python SCRIPT SIDE CFG REPORT` in a fresh process with `threads` BLAS/OpenMP threads; the
    child's measurements and the report it wrote (None if it failed)."""
    if os.path.exists(report):
        os.remove(report)
    os.environ.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})  # measure() passes them on
    m = measure([PYTHON, script, side, json.dumps(cfg), report], log)
    if m.exit_code or not os.path.exists(report):
        return m, None
    with open(report) as f:
        return m, json.load(f)


def package_versions(packages: tuple[str, ...]) -> dict:
    """Installed versions of `packages` in the venv, and Python's (read in a child: no imports here)."""
    code = ("import importlib.metadata as m, json, sys; "
            f"print(json.dumps({{p: m.version(p) for p in {packages!r}}} | {{'python': sys.version.split()[0]}}))")
    return json.loads(subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout)

"""Benchmark `make demo`: the wall and CPU time of `surgery world DIR --specs merges` from an empty
folder (every stage built), then again (every stage reused), then after one expert's weights file is
truncated (that expert, and what reads it, rebuilt), each in a fresh child process, with the load
average beside each figure.

    .venv/bin/python bench/demo.py                  # the demo's defaults: a few minutes on 2 idle cores
    .venv/bin/python bench/demo.py --quick          # toy steps and 4 test rows: under a minute idle

The second run is the peer of the first: their ratio is what the stages' reuse saves.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args: list[str], env: dict) -> dict:
    """One child run of `surgery world ...`: wall seconds, CPU seconds, the load average before it, its last line."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "surgery"), "world", *args], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"surgery world failed ({done.returncode}):\n{done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"wall_s": round(wall, 1), "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime
                                                     - before.ru_stime, 1),
            "load_before": round(load, 2), "rebuilt": [line for line in lines if not line.startswith(("reused", " "))
                                                       and "damaged" in line], "stdout": lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy steps (base 20, experts 10) and 4 test rows")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--out", help="demo folder (default: a temporary one, removed after)")
    opts = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = opts.out or os.path.join(tmp, "demo")
        args = [folder, "--specs", "merges"] + (["--base-steps", "20", "--expert-steps", "10", "--rows", "4"]
                                               if opts.quick else [])
        first, second = measure(args, env), measure(args, env)
        weights = glob.glob(os.path.join(folder, "models", "runs", "reverse", "final", "*.safetensors"))[0]
        os.truncate(weights, 1000)
        damaged = measure(args, env)
    table = [line for line in first["stdout"] if not line.startswith(("building", "reused", "resuming", "warning"))]
    print("\n".join(table))
    for name, run in (("first (every stage built)", first), ("second (every stage reused)", second),
                      ("after truncating models/reverse", damaged)):
        print(f"{name:<34} wall {run['wall_s']:>7.1f} s  cpu {run['cpu_s']:>7.1f} s  load before {run['load_before']}")
    print(f"second / first: {second['wall_s'] / first['wall_s']:.3f}; damaged: {damaged['rebuilt']}")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "demo.json"), "w") as f:
        json.dump({"quick": opts.quick, "threads": opts.threads, "first": first, "second": second,
                   "damaged": damaged}, f, indent=1)


if __name__ == "__main__":
    main()

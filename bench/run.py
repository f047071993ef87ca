"""Benchmark surgery against mergekit on the same specs: wall time, CPU time and peak RSS of each
engine's CLI run in a fresh child process, beside the I/O floor (reading a merge's inputs and
writing its output's bytes, nothing else).

The inputs are Qwen2-shaped bf16 models (about 790M parameters each at full scale) built here,
deterministically, from seeded noise: a base and fine-tunes (base + small noise), dense ones (every
entry moved) and sparse ones (a share of the entries moved, or whole tensors left as they were), run
in sets of three. See bench/README.md for the targets and the last figures.

    .venv/bin/python bench/run.py                   # full scale: ~1.6 GB per model, dense inputs
    .venv/bin/python bench/run.py --inputs sparse   # the same methods on sparse task vectors
    .venv/bin/python bench/run.py --quick           # 2 layers, vocab 16384: ~240 MB per model

This process stays small on purpose (no torch import): on Linux a child's ru_maxrss starts from the
parent's resident size at fork/vfork time, so building models and comparing outputs run in child
processes too (`run.py build|floor|compare ...`, internal).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(ROOT, ".venv", "bin")
PYTHON = os.path.join(BIN, "python")
RESULTS = os.path.join(HERE, "results")
MODELS = os.path.join(HERE, "models")
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp", "nuslerp", "karcher", "sce")
SPEED_TARGET = {"ties": 8, "dare_ties": 8, "nuslerp": 5, "karcher": 5, "sce": 5}  # times faster than mergekit
FLOOR_TARGET = 4     # every method: surgery's wall time at most this many I/O floors of its own inputs
LINEAR_FLOOR = 1.5   # linear: at most this many
GB = 1e9
READ_CHUNK = 64 * 1024**2


# ---- the models ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """A Qwen2-like layout (Qwen2-1.5B's widths, fewer layers): tied embeddings, biased q/k/v."""

    vocab: int = 151936
    hidden: int = 1536
    intermediate: int = 8960
    layers: int = 12
    heads: int = 12
    kv_heads: int = 2

    @property
    def tag(self) -> str:
        return f"qwen2-v{self.vocab}-h{self.hidden}-i{self.intermediate}-l{self.layers}"

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every stored tensor, in the order HF writes them."""
        h, kv = self.hidden, self.hidden // self.heads * self.kv_heads
        out = [("model.embed_tokens.weight", (self.vocab, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                    (p + "mlp.gate_proj.weight", (self.intermediate, h)),
                    (p + "mlp.up_proj.weight", (self.intermediate, h)),
                    (p + "mlp.down_proj.weight", (h, self.intermediate)),
                    (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.q_proj.bias", (h,)),
                    (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.k_proj.bias", (kv,)),
                    (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.v_proj.bias", (kv,)),
                    (p + "self_attn.o_proj.weight", (h, h))]
        return out + [("model.norm.weight", (h,))]

    @property
    def params(self) -> int:
        return sum(_numel(s) for _, s in self.tensors())

    def config(self) -> dict:
        return {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": self.vocab,
            "hidden_size": self.hidden, "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "hidden_act": "silu",
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
            "bos_token_id": 151643, "eos_token_id": 151643,
        }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class Tune:
    """How a fine-tune differs from the base: seeded noise added to a share of its entries (the others
    keep the base's bytes, so their task vector is exactly 0), or to some tensors only."""

    key: str              # seed key of its noise
    share: float = 1.0    # probability that an entry is moved
    frozen: bool = False  # the embedding, the norms and the first half of the layers are the base's


TUNES = {t.key: t for t in (Tune("ft1"), Tune("ft2"), Tune("ft3"), Tune("s10", 0.1), Tune("s30", 0.3),
                            Tune("s80", 0.8), Tune("frozen", frozen=True))}
# named sets of three fine-tunes; --inputs also takes fine-tunes joined by "+" (e.g. s30, or s10+ft1)
INPUT_SETS = {"dense": ("ft1", "ft2", "ft3"), "sparse": ("s10", "s30", "s80"), "frozen": ("frozen", "s30", "ft1")}


def input_set(name: str) -> tuple[str, ...]:
    tunes = INPUT_SETS.get(name) or tuple(name.split("+"))
    unknown = [t for t in tunes if t not in TUNES]
    if unknown:
        sys.exit(f"error: --inputs {name!r}: unknown fine-tune(s) {unknown}; sets are {', '.join(INPUT_SETS)}, "
                 f"fine-tunes {', '.join(TUNES)}")
    return tunes


def model_dirs(shape: Shape, tunes: list[str] = ()) -> dict[str, str]:
    root = os.path.join(MODELS, shape.tag)
    return {name: os.path.join(root, name) for name in ("base", *tunes)}


def is_built(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, ".complete"))


def weight_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(f) for f in weight_files(folder))


# ---- worker: build one model (child process; imports torch) -------------------------------------

ROWS_ELEMS = 1 << 24   # generate 16M elements at a time: the builder's working set stays ~200 MB
STD = 0.02             # init std of every matrix and bias; norms are 1 + STD * N(0, 1)


def _gaussian(key: str, n: int):
    import torch

    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def _uniform(key: str, n: int):
    import torch

    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def _frozen(name: str, layers: int) -> bool:
    """Whether a `frozen` fine-tune left tensor `name` as the base's."""
    if name.endswith("norm.weight") or "embed_tokens" in name:
        return True
    return name.startswith("model.layers.") and int(name.split(".")[2]) < layers // 2


def _tensor(name: str, shape: tuple[int, ...], tune: Tune | None, noise: float, layers: int):
    """The bf16 tensor `name` of the base (tune None) or of a fine-tune: base + noise * scale * N(0, 1) on
    the entries and tensors the tune moves."""
    import torch

    out = torch.empty(shape, dtype=torch.bfloat16)
    flat = out.view(-1)
    mean = 1.0 if name.endswith("norm.weight") else 0.0
    for c, start in enumerate(range(0, flat.numel(), ROWS_ELEMS)):
        n = min(ROWS_ELEMS, flat.numel() - start)
        base = (mean + STD * _gaussian(f"{name}/{c}/base", n)).to(torch.bfloat16)
        if tune is not None and not (tune.frozen and _frozen(name, layers)):
            # a fine-tune moves each weight by noise x its tensor's scale: task vectors are small
            step = noise * (STD + mean) * _gaussian(f"{name}/{c}/{tune.key}", n)
            if tune.share < 1:  # the other entries keep the base's bytes: their task vector is exactly 0
                step *= _uniform(f"{name}/{c}/{tune.key}/moved", n) < tune.share
            base = (base.float() + step).to(torch.bfloat16)
        flat[start:start + n] = base
    return out


def build_model(folder: str, shape: Shape, tune: Tune | None, noise: float, shard_bytes: int) -> None:
    """Write a HF model folder shard by shard (only one shard's tensors in memory), then mark it complete."""
    from safetensors.torch import save_file

    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    groups = _shard_groups(shape.tensors(), shard_bytes)
    weight_map = {}
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: _tensor(n, s, tune, noise, shape.layers) for n, s in group}
        save_file(tensors, os.path.join(tmp, file), {"format": "pt"})
        weight_map.update({n: file for n, _ in group})
    index = {"metadata": {"total_size": shape.params * 2}, "weight_map": weight_map}
    _write_json(os.path.join(tmp, "model.safetensors.index.json"), index)
    _write_json(os.path.join(tmp, "config.json"), shape.config())
    made = {"shape": asdict(shape), "tune": None if tune is None else asdict(tune), "noise": noise}
    _write_json(os.path.join(tmp, ".complete"), made)
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)


def _shard_groups(tensors: list, max_bytes: int) -> list[list]:
    groups, size = [[]], 0
    for name, shape in tensors:
        n = _numel(shape) * 2
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += n
    return groups


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def worker_build(args: list[str]) -> None:
    folder, shape_json, tune, noise, shard_bytes = args
    build_model(folder, Shape(**json.loads(shape_json)), TUNES.get(tune), float(noise), int(shard_bytes))


# ---- worker: the I/O floor (child process; no torch) --------------------------------------------

def worker_floor(args: list[str]) -> None:
    """Read every input file with large buffered reads, then write `nbytes` to `out`: a merge's bare I/O."""
    out, nbytes, *inputs = args
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    for path in inputs:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    left = int(nbytes)
    with open(out, "wb", buffering=0) as f:
        while left:
            left -= f.write(view[:min(left, len(buf))])


# ---- worker: compare two outputs (child process; imports torch) ---------------------------------

def worker_compare(args: list[str]) -> None:
    """Print JSON: the two outputs' tensor sets, and for a few tensors the float32 differences."""
    a, b, *names = args
    ta, tb = _tensor_files(a), _tensor_files(b)
    report = {"only_in_a": sorted(set(ta) - set(tb)), "only_in_b": sorted(set(tb) - set(ta)), "tensors": {}}
    for name in names:
        if name in ta and name in tb:
            report["tensors"][name] = _diff(_load(ta[name], name), _load(tb[name], name))
    print(json.dumps(report))


def _tensor_files(folder: str) -> dict[str, str]:
    from safetensors import safe_open

    out = {}
    for file in weight_files(folder):
        with safe_open(file, "pt") as f:
            out.update({k: file for k in f.keys()})
    return out


def _load(file: str, name: str, max_rows: int = 4096):
    from safetensors import safe_open

    with safe_open(file, "pt") as f:
        sl = f.get_slice(name)
        return sl[:max_rows] if len(sl.get_shape()) > 1 else sl[:]  # the first rows of the embedding suffice


def _diff(x, y) -> dict:
    import torch

    if x.shape != y.shape:
        return {"error": f"shapes differ: {list(x.shape)} vs {list(y.shape)}"}
    d = (x.float() - y.float()).abs()
    scale = float(x.float().abs().max())
    return {"dtype_a": str(x.dtype).removeprefix("torch."), "dtype_b": str(y.dtype).removeprefix("torch."),
            "numel": x.numel(), "max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "max_abs_value": scale, "max_rel_to_max": float(d.max()) / scale if scale else 0.0,
            "frac_bitwise_equal": float((x == y).float().mean()) if x.dtype == y.dtype else 0.0,
            "any_nonfinite": bool((~torch.isfinite(x.float())).any() or (~torch.isfinite(y.float())).any())}


WORKERS = {"build": worker_build, "floor": worker_floor, "compare": worker_compare}


# ---- measuring a child --------------------------------------------------------------------------

@dataclass
class Measured:
    cmd: list[str]
    exit_code: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int          # ru_maxrss of the child: anonymous plus file-backed (mmap) pages
    peak_anon_kib: int       # sampled every 50 ms from /proc/PID/status RssAnon
    peak_file_kib: int       # likewise RssFile (mapped file pages)
    other_cpu_s: float       # CPU time the rest of the machine used meanwhile (load from other work)
    steal_s: float           # CPU time the hypervisor took from this VM meanwhile
    log: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


class Sampler(threading.Thread):
    """Peaks of RssAnon and RssFile of one process, read from /proc while it runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.path, self.anon, self.file, self.done = f"/proc/{pid}/status", 0, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with open(self.path) as f:
                    fields = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssFile")))
            except (OSError, ValueError):
                return
            self.anon = max(self.anon, int(fields.get("RssAnon", "0 kB").split()[0]))
            self.file = max(self.file, int(fields.get("RssFile", "0 kB").split()[0]))
            self.done.wait(0.05)


def measure(cmd: list[str], log: str) -> Measured:
    """Run `cmd` in a fresh process; wall time, CPU times and peak RSS of that child alone (os.wait4)."""
    with open(log, "w") as out:
        busy0, steal0 = cpu_busy()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)
        sampler = Sampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        busy1, steal1 = cpu_busy()
    sampler.done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen not to wait again
    other = max(0.0, busy1 - busy0 - usage.ru_utime - usage.ru_stime)
    return Measured(cmd, proc.returncode, wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss,
                    sampler.anon, sampler.file, other, steal1 - steal0, os.path.relpath(log, ROOT))


def cpu_busy() -> tuple[float, float]:
    """Seconds of CPU the whole machine has been busy since boot, and of those stolen by the hypervisor."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / hz, steal / hz


def child_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HOME", os.path.join(ROOT, ".hf_home"))
    return env


def warm(files: list[str]) -> float:
    """Read `files` once so that every timed run starts with them in the page cache; returns seconds."""
    start, buf = time.perf_counter(), bytearray(8 * 1024**2)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def settle() -> None:
    """Flush dirty pages between runs so that one run's writeback does not land in the next one's time."""
    os.sync()
    time.sleep(1)


# ---- the specs ----------------------------------------------------------------------------------

def _weighted(base: str, fts: list[str], shared: dict, per_model: dict) -> dict:
    return {"base_model": base, **({"parameters": shared} if shared else {}),
            "models": [{"model": m, "parameters": dict(per_model)} for m in fts]}


SPECS = {  # method -> (base, fine-tunes) -> the spec's body; None where the set has too few fine-tunes
    "linear": lambda base, fts: {"models": [{"model": m, "parameters": {"weight": 1.0}} for m in fts]},
    "task_arithmetic": lambda base, fts: _weighted(base, fts, {}, {"weight": 1.0}),
    "ties": lambda base, fts: _weighted(base, fts, {"normalize": True}, {"weight": 1.0, "density": 0.5}),
    "dare_ties": lambda base, fts: _weighted(base, fts, {"normalize": True}, {"weight": 1.0, "density": 0.5}),
    "slerp": lambda base, fts: {"base_model": base, "parameters": {"t": 0.5},
                                "models": [{"model": base}, {"model": fts[0]}]},
    # task vectors of two fine-tunes, one angle per tensor (the default)
    "nuslerp": lambda base, fts: None if len(fts) < 2 else {
        "base_model": base, "models": [{"model": fts[0], "parameters": {"weight": 0.6}},
                                       {"model": fts[1], "parameters": {"weight": 0.4}}]},
    "karcher": lambda base, fts: None if len(fts) < 2 else {"models": [{"model": m} for m in fts]},  # 10 steps
    "sce": lambda base, fts: {"base_model": base, "parameters": {"select_topk": 0.5},
                              "models": [{"model": m} for m in fts]},
}


def spec(method: str, base: str, fts: list[str]) -> dict | None:
    """The spec both engines run: the same YAML a user would write, dtype bfloat16."""
    body = SPECS[method](base, fts)
    return None if body is None else {"merge_method": method, **body, "dtype": "bfloat16"}


def spec_inputs(s: dict) -> list[str]:
    names = ([s["base_model"]] if "base_model" in s else []) + [m["model"] for m in s["models"]]
    return list(dict.fromkeys(names))


def write_spec(name: str, s: dict, folder: str) -> str:
    import yaml  # pyyaml comes with both engines; a small import

    path = os.path.join(folder, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(s, f, sort_keys=False)
    return path


def engine_cmd(engine: str, spec_path: str, out: str, args: argparse.Namespace) -> list[str]:
    if engine == "surgery":
        return [os.path.join(BIN, "surgery"), "merge", spec_path, out, "--block-size", args.block_size, "--quiet"]
    # --no-copy-tokenizer: the bench models have no tokenizer; everything else is mergekit's default
    return [os.path.join(BIN, "mergekit-yaml"), spec_path, out, "--no-copy-tokenizer", "--quiet", "--random-seed", "0"]


# ---- the run ------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark surgery against mergekit (see bench/README.md).")
    p.add_argument("--quick", action="store_true", help="small models: --layers 2 --vocab 16384")
    p.add_argument("--layers", type=int, help="decoder layers (default 12)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default 151936)")
    p.add_argument("--noise", type=float, default=0.05, help="fine-tune noise, relative to each tensor's scale")
    p.add_argument("--shard-mb", type=int, default=1024, help="input model shard size in MiB")
    p.add_argument("--inputs", default="dense", help=f"comma-separated input sets ({', '.join(INPUT_SETS)}), or "
                   f"fine-tunes joined by '+' (of {', '.join(TUNES)}): each method runs on each")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--engines", default="mergekit,surgery", help="comma-separated subset of mergekit,surgery")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per engine and method (alternating order); the fastest is reported")
    p.add_argument("--block-size", default="16M", help="surgery's --block-size (its default)")
    p.add_argument("--tag", default="latest", help="results are saved as bench/results/TAG.json and TAG.md")
    return p.parse_args(argv)


def shape_of(args: argparse.Namespace) -> Shape:
    layers = args.layers or (2 if args.quick else 12)
    vocab = args.vocab or (16384 if args.quick else 151936)
    return Shape(vocab=vocab, layers=layers)


def build_all(shape: Shape, tunes: list[str], args: argparse.Namespace) -> dict[str, str]:
    dirs = model_dirs(shape, tunes)
    missing = [n for n, d in dirs.items() if not is_built(d)]
    need = (len(missing) + 2) * shape.params * 2 + 2 * GB  # missing models + two outputs side by side
    free = shutil.disk_usage(HERE).free
    if need > free:
        sys.exit(f"error: this needs about {need / GB:.1f} GB free on {HERE}'s disk, {free / GB:.1f} GB are; "
                 "free space or pass --quick / --layers / --vocab")
    for name in missing:
        print(f"building {dirs[name]} ({shape.params / 1e6:.0f}M params, bf16)", flush=True)
        m = measure([PYTHON, __file__, "build", dirs[name], json.dumps(asdict(shape)), name, str(args.noise),
                     str(args.shard_mb * 1024**2)], os.path.join(RESULTS, "logs", f"build-{name}.log"))
        if m.exit_code:
            sys.exit(f"error: building {name} failed; see {m.log}")
        print(f"  {m.wall_s:.1f} s, peak RSS {m.maxrss_kib * 1024 / GB:.2f} GB", flush=True)
    return dirs


def load_now() -> dict:
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"uptime": up, "loadavg": os.getloadavg(), "time": datetime.datetime.now().isoformat(timespec="seconds")}


def io_floor(folders: list[str], nbytes: int, out_dir: str, logs: str, label: str) -> dict:
    """A merge's bare I/O: read its input folders' files, write one model's worth of bytes (`nbytes`)."""
    inputs = [f for d in folders for f in weight_files(d)]
    warm(inputs)
    settle()
    out = os.path.join(out_dir, "floor.bin")
    m = measure([PYTHON, __file__, "floor", out, str(nbytes), *inputs], os.path.join(logs, f"floor-{label}.log"))
    os.remove(out)
    settle()
    return {"read_bytes": sum(os.path.getsize(f) for f in inputs), "write_bytes": nbytes, **asdict(m), "cpu_s": m.cpu_s}


class Floors:
    """The I/O floor of each distinct list of input folders, measured three times when first needed and
    once more at the end (the first big write after a build runs several times slower): the fastest counts."""

    def __init__(self, nbytes: int, out_dir: str, logs: str):
        self.nbytes, self.out_dir, self.logs, self.runs = nbytes, out_dir, logs, {}

    def __call__(self, folders: list[str]) -> float:
        key = "+".join(os.path.basename(d) for d in folders)
        if key not in self.runs:
            self.runs[key] = [io_floor(folders, self.nbytes, self.out_dir, self.logs, f"{key}-{k}") for k in range(3)]
            print(f"I/O floor of {key}: {', '.join(format(f['wall_s'], '.1f') for f in self.runs[key])} s", flush=True)
        return min(f["wall_s"] for f in self.runs[key])

    def again(self, dirs: dict[str, str]) -> dict:
        for key, runs in self.runs.items():
            runs.append(io_floor([dirs[n] for n in key.split("+")], self.nbytes, self.out_dir, self.logs, f"{key}-end"))
            print(f"I/O floor of {key} (again): {runs[-1]['wall_s']:.1f} s", flush=True)
        return {key: {"runs": runs, "wall_s": min(f["wall_s"] for f in runs)} for key, runs in self.runs.items()}


def import_times(logs: str) -> dict:
    """Seconds each engine spends starting up (interpreter plus imports), part of every wall time below."""
    out = {}
    for engine, module in (("surgery", "surgery.merge.engine"), ("mergekit", "mergekit.merge")):
        m = measure([PYTHON, "-c", f"import {module}"], os.path.join(logs, f"import-{engine}.log"))
        out[engine] = round(m.wall_s, 2)
    return out


def run_method(name: str, spec_path: str, inputs: list[str], order: list[str], out_dir: str, logs: str,
               args: argparse.Namespace, rep: int) -> dict[str, Measured]:
    runs = {}
    for engine in order:
        out = os.path.join(out_dir, f"{name}-{engine}")
        shutil.rmtree(out, ignore_errors=True)
        warm(inputs)
        settle()
        print(f"  {engine:8s} {name:24s} ...", end=" ", flush=True)
        m = measure(engine_cmd(engine, spec_path, out, args), os.path.join(logs, f"{name}-{engine}-{rep}.log"))
        print(f"{m.wall_s:7.1f} s wall, {m.cpu_s:7.1f} s CPU, peak RSS {m.maxrss_kib * 1024 / GB:5.2f} GB, "
              f"other work {m.other_cpu_s:5.1f} CPU s"
              + ("" if m.exit_code == 0 else f"  FAILED (exit {m.exit_code}, see {m.log})"), flush=True)
        runs[engine] = m
    return runs


def compare_outputs(name: str, out_dir: str, shape: Shape, logs: str) -> dict:
    a, b = (os.path.join(out_dir, f"{name}-{e}") for e in ("mergekit", "surgery"))
    if not (os.path.isdir(a) and os.path.isdir(b)):
        return {"error": "an output is missing"}
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             f"model.layers.{shape.layers // 2}.mlp.down_proj.weight",
             f"model.layers.{shape.layers - 1}.self_attn.v_proj.bias", "model.norm.weight"]
    done = subprocess.run([PYTHON, __file__, "compare", a, b, *names], capture_output=True, text=True, env=child_env())
    if done.returncode:
        with open(os.path.join(logs, f"compare-{name}.log"), "w") as f:
            f.write(done.stdout + done.stderr)
        return {"error": f"compare failed; see bench/results/logs/compare-{name}.log"}
    return json.loads(done.stdout)


def clean_outputs(name: str, out_dir: str) -> None:
    for engine in ("mergekit", "surgery"):
        shutil.rmtree(os.path.join(out_dir, f"{name}-{engine}"), ignore_errors=True)
    settle()


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    engines = [e for e in args.engines.split(",") if e]
    unknown = [m for m in methods if m not in SPECS]
    if unknown:
        sys.exit(f"error: --methods: unknown method(s) {unknown}; choose among {', '.join(METHODS)}")
    sets = {name: input_set(name) for name in args.inputs.split(",") if name}
    logs, out_dir, spec_dir = (os.path.join(RESULTS, d) for d in ("logs", "out", "specs"))
    for d in (logs, out_dir, spec_dir):
        os.makedirs(d, exist_ok=True)
    shape = shape_of(args)
    results = {"started": load_now(), "machine": machine(), "versions": versions(), "shape": asdict(shape),
               "params": shape.params, "model_bytes": shape.params * 2, "args": vars(args), "sets": sets}
    print(f"load at start: {results['started']['uptime']}", flush=True)
    dirs = build_all(shape, list(dict.fromkeys(t for tunes in sets.values() for t in tunes)), args)
    results["import_s"] = import_times(logs)
    results["before_timing"] = load_now()
    floors, results["runs"], i = Floors(folder_bytes(dirs["base"]), out_dir, logs), [], 0
    for set_name, tunes in sets.items():
        for method in methods:
            s = spec(method, dirs["base"], [dirs[t] for t in tunes])
            if s is None:
                print(f"  {method} skipped on {set_name}: it needs more fine-tunes", flush=True)
                continue
            name = f"{set_name.replace('+', '_')}-{method}"
            path, folders = write_spec(name, s, spec_dir), spec_inputs(s)
            floor, inputs = floors(folders), [f for d in folders for f in weight_files(d)]
            samples: dict[str, list[Measured]] = {e: [] for e in engines}
            compared = None
            for rep in range(args.repeat):
                order = engines if (i + rep) % 2 == 0 else engines[::-1]  # alternate who runs first
                for engine, m in run_method(name, path, inputs, order, out_dir, logs, args, rep).items():
                    samples[engine].append(m)
                if compared is None and len(engines) == 2:
                    compared = compare_outputs(name, out_dir, shape, logs)
                clean_outputs(name, out_dir)
            i += 1
            results["runs"].append({"inputs": set_name, "method": method, "floor_key": "+".join(
                os.path.basename(d) for d in folders), "floor_s": floor, **summarize(samples, compared, path)})
    results["io_floors"] = floors.again(dirs)
    for r in results["runs"]:  # the end run may be the fastest
        r["floor_s"] = results["io_floors"][r["floor_key"]]["wall_s"]
    results["finished"] = load_now()
    results["runner_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    save_results(results, markdown(results), args.tag)


def summarize(samples: dict[str, list[Measured]], compared: dict | None, spec_path: str) -> dict:
    out: dict = {"spec": os.path.relpath(spec_path, ROOT), "compare": compared}
    for engine, runs in samples.items():
        ok = [r for r in runs if r.exit_code == 0] or runs
        best = min(ok, key=lambda r: r.wall_s)
        out[engine] = {**asdict(best), "cpu_s": best.cpu_s, "peak_rss_gb": best.maxrss_kib * 1024 / GB,
                       "all_wall_s": [round(r.wall_s, 2) for r in runs],
                       "all_maxrss_kib": [r.maxrss_kib for r in runs]}
    if "mergekit" in out and "surgery" in out:
        mk, sg = out["mergekit"], out["surgery"]
        out["speedup"] = mk["wall_s"] / sg["wall_s"]
        out["rss_ratio"] = sg["maxrss_kib"] / mk["maxrss_kib"]
    return out


def machine() -> dict:
    mem = next(line for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_gb": int(mem.split()[1]) * 1024 / GB, "kernel": platform.release()}


def versions() -> dict:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({p: m.version(p) for p in ('mergekit', 'surgery', 'torch', 'safetensors')} | "
            "{'python': sys.version.split()[0]}))")
    return json.loads(subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout)


# ---- the report ---------------------------------------------------------------------------------

def verdicts(r: dict) -> list[str]:
    """The targets (bench/README.md) a run meets or misses."""
    sg, method = r.get("surgery"), r["method"]
    if sg is None or sg["exit_code"] or ("mergekit" in r and r["mergekit"]["exit_code"]):
        return ["a run failed"]
    limit = LINEAR_FLOOR if method == "linear" else FLOOR_TARGET
    out = [f"floor {'ok' if sg['wall_s'] <= limit * r['floor_s'] else 'MISSED'}"]
    if "speedup" in r:
        out.insert(0, f"RSS {'ok' if r['rss_ratio'] <= 0.25 else 'MISSED'}")
        if method in SPEED_TARGET:
            out.append(f"speed {'ok' if r['speedup'] >= SPEED_TARGET[method] else 'MISSED'}")
    return out


def markdown(results: dict) -> str:
    s = results["shape"]
    sets = "; ".join(f"{k}: {' '.join(v)}" for k, v in results["sets"].items())
    lines = [f"# surgery vs mergekit {results['versions']['mergekit']} — {results['started']['time']}", "",
             f"Models: Qwen2-like, vocab {s['vocab']}, hidden {s['hidden']}, intermediate {s['intermediate']}, "
             f"{s['layers']} layers, {results['params'] / 1e6:.0f}M params, "
             f"{results['model_bytes'] / GB:.2f} GB bf16 each. Inputs: {sets}. "
             f"Machine: {results['machine']['cpus']} CPUs ({results['machine']['cpu']}), "
             f"{results['machine']['mem_gb']:.0f} GB RAM. "
             f"surgery {results['versions']['surgery']} with --block-size {results['args']['block_size']}; "
             f"torch {results['versions']['torch']}; best of {results['args']['repeat']} run(s) per engine.",
             f"Load at start: `{results['started']['uptime']}`; before the timed runs (after any model build): "
             f"`{results['before_timing']['uptime']}`; at end: `{results['finished']['uptime']}` (the end figure "
             "counts the benchmark's own runs). CPU seconds used by other work during each run (from /proc/stat, "
             f"less the child's own): {other_work(results)}.", "",
             "| inputs | method | mergekit wall s | surgery wall s | speed-up (mk/s) | I/O floor s | surgery / floor "
             "| mergekit CPU s | surgery CPU s | mergekit peak RSS GB | surgery peak RSS GB | RSS ratio (s/mk) "
             "| targets |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["runs"]:
        mk, sg = r.get("mergekit", {}), r.get("surgery", {})
        over = {"over": sg["wall_s"] / r["floor_s"]} if sg else {}
        cells = [_cell(mk, "wall_s", ".1f"), _cell(sg, "wall_s", ".1f"), _cell(r, "speedup", ".2f", "x"),
                 _cell(r, "floor_s", ".1f"), _cell(over, "over", ".1f", "x"), _cell(mk, "cpu_s", ".1f"),
                 _cell(sg, "cpu_s", ".1f"), _cell(mk, "peak_rss_gb", ".2f"), _cell(sg, "peak_rss_gb", ".2f"),
                 _cell(r, "rss_ratio", ".2f"), ", ".join(verdicts(r))]
        lines.append(f"| {r['inputs']} | {r['method']} | " + " | ".join(cells) + " |")
    lines += ["", "I/O floors (read the inputs, write one model's bytes; the fastest run counts):", ""]
    for key, f in results["io_floors"].items():
        first = f["runs"][0]
        lines.append(f"- {key}: read {first['read_bytes'] / GB:.2f} GB, write {first['write_bytes'] / GB:.2f} GB: "
                     f"{f['wall_s']:.1f} s (runs: {', '.join(format(x['wall_s'], '.1f') for x in f['runs'])})")
    lines += ["", "Start-up (interpreter + imports), inside every wall time above: "
              f"surgery {results['import_s']['surgery']} s, mergekit {results['import_s']['mergekit']} s.", "",
              "Peak RSS is the child's ru_maxrss (anonymous + file-backed pages). Sampled peaks (GB), anon / file:", ""]
    for r in results["runs"]:
        parts = [f"{e} {r[e]['peak_anon_kib'] * 1024 / GB:.2f} / {r[e]['peak_file_kib'] * 1024 / GB:.2f}"
                 for e in ("mergekit", "surgery") if e in r]
        lines.append(f"- {r['inputs']} {r['method']}: " + "; ".join(parts))
    lines += ["", "Outputs compared (mergekit vs surgery, float32 differences on a few tensors; mergekit computes in "
              "bf16 with `dtype: bfloat16`, surgery in float32, so ~1% differences are expected; DARE's random "
              "masks differ by design):", ""]
    lines += [line for r in results["runs"]
              for line in _compare_lines(f"{r['inputs']} {r['method']}", r.get("compare"))]
    return "\n".join(lines) + "\n"


def _cell(d: dict, key: str, fmt: str, suffix: str = "") -> str:
    return format(d[key], fmt) + suffix if key in d else "—"


def other_work(results: dict) -> str:
    runs = [(f"{r['inputs']} {r['method']} {e}", r[e]) for r in results["runs"] for e in ("mergekit", "surgery")
            if e in r]
    worst = max(runs, key=lambda x: x[1]["other_cpu_s"], default=None)
    total = sum(r["other_cpu_s"] for _, r in runs)
    steal = sum(r["steal_s"] for _, r in runs)
    if worst is None:
        return "no runs"
    return (f"{total:.1f} s in all ({steal:.1f} s of it hypervisor steal), at most {worst[1]['other_cpu_s']:.1f} s "
            f"during {worst[0]}")


def _compare_lines(method: str, c: dict | None) -> list[str]:
    if not c:
        return []
    if "error" in c:
        return [f"- {method}: {c['error']}"]
    out = [f"- {method}: tensors only in mergekit's output {c['only_in_a'] or 'none'}, "
           f"only in surgery's {c['only_in_b'] or 'none'}"]
    for name, d in c["tensors"].items():
        out.append(f"  - `{name}`: " + (d["error"] if "error" in d else
                   f"max |diff| {d['max_abs_diff']:.3g} (max |value| {d['max_abs_value']:.3g}, "
                   f"{100 * d['max_rel_to_max']:.2f}% of it), mean |diff| {d['mean_abs_diff']:.3g}, "
                   f"{100 * d['frac_bitwise_equal']:.1f}% bitwise equal, dtypes {d['dtype_a']}/{d['dtype_b']}"
                   + (", NON-FINITE values" if d["any_nonfinite"] else "")))
    return out


def save_results(results: dict, text: str, tag: str) -> None:
    """`bench/results/TAG.json` (everything) and `TAG.md` (the table `text`), which is also printed."""
    with open(os.path.join(RESULTS, f"{tag}.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(RESULTS, f"{tag}.md"), "w") as f:
        f.write(text)
    print("\n" + text)
    print(f"saved bench/results/{tag}.json and bench/results/{tag}.md")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in WORKERS:
        WORKERS[sys.argv[1]](sys.argv[2:])
    else:
        main(sys.argv[1:])

"""The engine's two pipelines: a method whose statistics passes are as heavy as its merge (TIES's exact
selection) runs them in a thread of their own, a few tensors ahead of the merge pass. The bytes are those
of the inline passes; an error or a cancel in either pipeline stops the merge with nothing written and no
thread left behind. Also the cheaper selection steps that came with it: a lower bound on the zeros, the
bin's low bits counted without gathering its members, and the top-k kept by `hardshrink`."""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest
import torch

from surgery.io.reader import ModelFolder
from surgery.merge import selection
from surgery.merge.engine import Cancelled, Options, run_merge
from surgery.merge.methods import REGISTRY
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec
from tests.surgery.test_mergekit_parity import load_all

BLOCK = 4096  # bytes: every tensor of the tiny models in several blocks


def spec(method: str, f: dict[str, str]) -> dict:
    params = {"weight": 0.6, "density": 0.4} | ({"gamma": 0.05} if "breadcrumbs" in method else {})
    return {"merge_method": method, "base_model": f["base"], "dtype": "float32",
            "models": [{"model": f[n], "parameters": params} for n in ("math", "code", "chat")]}


def merge(config: dict, out: str, **options) -> dict[str, torch.Tensor]:
    return load_all(run_merge(plan_merge(parse_spec(config), "spec"), out, Options(**options)))


def inline(monkeypatch, method: str) -> None:
    monkeypatch.setitem(REGISTRY, method, dataclasses.replace(REGISTRY[method], statistics_ahead=False))


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
@pytest.mark.parametrize("block_bytes", [BLOCK, None])
def test_statistics_ahead_changes_no_bit(method, block_bytes, llama, tmp_path, monkeypatch):
    assert REGISTRY[method].statistics_ahead
    options = {} if block_bytes is None else {"block_bytes": block_bytes}
    ahead = merge(spec(method, llama), str(tmp_path / "ahead"), **options)
    inline(monkeypatch, method)
    alone = merge(spec(method, llama), str(tmp_path / "inline"), **options)
    assert ahead.keys() == alone.keys()
    for name in alone:
        assert torch.equal(ahead[name].view(torch.int32), alone[name].view(torch.int32)), name


def test_statistics_run_in_their_own_thread_ahead_of_the_merge(llama, tmp_path, monkeypatch):
    """The first pass of every tensor runs in the statistics thread; the merge pass in the caller's."""
    where, real_high, real_merge = [], selection.histogram_and_zeros, REGISTRY["ties"].merge
    monkeypatch.setattr(selection, "histogram_and_zeros",
                        lambda x: where.append(("stats", threading.current_thread().name)) or real_high(x))
    def merging(block, stats):
        where.append(("merge", threading.current_thread().name))
        return real_merge(block, stats)

    monkeypatch.setitem(REGISTRY, "ties", dataclasses.replace(REGISTRY["ties"], merge=merging))
    merge(spec("ties", llama), str(tmp_path / "out"), block_bytes=BLOCK)
    stats = {name for kind, name in where if kind == "stats"}
    merging = {name for kind, name in where if kind == "merge"}
    assert stats and all(name.startswith("surgery-stats") for name in stats)
    assert merging == {threading.main_thread().name}


def settled(before: set[str]) -> set[str]:
    """The engine's threads still alive that were not before."""
    return {t.name for t in threading.enumerate() if t.name.startswith("surgery-")} - before


@pytest.mark.parametrize("fail_at", [1, 7])
def test_an_error_in_the_statistics_thread_stops_the_merge(fail_at, llama, tmp_path, monkeypatch):
    before = settled(set())
    calls, real = [], selection.histogram_and_zeros

    def failing(x):
        calls.append(1)
        if len(calls) == fail_at:
            raise ValueError("broken statistics")
        return real(x)

    monkeypatch.setattr(selection, "histogram_and_zeros", failing)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="broken statistics"):
        merge(spec("ties", llama), str(out), block_bytes=BLOCK)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p != "out"]  # no partial output
    assert settled(before) == set()


def test_a_cancel_stops_both_pipelines(llama, tmp_path):
    before = settled(set())
    cancel, written = threading.Event(), []

    def progress(name, nbytes):
        written.append(name)
        cancel.set()

    plan = plan_merge(parse_spec(spec("ties", llama)), "spec")
    with pytest.raises(Cancelled):
        run_merge(plan, str(tmp_path / "out"), Options(block_bytes=BLOCK), progress=progress, cancel=cancel)
    assert written and not (tmp_path / "out").exists()
    assert settled(before) == set()


def test_threads_reading_one_folder_share_its_files(llama):
    """Two prefetchers read the same inputs at once: each file is opened once, the bytes are right, and
    closing the folder closes every descriptor."""
    folder = ModelFolder(llama["base"])
    names = [n for n, info in folder.tensors.items() if info.rows > 1]
    expected = {n: folder.read(n).clone() for n in names}
    folder.close()
    fds_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    barrier, errors = threading.Barrier(8), []

    def read_all():
        barrier.wait()
        for n in names:
            if not torch.equal(folder.read(n, (0, folder.tensors[n].rows)), expected[n]):
                errors.append(n)

    threads = [threading.Thread(target=read_all) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert len(folder._fds) == len({folder.tensors[n].file for n in names})
    folder.close()
    if fds_before is not None:
        assert len(os.listdir("/proc/self/fd")) == fds_before


# ---- the selection steps -------------------------------------------------------------------------------

def test_zeros_are_counted_only_where_they_may_matter():
    """A block whose lowest bin holds under an eighth of it reports no zeros (a safe lower bound: the
    second pass then finds the value); one with more reports them exactly, -0 included."""
    x = torch.randn(8000, generator=torch.Generator().manual_seed(0))
    few = x.clone()
    few[:100] = 0.0
    _, zeros = selection.histogram_and_zeros(few)
    assert int(zeros) == 0
    many = x.clone()
    many[:1500] = 0.0
    many[1500:2000] = -0.0
    _, zeros = selection.histogram_and_zeros(many)
    assert int(zeros) == 2000


@pytest.mark.parametrize("hi_bin", [0, 1, "median", (1 << 15) - 1])
def test_low_histogram_counts_exactly_the_bins_members(hi_bin):
    """Against the definition (gather the members, count their low 16 bits), at the lowest bin (zeros and
    the smallest subnormals), the next, an ordinary one, and the top one (NaNs, beside infinities)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, generator=g)
    x[:2000] = torch.randn(2000, generator=g) * 1e-40  # subnormals, in bins 0 to 3
    x[2000:2100] = 0.0
    x[2100:2150] = -0.0
    x[2150:2155] = float("nan")
    x[2155:2160] = torch.tensor([0x7FFF1234], dtype=torch.int32).view(torch.float32)  # a NaN in the top bin
    x[2160:2170] = float("inf")
    x[2170:2180] = -float("inf")
    bits = x.abs().view(torch.int32)
    b = int((bits >> 16).median()) if hi_bin == "median" else hi_bin
    members = bits[(bits >> 16) == b]
    expected = torch.bincount(members & 0xFFFF, minlength=1 << 16)
    assert members.numel() > 0
    assert torch.equal(selection.low_histogram(x, b), expected)


def test_below_makes_hardshrink_keep_the_cut():
    """|x| > below(c) is |x| >= c for float32 x, at normal, subnormal and tiny cut-offs."""
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(4000, generator=g), torch.randn(4000, generator=g) * 1e-40])
    for cut in [float(v) for v in (x.abs()[:50:7])] + [1.401298464324817e-45]:
        kept = torch.nn.functional.hardshrink(x, selection.below(cut))
        assert torch.equal(kept, x * (x.abs() >= cut).float()), cut

"""DARE's masks in the engine: a tensor of several blocks is read twice (the L1 norms, then the merge),
and each mask is drawn once, in the first read, and kept packed for the second (`kept.Kept`, within a
budget of bytes). Masks are drawn by the reading thread while it is ahead of the merging one, else by the
merging thread, and so are the L1 sums: who makes them, and whether masks were kept, changes no byte of
the output."""

from __future__ import annotations

import collections
import threading

import pytest
import torch

from surgery.merge import engine
from surgery.merge.draws import CHUNK, Draws
from surgery.merge.engine import Options, run_merge
from surgery.merge.kept import Kept
from surgery.merge.methods import task_vectors as tv
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec
from tests.surgery.test_mergekit_parity import load_all

BLOCK = 4096  # bytes: every matrix of the tiny models in several blocks
DRAW = Draws._keep


@pytest.mark.parametrize("density", [0.5, 0.3, 1 / 300])  # the last draws 32-bit integers
@pytest.mark.parametrize("rows", [(0, 40), (3, 29), (17, 18)])
def test_a_kept_mask_is_the_mask_drawn_again(density, rows):
    shape = (40, CHUNK // 16 + 5)  # rows straddle chunks
    fresh = Draws(7, "w", shape, 2).keep(1, rows, density)
    kept = Kept(budget=1 << 30)
    first = Draws(7, "w", shape, 2, kept, final=False).keep(1, rows, density)
    assert kept.used == (fresh.numel() + 7) // 8  # a bit per entry
    second = Draws(7, "w", shape, 2, kept).keep(1, rows, density)
    assert kept.used == 0
    assert fresh.dtype == first.dtype == second.dtype == torch.uint8
    assert torch.equal(first, fresh) and torch.equal(second, fresh)
    assert 0 < int(fresh.sum()) < fresh.numel() or density < 0.01


def spec(f: dict[str, str]) -> dict:
    return {"merge_method": "dare_ties", "base_model": f["base"], "dtype": "float32", "seed": 3,
            "models": [{"model": f[n], "parameters": {"weight": 0.7, "density": d}}
                       for n, d in (("math", 0.5), ("code", 0.3), ("chat", 0.8))]}


def merged(f: dict[str, str], out: str, draws: collections.Counter, monkeypatch,
           block_bytes: int | None = BLOCK) -> dict[str, torch.Tensor]:
    """The merge's tensors; `draws` counts each (tensor, input, rows) mask drawn, by thread kind."""
    def counted(self, model, rows, density):
        draws[(self.name, model, rows, threading.current_thread().name.split("_")[0])] += 1
        return DRAW(self, model, rows, density)

    monkeypatch.setattr(Draws, "_keep", counted)
    plan = plan_merge(parse_spec(spec(f)), "spec")
    assert plan.method.random and plan.jobs[0].shared.rescale  # the L1 pass: a second read of each tensor
    options = Options() if block_bytes is None else Options(block_bytes=block_bytes)
    return load_all(run_merge(plan, out, options))


def per_mask(draws: collections.Counter) -> collections.Counter:
    totals = collections.Counter()
    for (name, model, rows, _), n in draws.items():
        totals[(name, model, rows)] += n
    return totals


def same_bytes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a)


def test_each_mask_is_drawn_once_and_kept_masks_change_no_byte(llama, tmp_path, monkeypatch):
    once, twice = collections.Counter(), collections.Counter()
    kept = merged(llama, str(tmp_path / "kept"), once, monkeypatch)
    monkeypatch.setattr(engine, "KEPT_BLOCKS", 0)  # no room: the merge pass draws every mask again
    redrawn = merged(llama, str(tmp_path / "redrawn"), twice, monkeypatch)
    assert same_bytes(kept, redrawn)
    several = {k for k, n in per_mask(twice).items() if n == 2}  # the masks of tensors of several blocks
    assert len(several) > 10 and set(per_mask(twice).values()) == {1, 2}
    assert set(per_mask(once).values()) == {1} and per_mask(once).keys() == per_mask(twice).keys()


@pytest.mark.parametrize("block_bytes", [BLOCK, None])  # None: one block per tensor, read once
def test_masks_and_l1_sums_are_made_by_whichever_thread_is_free(block_bytes, llama, tmp_path, monkeypatch):
    """While the reading thread is ahead it draws the masks and sums the L1 norms; when it is not, the
    merging thread does: the same bytes either way."""
    real_load, real_sums = engine._load, tv._l1_sums
    runs = {}
    for ahead in (True, False):
        monkeypatch.setattr(engine, "_load", lambda *a, ahead=ahead: real_load(*a[:6], lambda: ahead))
        summed = collections.Counter()
        def sums(kind, block, stats, i, summed=summed):
            summed[(block.name, block.rows, i, threading.current_thread().name.split("_")[0])] += 1
            return real_sums(kind, block, stats, i)

        monkeypatch.setattr(tv, "_l1_sums", sums)
        draws = collections.Counter()
        runs[ahead] = merged(llama, str(tmp_path / str(ahead)), draws, monkeypatch, block_bytes)
        where = {"surgery-read"} if ahead else {threading.main_thread().name}
        assert {thread for (*_, thread) in draws} == where and set(per_mask(draws).values()) == {1}
        assert {thread for (*_, thread) in summed} == where and set(summed.values()) == {1}  # once per block
        assert len(summed) >= len(draws)  # every block's sums, even where an input keeps all (no mask)
    assert same_bytes(runs[True], runs[False])

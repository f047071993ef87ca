"""Values kept between a tensor's reads (`surgery.merge.kept`): a tensor of several blocks is read once
per statistics pass and once more for the merge, and what a read derives from the block alone (SCE's
variance across the models, DARE's masks: see test_dare_masks.py) is made once and kept, within a budget,
for the later reads of the same rows. Kept or made again, the output's bytes are the same."""

from __future__ import annotations

import collections
import threading

import numpy as np
import pytest
import torch

from surgery.merge import engine
from surgery.merge.engine import Options, run_merge
from surgery.merge.kept import Kept
from surgery.merge.methods import sce
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec
from tests.surgery.test_mergekit_parity import load_all

BLOCK = 4096  # bytes: every matrix of the tiny models in several blocks
VARIANCE = sce.computed_variance


def test_kept_holds_values_within_its_budget_and_gives_each_once():
    kept = Kept(budget=10)
    a, b = np.ones(8, np.uint8), torch.zeros(2, dtype=torch.int32)  # 8 bytes each
    kept.put("a", a)
    kept.put("b", b)  # 16 bytes would pass the budget: not kept
    assert kept.used == 8 and kept.get("b") is None and kept.take("b") is None
    assert kept.get("a") is a and kept.used == 8  # left for a later read
    assert kept.take("a") is a and kept.take("a") is None and kept.used == 0
    kept.put("b", b)
    assert kept.take("b") is b and kept.used == 0


def spec(f: dict[str, str]) -> dict:
    return {"merge_method": "sce", "base_model": f["base"], "dtype": "float32", "parameters": {"select_topk": 0.4},
            "models": [{"model": f[n]} for n in ("math", "code", "chat")]}


def merged(f: dict[str, str], out: str, made: collections.Counter, monkeypatch) -> dict[str, torch.Tensor]:
    """The merge's tensors; `made` counts the variances computed, by thread."""
    def counted(block):
        made[threading.current_thread().name.split("_")[0]] += 1
        return VARIANCE(block)

    monkeypatch.setattr(sce, "computed_variance", counted)
    plan = plan_merge(parse_spec(spec(f)), "spec")
    return load_all(run_merge(plan, out, Options(block_bytes=BLOCK)))


def test_sce_computes_each_blocks_variance_once_and_the_bytes_do_not_change(llama, tmp_path, monkeypatch):
    once, again = collections.Counter(), collections.Counter()
    kept = merged(llama, str(tmp_path / "kept"), once, monkeypatch)
    monkeypatch.setattr(engine, "KEPT_BLOCKS", 0)  # no room: every pass computes it again
    remade = merged(llama, str(tmp_path / "remade"), again, monkeypatch)
    assert kept.keys() == remade.keys()
    for name in kept:
        assert torch.equal(kept[name].view(torch.int32), remade[name].view(torch.int32)), name
    # four reads of every tensor of several blocks (histogram, refine, energy, merge), one of the others
    assert sum(again.values()) > 3 * sum(once.values()) > 0


def test_the_refining_pass_reads_no_rows_where_the_variance_is_kept(llama, tmp_path, monkeypatch):
    """SCE's second counting pass needs the variance alone (`Stage.carried`): where the first pass kept it,
    the block is read from no file; without room to keep it every pass reads. The bytes are the same."""
    reads = collections.Counter()
    real_read = engine._read
    monkeypatch.setattr(engine, "_read", lambda plan, src, span, device: reads.update([src.name])
                        or real_read(plan, src, span, device))
    kept = merged(llama, str(tmp_path / "kept"), collections.Counter(), monkeypatch)
    read_kept = sum(reads.values())
    reads.clear()
    monkeypatch.setattr(engine, "KEPT_BLOCKS", 0)
    remade = merged(llama, str(tmp_path / "remade"), collections.Counter(), monkeypatch)
    read_all = sum(reads.values())
    plan = plan_merge(parse_spec(spec(llama)), "spec")
    counts = [len(engine.spans_of(plan, j, Options(block_bytes=BLOCK))) for j in plan.jobs]
    # four inputs, each block of the refining pass once. From three blocks a tensor on, the reading thread
    # (two blocks ahead) reaches a block of that pass after the first pass kept its variance; with two it
    # may get there first, and then reads the rows
    spared = read_all - read_kept
    assert 4 * sum(n for n in counts if n > 2) <= spared <= 4 * sum(n for n in counts if n > 1)
    assert sum(n for n in counts if n > 2) > 10
    for name in kept:
        assert torch.equal(kept[name].view(torch.int32), remade[name].view(torch.int32)), name


@pytest.mark.parametrize("final", [False, True])
def test_a_carried_value_is_kept_for_the_next_read_and_taken_by_the_merge_pass(final):
    from surgery.merge.methods.method import Block

    kept = Kept(budget=1 << 20)
    kept.put(("w", (0, 2), "v"), torch.ones(3))

    def block(final: bool) -> Block:
        return Block("w", (2, 3), (0, 2), None, (torch.zeros(2, 3),), (), None, None, kept, final)

    calls = []
    value = block(final).carried("v", lambda: calls.append(1) or torch.zeros(3))
    assert torch.equal(value, torch.ones(3)) and not calls  # the earlier read's value
    assert (kept.used == 0) == final  # the merge pass's read took it; a statistics read left it
    fresh = block(False).carried("u", lambda: torch.full((3,), 2.0))
    assert torch.equal(kept.get(("w", (0, 2), "u")), fresh)


@pytest.fixture(scope="module")
def tied_family(tmp_path_factory) -> dict[str, str]:
    """Task vectors of a few levels, so that many entries share their variance across the models: the
    cut-off of SCE's selection falls among ties, which blocks of one row rank in row order."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tied")
    g = torch.Generator().manual_seed(4)
    shapes = {"model.layers.0.mlp.up_proj.weight": (24, 10), "model.layers.0.mlp.down_proj.weight": (10, 24)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    family = {}
    for i, name in enumerate(["base", "math", "code", "chat"]):
        folder = root / name
        folder.mkdir()
        tensors = {k: v if i == 0 else v + torch.randint(-2, 3, v.shape, generator=g) / 64 for k, v in base.items()}
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text("{}")
        family[name] = str(folder)
    return family


def test_sce_ties_at_the_cut_are_ranked_the_same_whatever_the_blocking(tied_family, tmp_path, monkeypatch):
    """One row per block (the tie quota filling over many blocks: before it fills every tie is kept,
    after it none is) gives the bytes of one block per tensor (ranked in one go)."""
    paths = collections.Counter()
    real_threshold, real_rank = sce.top_k_threshold, sce.top_k_mask

    def threshold(*a):
        found = real_threshold(*a)
        paths["above"] += found[0] is not None  # a block selected by one threshold
        return found

    monkeypatch.setattr(sce, "top_k_threshold", threshold)
    monkeypatch.setattr(sce, "top_k_mask", lambda *a: paths.update(["ranked"]) or real_rank(*a))
    outs = {}
    for block_bytes in (1, None):
        options = Options() if block_bytes is None else Options(block_bytes=block_bytes)
        plan = plan_merge(parse_spec(spec(tied_family)), "spec")
        outs[block_bytes] = load_all(run_merge(plan, str(tmp_path / str(block_bytes)), options))
        if block_bytes == 1:
            assert paths["above"] > 20 and 0 < paths["ranked"] <= 2 * 2 * len(plan.jobs)  # the blocks where it fills
    for name in outs[1]:
        assert torch.equal(outs[1][name].view(torch.int32), outs[None][name].view(torch.int32)), name

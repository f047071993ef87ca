"""The compiled counting passes of the exact selection (surgery/merge/selection_kernel.py) count what
the torch path counts: on blocks holding +0 and -0, NaN with payloads and either sign, infinities,
subnormals and ties, of lengths that do not fill the kernel's lanes."""

from __future__ import annotations

import pytest
import torch

from surgery.merge import selection

pytest.importorskip("surgery.merge.selection_kernel")


def awkward(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g) * 0.02).bfloat16().float()  # bf16 steps: many ties
    x[::7] = 0.0
    x[1::11] = -0.0
    x[2::13] = torch.tensor(0x7FC00001, dtype=torch.int32).view(torch.float32)  # a NaN with a payload
    x[3::17] = torch.tensor(-0x00400001, dtype=torch.int32).view(torch.float32)  # a negative NaN
    x[4::19] = float("inf")
    x[5::23] = -float("inf")
    x[6::29] = 1e-40  # subnormal
    x[8::31] = -0.015625  # a tie with +0.015625 below
    x[9::37] = 0.015625
    return x


def both(fn, monkeypatch, *args):
    compiled = fn(*args)
    monkeypatch.setenv("SURGERY_FUSED", "0")
    torch_path = fn(*args)
    monkeypatch.delenv("SURGERY_FUSED")
    return compiled, torch_path


@pytest.mark.parametrize("n", [1, 3, 4, 5, 1000, 65539])
def test_high_histogram_and_zeros_count_as_torch(n, monkeypatch):
    x = awkward(n)
    x[: n // 3 + 1] = 0.0  # enough zeros that they are counted
    (high, zeros), (high_t, zeros_t) = both(selection.histogram_and_zeros, monkeypatch, x)
    assert torch.equal(high, high_t) and int(zeros) == int(zeros_t) > 0
    assert int(high.sum()) == n and high.dtype == torch.int64


@pytest.mark.parametrize("n", [5, 65539])
def test_low_histogram_counts_as_torch_in_every_bin_that_holds_entries(n, monkeypatch):
    x = awkward(n, seed=1)
    high = selection.high_histogram(x)
    bins = torch.nonzero(high).reshape(-1).tolist()
    assert 0 in bins and (0x7F800000 >> 16) in bins and (0x7FC00001 >> 16) in bins  # zeros, inf, NaN
    for b in bins:
        low, low_t = both(selection.low_histogram, monkeypatch, x, b)
        assert torch.equal(low, low_t) and int(low.sum()) == int(high[b])


def test_tie_counts_match_torch(monkeypatch):
    x = awkward(65539, seed=2)
    for cut in (0.015625, float(x[100].abs()), 1e-40):
        for quota in (10, 10**6):
            got, expected = both(selection.top_k_threshold, monkeypatch, x, cut, quota, 3)
            assert got == expected
    assert selection.top_k_threshold(x, 0.015625, 10**6, 3)[1] > 3 + 2 * (65539 // 37)  # the ties were counted


def test_other_blocks_take_the_torch_path(monkeypatch):
    calls = []
    real = selection._compiled
    monkeypatch.setattr(selection, "_compiled", lambda x: calls.append(r := real(x)) or r)
    x = awkward(1000)
    for block in (x.bfloat16(), x.reshape(50, 20).t(), x.double()):
        assert torch.equal(selection.high_histogram(block), selection.high_histogram(block.float().contiguous()))
    assert calls[0::2] == [None] * 3 and all(c is not None for c in calls[1::2])  # each block, then its float32 copy


@pytest.mark.parametrize("seen", [0, 40, 600])
def test_ranked_masks_match_torch(seen, monkeypatch):
    """The block where a quota of ties fills (and those before and after it): the same entries kept and
    the same running count, NaN and infinities among them."""
    x = awkward(7 * 9363, seed=3).reshape(7, -1)
    ties = int((x.abs() == 0.015625).sum())
    assert ties > 600
    for quota in (1, 500, ties + seen - 1, ties + seen, 10**6):
        for cut in (0.015625, float("inf")):
            (mask, count), (mask_t, count_t) = both(selection.top_k_mask, monkeypatch, x, cut, quota, seen)
            assert count == count_t and mask.dtype == mask_t.dtype == torch.bool and torch.equal(mask, mask_t)
    mask, _ = selection.top_k_mask(x, 0.015625, seen + 10, seen)
    assert int((mask & (x.abs() == 0.015625)).sum()) == 10 and bool(mask[x.abs() > 0.015625].all())

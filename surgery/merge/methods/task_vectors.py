"""The task-vector family: base + lambda * combine_i(w_i * sparsify(m_i - base)).

Task arithmetic (Ilharco et al. 2022, https://arxiv.org/abs/2212.04089), TIES (Yadav et al. 2023,
https://arxiv.org/abs/2306.01708), DARE (Yu et al. 2023, https://arxiv.org/abs/2311.03099),
Model Breadcrumbs (Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795) and DELLA
(Deep et al. 2024, https://arxiv.org/abs/2406.11617) differ only in how each task vector is
sparsified and whether signs are elected; each method file picks its variant here.

Blocked execution: magnitude cut-offs are exact order statistics found with two histogram stages
(`surgery.merge.selection`), the optional L1 rescale is one more stage, and everything else is elementwise.

Sparse task vectors (frozen layers, folded adapters of a few modules, DARE-sparsified inputs) cost no
more per entry than dense ones: an entry of 0 adds nothing to a sign election, a sum or a divisor, so
a cut-off that falls among the zeros (known from the first stage's count of them) needs no second
stage and no ranking of the entries tied at it, and an input whose block is all zeros (an unchanged
tensor, or a run of unchanged rows) is left out of the block's arithmetic, its masks never drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field

from surgery.io.format import num_rows, row_numel
from surgery.merge import fused, selection
from surgery.merge.fused import Survivors
from surgery.merge.methods.method import Block, Method, Params, Stage, Stats, compat
from surgery.merge.selection import bin_of_rank, counts_at, low_histogram, top_k_mask, top_k_threshold, value_of_rank

Sparsify = Literal["none", "magnitude", "random", "outliers", "magprune"]
EPS = 1e-7
Rule = tuple[torch.Tensor | None, float | None]  # (0/1 mask, hardshrink threshold), one of them None


class Weighted(Params):
    weight: float | None = Field(None, description="scale of this model's task vector (its lambda)")


class Sparse(Weighted):
    density: float = Field(1.0, gt=0, le=1, description="fraction of the task vector kept")


class Outliers(Sparse):
    gamma: float = Field(0.01, ge=0, lt=1, description="fraction of the largest entries removed as outliers")


class MagPrune(Sparse):
    epsilon: float = Field(0.15, ge=0, lt=1, description="spread of keep probabilities around density")


class Shared(Params):
    normalize: bool = Field(False, description="divide by the sum of the weights that contribute")
    rescale: bool = Field(False, description="rescale each sparsified task vector to its original L1 norm")
    lambda_: float = Field(1.0, alias="lambda", description="scale of the combined task vector")
    int8_mask: bool = compat(False, "int8 sign masks to save memory; masks here are always compact")


class Elected(Shared):
    consensus: Literal["sum", "count"] = Field("sum", description="sign election: by summed mass or by count")


# ---- sparsification -----------------------------------------------------------------------------

def _deltas(block: Block) -> list[torch.Tensor]:
    """Each input's task vector over the block, (r, ...) float32, read-only."""
    def make() -> list[torch.Tensor]:
        src = _sources(block)
        if src is not None:  # from the stored rows: no float32 copy of the inputs
            return [fused.delta(src, i) for i in range(len(src.models))]
        return [m - block.base for m in block.models]

    return block.cached("deltas", make)


def _counted(block: Block, i: int) -> torch.Tensor | fused.Delta:
    """Input i's task vector for the selection's counts: read from the stored rows where the kernels
    can (never made whole), else made."""
    src = _sources(block)
    return _deltas(block)[i] if src is None else fused.Delta(src, i)


def _sources(block: Block) -> fused.Sources | None:
    """The block's rows for the compiled kernels (its stored rows, or where the kernels do not read
    their dtype its float32 ones), or None where the torch path does the work."""
    def make() -> fused.Sources | None:
        if not fused.available() or block.stored_base is None:
            return None
        return fused.sources(block.stored_base, block.stored_models) or fused.sources(block.base, block.models)

    return block.cached("sources", make)


SAMPLE = 997  # a changed block is told from an unchanged one by every SAMPLE-th entry, almost always


def _blank(block: Block, i: int) -> bool:
    """Whether input i's task vector is +0 everywhere in this block (its rows equal the base's, as an
    unchanged tensor's do). Strided entries are looked at first, so a changed block costs next to nothing."""
    def look() -> bool:
        src = _sources(block)
        if src is not None:
            return not fused.changed(src, i)  # from the stored rows, stopping at the first change
        bits = _deltas(block)[i].reshape(-1).view(torch.int32)  # +0.0 is the only float whose bits are 0
        return not bool(bits[::SAMPLE].any()) and not bool(bits.any())

    return block.cached(f"blank{i}", look)


def _ranks(kind: Sparsify, p: Params, numel: int) -> list[int]:
    """Ascending ranks of |delta| whose values bound the kept set."""
    if p.density >= 1:
        return []
    if kind == "magnitude":
        return [numel - max(1, int(p.density * numel))]
    target = int(p.density * numel)
    bottom = max(0, numel - target - int(p.gamma * numel))
    return [bottom, bottom + target - 1] if target else []


def selection_stages(kind: Sparsify):
    """Two stages that find, per input, the exact |delta| values at the cut-off ranks."""

    def high(block: Block, stats: Stats) -> Stats:
        out: Stats = {}
        for i, p in enumerate(block.per_model):
            if _ranks(kind, p, block.numel):
                stored = block.stored_models[i]
                blank = _blank(block, i)
                hist = selection.blank_histogram(stored.numel(), stored.device) if blank else \
                    selection.histogram_and_zeros(_counted(block, i))
                out[f"hi{i}"], out[f"zeros{i}"] = hist
        return out

    def low(block: Block, stats: Stats) -> Stats:
        out: Stats = {}
        for i, p in enumerate(block.per_model):
            if f"~bins{i}" not in stats:  # once per pass (`stats` is the pass's own copy), not per block
                stats[f"~bins{i}"] = _low_bins(kind, p, block.numel, stats, i)
            for b in stats[f"~bins{i}"]:
                if f"lo{i}.{b}" not in out:  # a blank input's 0s lie in no bin but 0
                    device = block.stored_models[i].device
                    out[f"lo{i}.{b}"] = torch.zeros(selection.LO_BINS, dtype=torch.int64, device=device) \
                        if _blank(block, i) else low_histogram(_counted(block, i), b)
        return out

    def low_needed(shared: Params, per_model: tuple[Params, ...], shape: tuple[int, ...], stats: Stats) -> bool:
        return any(_low_bins(kind, p, math.prod(shape), stats, i) for i, p in enumerate(per_model))

    return (Stage(high, _sparse(kind)), Stage(low, _sparse(kind), low_needed))


def _low_bins(kind: Sparsify, p: Params, numel: int, stats: Stats, i: int) -> list[int]:
    """The high bins whose low histogram input i's cut-offs need: none for a rank that falls among the
    task vector's zeros (the smallest magnitudes), where the value is 0."""
    return [bin_of_rank(stats[f"hi{i}"], r) for r in _ranks(kind, p, numel) if r >= int(stats[f"zeros{i}"])]


def _tie_quota(shape: tuple[int, ...], p: Params, stats: Stats, i: int) -> int | None:
    """How many entries equal to the cut-off to keep, when fewer than all of them fit in k."""
    ranks = _ranks("magnitude", p, math.prod(shape))
    if not ranks or f"hi{i}" not in stats:
        return None
    r, high = ranks[0], stats[f"hi{i}"]
    b = bin_of_rank(high, r)
    greater, equal = counts_at(high, stats[f"lo{i}.{b}"], b, r)
    quota = (math.prod(shape) - r) - greater
    return quota if quota < equal else None


def _cutoffs(kind: Sparsify, block: Block, stats: Stats, i: int) -> list[float]:
    values = []
    for r in _ranks(kind, block.per_model[i], block.numel):
        if r < int(stats[f"zeros{i}"]):  # among the zeros
            values.append(0.0)
            continue
        b = bin_of_rank(stats[f"hi{i}"], r)
        values.append(value_of_rank(stats[f"hi{i}"], stats[f"lo{i}.{b}"], b, r))
    return values


def _survival(kind: Sparsify, block: Block, stats: Stats, i: int) -> Rule | None:
    """The rule that picks input i's surviving entries; None where every entry survives."""
    if kind == "magnitude" and block.per_model[i].density < 1:
        return _top_k(block, stats, i)
    m = _mask(kind, block, stats, i)
    return None if m is None else (m, None)


def _applied(delta: torch.Tensor, s: Survivors, fresh: bool) -> torch.Tensor:
    """The task vector `s` describes, in torch: a new tensor, or with `fresh` off the delta itself
    where it is unchanged (read-only then)."""
    if s.mask is None and s.threshold is None:
        return delta * s.scale if fresh or s.scale != 1 else delta
    if s.threshold is not None:
        out = torch.nn.functional.hardshrink(delta, s.threshold)
    else:  # a bool mask costs several times more in a product than a float or uint8 one
        out = delta * (s.mask.to(torch.float32) if s.mask.dtype == torch.bool else s.mask)
    return out.mul_(s.scale) if s.scale != 1 else out


def _mask(kind: Sparsify, block: Block, stats: Stats, i: int) -> torch.Tensor | None:
    """uint8 0/1 mask of the entries of input i's task vector that survive an outlier trim, DARE's draws
    or DELLA's, where a product with it is the cheapest way to apply them (a comparison's bool viewed
    as uint8: no copy); None keeps all. DARE's draws need no task vector."""
    p = block.per_model[i]
    if kind == "none" or p.density >= 1:
        return None
    if kind == "random":
        return block.keep(i, p.density)
    delta = _deltas(block)[i]
    if kind == "outliers":
        cuts = _cutoffs(kind, block, stats, i)
        if not cuts:
            return torch.zeros(delta.shape, dtype=torch.uint8, device=delta.device)
        a = delta.abs()
        return ((a >= cuts[0]) & (a <= cuts[1])).view(torch.uint8)
    return (block.uniform(i) < _magprune_probs(delta, p.density, p.epsilon)).view(torch.uint8)


def _top_k(block: Block, stats: Stats, i: int) -> Rule | None:
    """The rule that keeps exactly k entries, as a sort would keep: all above the cut-off magnitude,
    then the first `quota` of those equal to it in row-major order. Blocks of one pass arrive in row
    order, so a running count in the pass's statistics ranks each tie across blocks, whatever the
    blocking. A cut-off of 0 keeps every entry (None): the zeros among them change nothing, so
    nothing is ranked.

    Where a block keeps every entry at or above the cut (or, the quota full, every entry above it),
    a threshold for `hardshrink` (x where |x| > t, else +0) does it in one pass over the block: the cut
    or the float32 just below it. A comparison into a bool mask and a product cost ten times more. A
    dropped entry is then +0 where the product gave -0 for a negative one; the election, the sums and
    the divisor are the same for either zero."""
    if f"~cut{i}" not in stats:  # once per pass, not per block
        cut = _cutoffs("magnitude", block, stats, i)[0]
        stats[f"~cut{i}"] = (cut, None if cut == 0 else _tie_quota(block.shape, block.per_model[i], stats, i))
    cut, quota = stats[f"~cut{i}"]
    if cut == 0:
        return None
    before = int(stats.get(f"~ties{i}", 0))
    threshold, stats[f"~ties{i}"] = top_k_threshold(_counted(block, i), cut, quota, before)
    if threshold is not None:
        return None, threshold
    keep, _ = top_k_mask(_deltas(block)[i], cut, quota, before)  # the one block where the quota fills: rank its ties
    return keep, None


def _magprune_probs(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA: keep probability rises linearly with the entry's magnitude rank within its row."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.flatten(1)  # (r, c)
    c = rows.shape[1]
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).float()  # 0 .. c-1
    rank_norm = ranks / (c - 1) if c > 1 else torch.zeros_like(ranks)
    return ((density - epsilon) + rank_norm * (2 * epsilon)).reshape(delta.shape)


def l1_stage(kind: Sparsify):
    def l1(block: Block, stats: Stats) -> Stats:
        out: Stats = {}
        for i in range(len(block.stored_models)):
            out[f"l1_{i}"], out[f"l1m_{i}"] = l1_sums(kind, block, stats, i)
        return out

    return l1


def l1_sums(kind: Sparsify, block: Block, stats: Stats, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of |delta|, sum of |survivors|) of input i over the block, float64 0-dim tensors. DARE's
    depend on the block alone: they live in its cache, where the reading thread may have put them."""
    if kind == "random":
        return block.cached(f"l1{i}", lambda: _l1_sums(kind, block, stats, i))
    return _l1_sums(kind, block, stats, i)


def _l1_sums(kind: Sparsify, block: Block, stats: Stats, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Compiled from the stored rows where it can be (the same sums up to float64 rounding), else in torch."""
    if _blank(block, i):  # nothing to sum, no mask to draw
        zero = torch.zeros((), dtype=torch.float64, device=block.stored_models[i].device)
        return zero, zero
    mask, threshold = _survival(kind, block, stats, i) or (None, None)
    src = _sources(block)
    sums = None if src is None else fused.l1_sums(src, i, mask, threshold)
    if sums is not None:
        return tuple(torch.tensor(x, dtype=torch.float64) for x in sums)
    a = _deltas(block)[i].abs()  # the survivors of |delta| are |the survivors|
    before = total(a, block.shape)
    if mask is None and threshold is None:
        return before, before
    return before, total(_applied(a, Survivors(mask, threshold), fresh=True), block.shape)


SEGMENT = 16384  # torch sums this many elements on one thread: a segment's sum is repeatable


def total(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Sum of a block in float64, the same whatever the thread count, and whatever the blocking up to
    float64 rounding: compiled where it can be (`fused.total`), else in torch, where each row is cut
    into segments of SEGMENT elements from its start, each summed in float64 by one thread in a fixed
    order, and the segment sums added. The two agree to float64 rounding."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=x.device)
    compiled = fused.total(x)
    if compiled is not None:
        return torch.tensor(compiled, dtype=torch.float64)
    rows = x.reshape(-1, row_numel(shape))  # (r, c)
    whole = rows.shape[1] // SEGMENT * SEGMENT
    out = rows[:, whole:].sum(1, dtype=torch.float64).sum()  # each row's tail, (r,) -> ()
    if whole:
        out += rows[:, :whole].reshape(-1, SEGMENT).sum(1, dtype=torch.float64).sum()  # (r * k,) -> ()
    return out


def survivors(kind: Sparsify, block: Block, stats: Stats, i: int, w: float = 1.0) -> Survivors:
    """How w * input i's sparsified (and, with rescale, L1-restored) task vector is made from its delta."""
    rule = _survival(kind, block, stats, i)
    if rule is None:
        return Survivors(scale=w)
    scale = w
    if block.shared.rescale:
        before, after = float(stats[f"l1_{i}"]), float(stats[f"l1m_{i}"])
        if before >= EPS and after >= EPS:
            scale = w * (before / after)  # one pass over the block for both factors
    return Survivors(*rule, scale=scale)


# ---- combination --------------------------------------------------------------------------------

def combine(kind: Sparsify, elect: bool, block: Block, stats: Stats) -> torch.Tensor:
    """base + lambda * (sum of agreeing weighted task vectors) / (sum of their weights), accumulated
    one input at a time (no (n, ...) stack; the same summation order as a sum over a stacked axis).

    Inputs whose task vector is +0 throughout the block are left out, with the same bits as a result:
    adding a zero changes no sum, sign or divisor; only the sign of a zero sum could differ (a sum is -0
    only where every term is), which the plain sum restores below."""
    weights = [p.weight for p in block.per_model]
    live = [i for i in range(len(weights)) if not _blank(block, i)]
    how = [survivors(kind, block, stats, i, weights[i]) for i in live]
    shared = block.shared
    src = _sources(block) if elect else None
    if fused.usable(src, how):  # the same bits as below, in one pass over the stored rows
        return fused.elect_and_agree(src, live, how, [weights[i] for i in live], shared.consensus == "count",
                                     shared.normalize, shared.lambda_)
    tvs = [_applied(_deltas(block)[i], s, fresh=not elect) for i, s in zip(live, how)]  # (r, ...)
    if elect:
        if not tvs:  # the elected sum is +0 everywhere, its divisor 1
            return _plus_base(block, 0.0)
        mixed, divisor = _agreeing([weights[i] for i in live], tvs, shared.consensus, shared.normalize)
    else:
        zeros = [math.copysign(0.0, weights[i]) for i in range(len(weights)) if i not in live]  # their +0 * w
        divisor = _weight_sum(weights)
        if not tvs:
            zero = -0.0 if all(math.copysign(1, z) < 0 for z in zeros) else 0.0
            return _plus_base(block, zero / divisor if shared.normalize else zero)
        mixed = _summed(tvs)
        if any(math.copysign(1, z) > 0 for z in zeros):
            mixed.add_(0.0)  # a +0 term left out: no entry of the sum is -0 (x + 0.0 changes only -0)
    if shared.normalize:
        mixed /= divisor
    return mixed.mul_(shared.lambda_).add_(block.base) if shared.lambda_ != 1 else mixed.add_(block.base)


def _plus_base(block: Block, zero: float) -> torch.Tensor:
    """base + lambda * (a combined task vector that is the signed zero `zero` throughout)."""
    lam = block.shared.lambda_
    return block.base + (zero * lam if lam != 1 else zero)


def _agreeing(weights: list[float], tvs: list[torch.Tensor], consensus: str, normalize: bool):
    """TIES: the sum of the entries whose sign is the elected one, and (to normalise) the sum of the
    weights of the models agreeing at each entry (1 where none do). One scratch buffer serves every
    input (the task vectors may be read-only), and masks are float 0/1 made in place: a comparison into
    a new bool tensor costs several times more."""
    elected = _elect(tvs, consensus)
    mixed, divisor = torch.zeros_like(tvs[0]), torch.zeros_like(tvs[0]) if normalize else None
    along = torch.empty_like(tvs[0])
    for w, tv in zip(weights, tvs):
        torch.mul(tv, elected, out=along).clamp_(min=0)  # |tv| where its sign is the elected one, else 0
        mixed.add_(along)
        if divisor is not None:
            divisor.add_(along.sign_(), alpha=w)  # zeros never agree
    mixed.mul_(elected)  # the sum of the agreeing entries, bit for bit: elected is +-1
    if divisor is not None:
        divisor.add_(along.copy_(divisor).eq_(0))  # 0 -> 1, others unchanged (a masked store is slower)
    return mixed, divisor


def _summed(tvs: list[torch.Tensor]) -> torch.Tensor:
    """The plain sum of the task vectors (fresh tensors: summed into the first in place)."""
    mixed = tvs[0]
    for tv in tvs[1:]:
        mixed.add_(tv)
    return mixed


def _weight_sum(weights: list[float]) -> float:
    """The sum of the weights (1 where it is about 0)."""
    total = torch.tensor(weights, dtype=torch.float32).sum()  # in float32, as a stacked sum would be
    return float(total) if abs(float(total)) >= 1e-8 else 1.0


def _elect(tvs: list[torch.Tensor], how: str) -> torch.Tensor:
    """The elected sign per entry, +1 or -1 (TIES step 2): by summed mass, or by count of signs."""
    total = torch.zeros_like(tvs[0])  # +0: adding -0 or x and -x to it gives +0, so no entry is -0
    for tv in tvs:
        total.add_(tv if how == "sum" else tv.sign())
    return total.ge_(0).mul_(2).sub_(1)  # +1 where total >= 0 (never -0: the sum starts at +0), else -1


def task_vector_method(name: str, kind: Sparsify, elect: bool, shared: type[Params], per_model: type[Params],
                       summary: str, reference: str) -> Method:
    """One method of the family: `kind` of sparsification, with TIES's sign election or a plain sum."""
    def merge(block: Block, stats: Stats) -> torch.Tensor:
        return combine(kind, elect, block, stats)

    def prepare(block: Block, final: bool, ahead: Callable[[], bool]) -> None:
        """Task vectors where the torch path needs them (the compiled kernels read the stored rows and
        make them whole only where a method asks). DARE's masks, and where the block's L1 pass runs its
        L1 sums, while the reading thread is ahead of the merging one, which otherwise does that work
        itself when it needs it: the share of the work that either thread may take, so it balances the two."""
        if _sources(block) is None:  # the compiled path reads the stored rows
            _deltas(block)
        if kind != "random":
            return
        summed = block.shared.rescale and (not final or block.rows == (0, num_rows(block.shape)))
        for i, p in enumerate(block.per_model):
            if p.density >= 1 or not block.stored_models[i].numel() or _blank(block, i):
                continue
            if ahead():
                block.keep(i, p.density)
            if summed and ahead():
                l1_sums(kind, block, {}, i)

    work = 6 if kind == "magprune" else 4
    return Method(
        name=name, merge=merge, summary=summary, reference=reference, shared=shared, per_model=per_model,
        stages=_stages(kind), random=kind in ("random", "magprune"), required=("weight",),
        work=work, prepare=prepare, statistics_ahead=kind in ("magnitude", "outliers"),
        stored_work=2 if elect and kind in ("random", "magnitude") else work + 1,  # DARE-TIES and TIES: masks
        # and the output; else the deltas (made from the stored rows) and the base's float32 copy besides the
        # torch path's work
    )


def _sparse(kind: Sparsify):
    def sparse(shared: Params, models: tuple[Params, ...]) -> bool:
        return kind != "none" and any(p.density < 1 for p in models)

    return sparse


def _stages(kind: Sparsify) -> tuple[Stage, ...]:
    """The exact cut-off ranks (magnitude and outlier trims) when a model is sparsified, and the L1 norms
    before and after when the survivors are rescaled."""
    def rescaled(shared: Params, models: tuple[Params, ...]) -> bool:
        return _sparse(kind)(shared, models) and shared.rescale

    select = selection_stages(kind) if kind in ("magnitude", "outliers") else ()
    l1 = (Stage(l1_stage(kind), rescaled),) if kind != "none" else ()
    return select + l1

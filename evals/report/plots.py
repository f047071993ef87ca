"""PNG figures of the evals: the forgetting heat map (stages x tasks), the alignment-vs-general Pareto
front with every run labelled, and the merge-quality bars (merged over expert, per task).

Each `*_figure` builds a matplotlib Figure on the Agg canvas (no display, no global backend switch) so
tests inspect axes and labels; `save_png` writes it atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from surgery.diagnose.heatmap import save_png  # noqa: F401  (re-exported: one atomic PNG writer for every figure)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def forgetting_figure(checkpoints: Sequence[str], tasks: Sequence[str], matrix: Sequence[Sequence[float]],
                      title: str = "score after each stage"):
    """Heat map of R (rows: checkpoints in training order, columns: tasks), each cell printed."""
    values = np.asarray(matrix, dtype=np.float64)  # (stages, tasks)
    fig = _figure(2.5 + 0.8 * len(tasks), 1.5 + 0.45 * len(checkpoints))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < values.mean() else "k")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(checkpoints)), checkpoints, fontsize=8)
    ax.set_xlabel("task")
    ax.set_ylabel("stage (checkpoint)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05, label="score")
    fig.tight_layout()
    return fig


def pareto_figure(points: Mapping[str, tuple[float, float]], front: Sequence[str]):
    """Every run at (alignment, general capability), labelled; the Pareto front joined by a line."""
    fig = _figure(6, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    others = [run for run in points if run not in front]
    ax.scatter([points[r][0] for r in others], [points[r][1] for r in others], color="0.6", label="dominated")
    ax.plot([points[r][0] for r in front], [points[r][1] for r in front], "o-", color="C3", label="Pareto front")
    for run, (x, y) in points.items():
        ax.annotate(run, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("alignment (normalised score)")
    ax.set_ylabel("general capability G")
    ax.set_title("alignment vs general capability", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def merge_quality_figure(ratios: Mapping[str, float], title: str = "merge quality"):
    """One bar per expert's task: merged score over the expert's own; the line at 1 is the expert."""
    fig = _figure(2 + 0.7 * len(ratios), 4)
    ax = fig.add_subplot(1, 1, 1)
    tasks = list(ratios)
    ax.bar(range(len(tasks)), [ratios[t] for t in tasks], color="C0")
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="expert")
    mean = float(np.mean(list(ratios.values()))) if ratios else float("nan")
    ax.axhline(mean, color="C3", linewidth=1, label=f"normalised accuracy {mean:.3f}")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("expert task")
    ax.set_ylabel("merged / expert score")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_figure(param: str, values: Sequence[object], series: Mapping[str, Sequence[float | None]],
                 title: str = "scores along the sweep"):
    """One line per task (and the mean) over the swept values; text values sit at even spacing."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = [float(v) for v in values] if numeric else list(range(len(values)))
    fig = _figure(6, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in series.items():
        y = [np.nan if v is None else v for v in ys]
        ax.plot(x, y, "o-" if name != "mean" else "s--", label=name, color="k" if name == "mean" else None)
    if not numeric:
        ax.set_xticks(x, [str(v) for v in values])
    ax.set_xlabel(param)
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def evolve_figure(scores: Sequence[Sequence[float | None]], title: str = "evolutionary merge search"):
    """Each candidate's score (minus its fitness: higher is better) at its evaluation number, coloured by
    generation, and the best so far as a step line; a failed merge (None) is left out."""
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    n, best, xs, ys = 0, -np.inf, [], []
    for g, gen in enumerate(scores):
        done = [(n + i + 1, s) for i, s in enumerate(gen) if s is not None]
        if done:
            ax.scatter(*zip(*done), s=14, label=f"generation {g}" if len(scores) <= 10 else None)
        for i, s in enumerate(gen):
            best = max(best, s) if s is not None else best
            xs.append(n + i + 1)
            ys.append(best if np.isfinite(best) else np.nan)
        n += len(gen)
    ax.step(xs, ys, where="post", color="k", label="best so far")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("weighted score (minus fitness)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def strategies_figure(matrices: Mapping[str, tuple[Sequence[str], Sequence[Sequence[float]]]],
                      checkpoints: Sequence[str], title: str = "score after each stage, per strategy"):
    """One stage x task heat map per continual-learning strategy, side by side, on one colour scale."""
    fig = _figure(1.5 + 2.6 * len(matrices), 2.6 + 0.4 * len(checkpoints))
    values = {n: np.asarray(m, dtype=np.float64) for n, (_, m) in matrices.items()}  # each (stages, tasks)
    low, high = 0.0, 1.0  # bounded scores (exact match, rates): one fixed scale, so panels compare
    for k, (name, (tasks, _)) in enumerate(matrices.items()):
        ax = fig.add_subplot(1, len(matrices), k + 1)
        image = ax.imshow(values[name], aspect="auto", cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
        for (i, j), v in np.ndenumerate(values[name]):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < (low + high) / 2 else "k")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(checkpoints)), checkpoints if k == 0 else [""] * len(checkpoints), fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(bottom=0.3, top=0.85, left=0.12, right=0.9)
    fig.colorbar(image, ax=fig.axes, fraction=0.03, label="score")
    return fig


def tradeoff_figure(weights: Sequence[float], series: Mapping[str, Sequence[float]], refusal: str,
                    over_refusal: str, tax: str, title: str = "safety data's mixing weight"):
    """Left: every series (refusal, over-refusal, tax, ...) against the mixing weight. Right: the trade-off
    itself, over-refusal against refusal, one point per weight (labelled), coloured by the tax."""
    fig = _figure(11, 4.5)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, ys in series.items():
        left.plot(weights, ys, "o-", label=name)
    left.axhline(0.0, color="0.7", linewidth=0.8)
    left.set_xlabel("mixing weight of the refusal data")
    left.set_ylabel("rate (tax: G lost)")
    left.set_title(title, fontsize=10)
    left.legend(fontsize=8)
    x, y, c = series[refusal], series[over_refusal], series[tax]
    right.plot(x, y, "-", color="0.7", zorder=1)
    points = right.scatter(x, y, c=c, cmap="magma_r", zorder=2)
    for w, xi, yi in zip(weights, x, y):
        right.annotate(f"w={w:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    right.set_xlim(-0.03, 1.03)  # rates: the whole square, so curves of different runs compare
    right.set_ylim(-0.03, 1.03)
    left.set_ylim(min(-0.05, *(min(ys) - 0.05 for ys in series.values())), 1.05)
    right.set_xlabel(refusal)
    right.set_ylabel(over_refusal)
    right.set_title("refusal vs over-refusal (colour: tax)", fontsize=10)
    fig.colorbar(points, ax=right, label=tax)
    fig.tight_layout()
    return fig

"""A PNG heat map of `surgery diff`'s grids: one panel per measure, layers down, module types across.
Drawn on matplotlib's Agg canvas (no display, no global backend switch) and written atomically."""

from __future__ import annotations

import os

import numpy as np

from surgery.errors import OutputError

PER_ROW = 3  # panels side by side


def save_heatmap(path: str, rows: list[str], cols: list[str], panels: dict[str, list[list[float]]],
                 ranges: dict[str, tuple[float, float | None]] | None = None) -> str:
    """Draw `panels` ({title: values[row][col]}) side by side into the PNG at `path`."""
    return save_png(heatmap_figure(rows, cols, panels, ranges or {}), path)


def heatmap_figure(rows: list[str], cols: list[str], panels: dict[str, list[list[float]]],
                   ranges: dict[str, tuple[float, float | None]]):
    """The figure of `panels`; `ranges` fixes a panel's colour scale (low, high), high None meaning the
    data's maximum. Without one the scale spans the data, whatever its spread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    across = min(PER_ROW, len(panels))
    down = -(-len(panels) // across)
    fig = Figure(figsize=(across * (2.5 + 0.4 * len(cols)), down * (1.8 + 0.25 * len(rows))))
    FigureCanvasAgg(fig)
    for k, (title, values) in enumerate(panels.items()):
        ax = fig.add_subplot(down, across, k + 1)
        grid = np.ma.masked_invalid(np.array(values, float))  # (rows, cols), NaN where no tensor is
        _panel(fig, ax, title, rows, cols, grid, ranges.get(title))
    fig.tight_layout()
    return fig


def _panel(fig, ax, title: str, rows: list[str], cols: list[str], values, scale) -> None:
    low, high = scale or (None, None)
    if scale is not None and high is None:
        high = float(values.max()) if values.count() and values.max() > low else low + 1
    cmap = "coolwarm" if low is not None and low < 0 else "viridis"  # signed measures diverge from 0
    image = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest", vmin=low, vmax=high)
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(cols)), cols, rotation=60, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("module type", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    bar = fig.colorbar(image, ax=ax, fraction=0.05)
    bar.formatter.set_useOffset(False)  # tick labels are the values themselves, never "offset + small number"


def save_png(fig, path: str) -> str:
    """Write `fig` as a PNG at `path` atomically (a partial file never replaces a good one); the path."""
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OutputError(f"cannot write the figure {path!r} ({e.strerror}); check the folder exists and "
                          "is writable") from None
    return path

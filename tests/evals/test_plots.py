"""The figures: built on the Agg canvas with the expected axes, labels and marks (read from the figure
objects, not the pixels), and written as non-empty PNG files."""

from __future__ import annotations

import pytest

from evals.report.plots import forgetting_figure, merge_quality_figure, pareto_figure, save_png
from surgery.errors import OutputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _main_axes(fig):
    return fig.axes[0]


def test_forgetting_heat_map(tmp_path):
    fig = forgetting_figure(["base", "s1", "s2"], ["add", "reverse"], [[0.1, 0.2], [0.9, 0.3], [0.5, 0.8]])
    ax = _main_axes(fig)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("task", "stage (checkpoint)")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["add", "reverse"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["base", "s1", "s2"]
    assert ax.get_images()[0].get_array().shape == (3, 2)
    assert sorted(t.get_text() for t in ax.texts) == ["0.10", "0.20", "0.30", "0.50", "0.80", "0.90"]
    assert fig.axes[1].get_ylabel() == "score"  # the colour bar
    path = tmp_path / "forgetting.png"
    assert save_png(fig, str(path)) == str(path)
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_pareto_front_labels_every_run(tmp_path):
    points = {"base": (0.1, 0.6), "dpo": (0.7, 0.5), "sft": (0.4, 0.3)}
    fig = pareto_figure(points, ["base", "dpo"])
    ax = _main_axes(fig)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("alignment (normalised score)", "general capability G")
    assert sorted(t.get_text() for t in ax.texts) == ["base", "dpo", "sft"]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [0.1, 0.7] and list(line.get_ydata()) == [0.6, 0.5]
    assert ax.collections[0].get_offsets().tolist() == [[0.4, 0.3]]  # the dominated run
    save_png(fig, str(tmp_path / "pareto.png"))
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def test_merge_quality_bars(tmp_path):
    fig = merge_quality_figure({"add": 0.75, "reverse": 1.0})
    ax = _main_axes(fig)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("expert task", "merged / expert score")
    assert [p.get_height() for p in ax.patches] == [0.75, 1.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["expert", "normalised accuracy 0.875"]
    save_png(fig, str(tmp_path / "merge.png"))
    assert (tmp_path / "merge.png").read_bytes()[:8] == PNG_MAGIC


def test_unwritable_path_says_so(tmp_path):
    fig = merge_quality_figure({"add": 0.5})
    with pytest.raises(OutputError, match="check the folder exists"):
        save_png(fig, str(tmp_path / "missing" / "x.png"))
    assert list(tmp_path.iterdir()) == []

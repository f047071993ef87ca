"""Tables of the evals as terminal text, Markdown or CSV: the alignment tax and the forgetting report,
and any list of rows ({column: value}, e.g. leaderboard rows), which `render` draws.

Every difference in a tax or forgetting table carries its tests (evals/analysis/significance.py) and says
"noise" unless McNemar and the bootstrap both find it, so a table never calls noise a tax.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

from evals.analysis.continual import ForgettingReport
from evals.analysis.metrics import LOWER_IS_BETTER_TASKS, AlignmentTax
from evals.analysis.significance import Difference
from evals.scoring.scores import TaskScore
from surgery.errors import InputError

Row = Mapping[str, object]
FORMATS = ("table", "md", "csv")  # every evals table; `surgery leaderboard` adds json


def render(rows: Sequence[Row], fmt: str = "table", columns: Sequence[str] | None = None) -> str:
    """`rows` as a table: columns in first-seen order unless given; a missing cell is blank."""
    if fmt not in FORMATS:
        raise InputError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    if fmt == "csv":
        return _csv(rows, columns)
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [all(_is_number(row.get(c)) for row in rows if row.get(c) is not None) for c in columns]
    return (_markdown if fmt == "md" else _text)(columns, cells, numeric)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, TaskScore)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    """Four decimals for numbers, value ± stderr for a task score, '-' for nothing."""
    if value is None:
        return "-"
    if isinstance(value, TaskScore):
        return f"{value.value:.4f}" + (f" ± {value.stderr:.4f}" if value.stderr is not None else "")
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _text(columns: list[str], cells: list[list[str]], numeric: list[bool]) -> str:
    widths = [max([len(c)] + [len(row[k]) for row in cells]) for k, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(row) for row in cells])


def _markdown(columns: list[str], cells: list[list[str]], numeric: list[bool]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    rule = "|" + "|".join("---:" if num else "---" for num in numeric) + "|"
    return "\n".join([line(columns), rule] + [line(row) for row in cells])


def _csv(rows: Sequence[Row], columns: list[str]) -> str:
    """Full precision; a task score is its value (give stderr its own column to keep it)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = [row.get(c) for c in columns]
        writer.writerow(["" if v is None else v.value if isinstance(v, TaskScore) else v for v in values])
    return out.getvalue()


def _verdict(d: Difference) -> str:
    if d.p_value is None:
        return "untested (no per-document outcomes)"
    return "significant" if d.significant else "noise"


def difference_row(task: str, d: Difference, **context: object) -> dict:
    """A table row for one tested difference; `context` columns (suite, best stage) follow the task."""
    interval = "-" if d.low is None else f"[{d.low:+.4f}, {d.high:+.4f}]"
    p = None if d.p_value is None else f"{d.p_value:.3g}"
    return {"task": task, **context, "change": d.delta, f"{1 - d.alpha:.0%} CI": interval, "p (McNemar)": p,
            "wins/losses": f"{d.wins}/{d.losses}", "verdict": _verdict(d)}


def _evidence(d: Difference) -> str:
    if d.p_value is None:
        return "untested: no per-document outcomes"
    return (f"{1 - d.alpha:.0%} CI of the change [{d.low:+.4f}, {d.high:+.4f}], McNemar p={d.p_value:.3g}: "
            f"{_verdict(d)}")


def render_tax(tax: AlignmentTax, before: str, after: str, fmt: str = "table") -> str:
    """The headline (tax, relative tax, worst task, gain, each with its tests) and the per-task table."""
    relative = "n/a: G before is at chance" if tax.relative is None else f"{tax.relative:.1%}"
    worst = tax.tasks[tax.worst]
    head = [f"alignment tax of {after} against {before} (normalised scores, after - before)",
            f"general capability G: {tax.general_before:.4f} -> {tax.general_after:.4f}; "
            f"tax {tax.tax:+.4f} (relative {relative}); {_evidence(tax.tax_test)}",
            f"worst task: {tax.worst} ({worst.delta:+.4f}, {_verdict(worst)})",
            f"alignment: {tax.alignment_before:.4f} -> {tax.alignment_after:.4f}; gain {tax.gain:+.4f}; "
            f"{_evidence(tax.gain_test)}"]
    turned = [t for t in {**tax.tasks, **tax.alignment_tasks} if t in LOWER_IS_BETTER_TASKS]
    if turned:
        head.append(f"{', '.join(turned)}: counted as 1 - rate, so higher is better throughout")
    rows = [difference_row(t, d, suite="general") for t, d in tax.tasks.items()]
    rows += [difference_row(t, d, suite="alignment") for t, d in tax.alignment_tasks.items()]
    return _with_table(head, rows, fmt)


def tax_line(tax: AlignmentTax, before: str, after: str) -> str:
    """`render_tax`'s headline in one line: G before and after with the tested tax, and the tested gain."""
    return (f"alignment tax of {after} over its parent {before}: G {tax.general_before:.3f} -> "
            f"{tax.general_after:.3f}, tax {tax.tax:+.3f} ({_evidence(tax.tax_test)}); alignment "
            f"{tax.alignment_before:.3f} -> {tax.alignment_after:.3f}, gain {tax.gain:+.3f} "
            f"({_evidence(tax.gain_test)})")


def forgetting_line(report: ForgettingReport) -> str:
    """A sequence's forgetting in one line: each earlier stage task's score after its own stage and after
    the last (the tested backward difference), GEM's BWT and RWalk's forgetting. Needs the stage tasks."""
    if report.stage_tasks is None or report.backward is None:
        raise InputError("a forgetting line needs the task of each stage (stage_tasks)")
    after = " -> ".join(report.checkpoints)
    tasks = [f"{t} {report.matrix[1 + j][report.tasks.index(t)]:.3f} after its stage, "
             f"{report.matrix[-1][report.tasks.index(t)]:.3f} after the last ({_evidence(d)})"
             for j, (t, d) in enumerate(report.backward.items())]
    bwt = "n/a" if report.backward_transfer is None else f"{report.backward_transfer:+.3f}"
    rwalk = "n/a" if report.forgetting is None else f"{report.forgetting:+.3f}"
    return f"forgetting along {after}: {'; '.join(tasks)}; BWT {bwt} (GEM), forgetting {rwalk} (RWalk)"


def render_forgetting(report: ForgettingReport, fmt: str = "table") -> str:
    """The stage-by-task matrix, each task's change since its best earlier stage, and the GEM and RWalk
    summaries when the stage tasks are known."""
    matrix = [{"checkpoint": c, **dict(zip(report.tasks, map(float, values)))}
              for c, values in zip(report.checkpoints, report.matrix)]
    drops = [difference_row(t, d, **{"best before": report.best[t]}) for t, d in report.drops.items()]
    parts = [render(matrix, fmt), render(drops, fmt)]
    if fmt == "csv":
        return "\n".join(parts)
    notes = [f"{t}: shown as 1 - rate, so higher is better" for t in report.tasks if t in LOWER_IS_BETTER_TASKS]
    notes += [f"left out (perplexity, unbounded): {', '.join(report.skipped)}"] if report.skipped else []
    notes += _summary(report) if report.stage_tasks is not None else []
    return "\n\n".join(parts + (["\n".join(notes)] if notes else []))


def _summary(report: ForgettingReport) -> list[str]:
    def show(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.4f}"

    needs = "" if report.intransigence is not None else "; needs the jointly trained reference, --joint"
    lines = [f"stages train {', '.join(report.stage_tasks)}; {report.checkpoints[0]} is the baseline b",
             f"ACC {report.average_accuracy:.4f} (GEM, mean over the {len(report.stage_tasks)} tasks after the "
             "last stage)",
             f"BWT {show(report.backward_transfer)}, FWT {show(report.forward_transfer)} (GEM, denominator T-1)",
             f"forgetting {show(report.forgetting)} (RWalk, denominator T-1), intransigence "
             f"{show(report.intransigence)} (RWalk, denominator T{needs})"]
    lines += [f"  BWT on {t}: {_evidence(d)}" for t, d in (report.backward or {}).items()]
    return lines


def _with_table(head: list[str], rows: list[dict], fmt: str) -> str:
    if fmt == "csv":
        return render(rows, "csv")
    return "\n".join(head) + "\n\n" + render(rows, fmt)

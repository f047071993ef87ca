"""The trained demo's whole loop at toy scale: base and experts trained through the shared loop, every
example merge run on them, a two-stage sequence trained, every model scored through lm-eval into the
demo's results store, and the report read from that store (table, leaderboard, tax and forgetting
lines, PNGs); a second run reuses every stage, a damaged output is rebuilt with one line, a stopped
stage is resumed."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from evals.analysis.continual import forgetting_report
from evals.analysis.metrics import alignment_tax
from evals.pipelines.demo import ALIGNMENT, GENERAL, STORE, TASKS, run_world_demo
from evals.report.tables import forgetting_line, tax_line
from evals.scoring.harness import HarnessSettings
from evals.scoring.run import task_key
from evals.scoring.store import Store
from trainers.world.demo import EXPERTS, SEQUENCE_NAME, check_png
from trainers.world.demo_zoo import Recipe

MERGES = Path(__file__).resolve().parents[2] / "merges"
TINY = Recipe(base_steps=3, expert_steps=(("add", 2), ("reverse", 2), ("refuse", 2)), sequence_steps=2,
              train_rows=40)
ROWS = 2
MODELS = ("base", *EXPERTS, "slerp", "ties-example", SEQUENCE_NAME)
STAGES = ("data", "init", "base", *EXPERTS, "merge-slerp", "merge-ties-example", SEQUENCE_NAME, "sign-conflicts",
          *(f"eval-{m}" for m in MODELS), "report", "merge-quality", "pareto")


@dataclass(frozen=True)
class Demo:
    folder: Path
    specs: str
    first: list[str]
    second: list[str]
    report: dict
    trained: dict[str, list[float]]  # each model's weight files' mtimes after the first run
    trained_again: dict[str, list[float]]


def _paths(folder: Path) -> dict[str, str]:
    models = {n: folder / "models" / n for n in ("base", *EXPERTS, SEQUENCE_NAME)}
    return {n: str(models.get(n, folder / "out" / n)) for n in MODELS}


def _mtimes(folder: Path) -> dict[str, list[float]]:
    """Each model's weight files' modification times: what training or merging again would change."""
    return {n: [os.path.getmtime(f) for f in sorted(Path(p).resolve().glob("*.safetensors"))]
            for n, p in _paths(folder).items()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    root = tmp_path_factory.mktemp("world_demo")
    specs = root / "specs"
    specs.mkdir()
    for name in ("ties-example.yaml", "slerp.yaml"):
        shutil.copy(MERGES / name, specs / name)
    first: list[str] = []
    report = run_world_demo(str(root / "demo"), str(specs), TINY, echo=first.append, rows_per_task=ROWS)
    trained = _mtimes(root / "demo")
    second: list[str] = []
    run_world_demo(str(root / "demo"), str(specs), TINY, echo=second.append, rows_per_task=ROWS)
    return Demo(root / "demo", str(specs), first, second, report, trained, _mtimes(root / "demo"))


def _stored(folder: Path) -> dict[str, dict]:
    """Every model's scores as the store holds them under the demo's settings."""
    settings = HarnessSettings(limit=ROWS)
    with Store(str(folder / STORE), readonly=True) as store:
        return {n: {t: store.stored(store.hash_of(p), t, task_key(t, settings)) for t in TASKS}
                for n, p in _paths(folder).items()}


@pytest.mark.integration
def test_the_store_holds_every_models_scores_and_the_report_reads_them(demo):
    stored = _stored(demo.folder)
    assert all(s is not None and s.n == ROWS for scores in stored.values() for s in scores.values())
    assert demo.report["scores"] == {n: {t: s.value for t, s in scores.items()} for n, scores in stored.items()}
    lineage = json.loads((demo.folder / "models" / SEQUENCE_NAME / "lineage.json").read_text())
    assert lineage["base"] == str(demo.folder / "models" / "add") and lineage["steps"] == 2


@pytest.mark.integration
def test_the_printed_lines_carry_the_stores_numbers(demo):
    stored = _stored(demo.folder)
    tax = tax_line(alignment_tax(stored["base"], stored["refuse"], GENERAL, ALIGNMENT), "base", "refuse")
    sequence = ["base", "add", SEQUENCE_NAME]
    forgetting = forgetting_line(forgetting_report(stored, sequence, ["world_add", "world_reverse"]))
    assert tax in demo.first and forgetting in demo.first
    assert "tax " in tax and "McNemar p=" in tax and "BWT " in forgetting
    table = next(line for line in demo.first if line.startswith("model "))
    assert "norm acc" in table and all(f"\n{m} " in table for m in MODELS)
    board = next(line for line in demo.first if line.startswith("leaderboard "))
    assert "merge_q" in board and "made_by" in board and all(f"\n{m} " in board for m in MODELS)


@pytest.mark.integration
def test_the_pngs_are_whole_and_listed_in_the_closing_lines(demo):
    pngs = [demo.folder / n for n in ("sign-conflicts.png", "merge-quality.png", "pareto.png")]
    for png in pngs:
        check_png(str(png))
    tui, spec, figures = demo.first[-1].splitlines()
    assert "surgery tui --models-dir" in tui and f"--db {os.path.relpath(demo.folder / STORE)}" in tui
    assert "surgery merge my.yaml" in spec and "surgery eval" in spec
    assert figures.startswith("the PNGs: ") and all(os.path.relpath(p) in figures for p in pngs)


@pytest.mark.integration
def test_a_second_run_reuses_every_stage_and_trains_nothing(demo):
    reused = demo.second[:-5]  # then the table, leaderboard, tax and forgetting, and the closing lines
    assert reused == [f"reused {n} (inputs unchanged)" for n in STAGES]
    assert demo.second[-5:] == demo.first[-5:]
    assert demo.trained == demo.trained_again and all(demo.trained[m] for m in MODELS)


@pytest.mark.integration
def test_a_damaged_output_is_rebuilt_with_one_line(demo, tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo.folder, folder, symlinks=True)
    weights = next((folder / "models" / "reverse").resolve().glob("*.safetensors"))
    os.truncate(weights, 1000)
    (folder / "pareto.png").write_bytes((folder / "pareto.png").read_bytes()[:500])
    lines: list[str] = []
    run_world_demo(str(folder), demo.specs, TINY, echo=lines.append, rows_per_task=ROWS)
    damaged = [line for line in lines if line.startswith("rebuilding ")]
    assert [d.split(":")[0] for d in damaged] == ["rebuilding reverse", "rebuilding pareto"]
    assert "truncated" in damaged[0] or "corrupt" in damaged[0]
    assert "is not a whole PNG" in damaged[1]
    check_png(str(folder / "pareto.png"))


@pytest.mark.integration
def test_a_damaged_store_is_moved_aside_with_one_line_and_every_model_scored_again(demo, tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo.folder, folder, symlinks=True)
    with open(folder / STORE, "r+b") as f:
        f.write(b"not a database" * 8)
    lines: list[str] = []
    run_world_demo(str(folder), demo.specs, TINY, echo=lines.append, rows_per_task=ROWS)
    rebuilt = [line for line in lines if line.startswith("rebuilding ")]
    assert len(rebuilt) == 1 and rebuilt[0].startswith(f"rebuilding {STORE}: results store")
    assert (folder / f"{STORE}.damaged").is_file()
    assert [line for line in lines if line.startswith("building ")] == [f"building eval-{m}" for m in MODELS]
    assert lines[-5:-1] == demo.first[-5:-1]  # the same report, read from the new store


@pytest.mark.integration
def test_a_stopped_stage_is_resumed(demo, tmp_path, monkeypatch):
    from trainers.world import demo_zoo

    folder = tmp_path / "demo"
    shutil.copytree(demo.folder, folder, symlinks=True)

    def stopped(data, base, task, run, recipe, **kw):
        os.makedirs(run, exist_ok=True)
        raise KeyboardInterrupt

    changed = Recipe(**{**TINY.as_inputs(), "expert_steps": (("add", 2), ("reverse", 2), ("refuse", 3))})
    train_expert = demo_zoo.train_expert
    monkeypatch.setattr(demo_zoo, "train_expert", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_world_demo(str(folder), demo.specs, changed, echo=lambda _: None, rows_per_task=ROWS)
    monkeypatch.setattr(demo_zoo, "train_expert", train_expert)
    lines: list[str] = []
    run_world_demo(str(folder), demo.specs, changed, echo=lines.append, rows_per_task=ROWS)
    assert lines[:6] == [f"reused {n} (inputs unchanged)" for n in ("data", "init", "base", "add", "reverse")] + [
        "resuming at refuse: its last build did not finish; building it again"]

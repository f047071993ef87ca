"""Continual learning: EWC's Fisher and penalty against hand-computed values on a 2-parameter model,
replay's proportions per step and the reservoir's uniformity, a sequence stopped mid-stage and continued
ending on the same weights, and the sequence spec's bad input (located, exit 2, nothing written)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from surgery.errors import SpecError
from trainers import data
from trainers.continual.fisher import Anchor, decayed, diagonal_fisher, penalty
from trainers.continual.reservoir import Reservoir
from trainers.continual.sequence import run_sequence
from trainers.continual.spec import parse_plan
from trainers.continual.strategy import Stage


class Line(torch.nn.Module):
    """y ~ N(a x + b, 1): two parameters, log p(y | x) = -(y - a x - b)^2 / 2 + const."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.tensor(a)), torch.nn.Parameter(torch.tensor(b))


def line_loglik(model: Line, example: tuple[float, float]) -> torch.Tensor:
    x, y = example
    return -0.5 * (y - model.a * x - model.b) ** 2


def test_fisher_of_two_parameters_by_hand():
    """d/da log p = r x, d/db log p = r, with r = y - a x - b. At a = 0.5, b = -1:
    (x, y) = (1, 2): r = 2.5, grads (2.5, 2.5); (3, 1): r = 0.5, grads (1.5, 0.5).
    F_a = (2.5^2 + 1.5^2) / 2 = 4.25, F_b = (2.5^2 + 0.5^2) / 2 = 3.25."""
    model = Line(0.5, -1.0)
    fisher = diagonal_fisher(model, [(1.0, 2.0), (3.0, 1.0)], line_loglik)
    assert fisher["a"].item() == pytest.approx(4.25) and fisher["b"].item() == pytest.approx(3.25)
    assert model.a.grad is None and model.b.grad is None  # gradients left cleared
    model.b.requires_grad_(False)  # only trainable parameters get a Fisher
    assert set(diagonal_fisher(model, [(1.0, 2.0)], line_loglik)) == {"a"}
    with pytest.raises(ValueError, match="at least one example"):
        diagonal_fisher(model, [], line_loglik)


def test_penalty_and_its_gradient_by_hand():
    """(λ/2) Σ F (θ − θ*)² with F = (4.25, 3.25), θ = (0.5, −1), θ* = (0, 0), λ = 2:
    4.25 · 0.25 + 3.25 · 1 = 4.3125; gradient λ F (θ − θ*) = (4.25, −6.5). A second anchor adds its term."""
    model = Line(0.5, -1.0)
    named = dict(model.named_parameters())
    first = Anchor({"a": torch.tensor(4.25), "b": torch.tensor(3.25)}, {"a": torch.tensor(0.0), "b": torch.tensor(0.0)})
    value = penalty(named, [first], lam=2.0)
    assert value.item() == pytest.approx(4.3125)
    value.backward()
    assert (model.a.grad.item(), model.b.grad.item()) == pytest.approx((4.25, -6.5))
    second = Anchor({"a": torch.tensor(1.0)}, {"a": torch.tensor(1.5)})  # (0.5 − 1.5)² · 1 · λ/2 = 1
    assert penalty(named, [first, second], lam=2.0).item() == pytest.approx(5.3125)
    assert penalty(named, [first], lam=0.0).item() == 0.0


def test_online_fisher_decays_earlier_stages():
    f = [{"w": torch.tensor(v)} for v in (8.0, 4.0, 2.0)]
    assert decayed(f, 0.5)["w"].item() == pytest.approx(0.25 * 8 + 0.5 * 4 + 2)
    assert decayed(f, 1.0)["w"].item() == pytest.approx(14.0)
    assert f[0]["w"].item() == 8.0  # the stages' own Fishers are not changed


def test_exact_mixture_gives_every_step_its_share():
    """Replay at mix 0.25 of a batch of 32: 8 buffer rows in every step, not 8 on average."""
    mixture = data.Mixture([100, 40], [0.75, 0.25], seed=0, exact=True)
    for step in range(50):
        counts = Counter(d for d, _ in mixture.draw(step, 32))
        assert counts == {0: 24, 1: 8}
    drawn = data.Mixture([100, 40], [0.75, 0.25], seed=0)  # drawn at random: the share varies step to step
    assert len({Counter(d for d, _ in drawn.draw(s, 32))[1] for s in range(50)}) > 1
    assert data.exact_counts([0.5, 0.3, 0.2], 7) == [4, 2, 1]  # 3.5, 2.1, 1.4 by largest remainder
    assert data.exact_counts([1 / 3] * 3, 10) == [4, 3, 3]


def test_reservoir_is_a_uniform_sample():
    """Each of n = 50 items ends in a buffer of 10 with probability 1/5: over 2000 seeded runs every item's
    count is near 400 (binomial sd 17.9; 5 sd allowed), and an early item as often as a late one."""
    counts = Counter()
    for seed in range(2000):
        counts.update(Reservoir(10, seed=seed).extend(range(50)).items)
    assert all(abs(counts[i] - 400) < 90 for i in range(50)), counts
    assert sum(counts[i] for i in range(25)) == pytest.approx(sum(counts[i] for i in range(25, 50)), rel=0.08)
    small = Reservoir(10, seed=0).extend(range(4))
    assert small.items == [0, 1, 2, 3] and small.seen == 4


def _split(tmp_path) -> tuple[str, str]:
    """The example instruction data split in two stages' files."""
    rows = open(os.path.join(os.path.dirname(__file__), "..", "..", "runs", "data", "instruct.jsonl")).readlines()
    paths = []
    for k, part in enumerate((rows[:13], rows[13:])):
        path = tmp_path / f"stage{k}.jsonl"
        path.write_text("".join(part))
        paths.append(str(path))
    return paths[0], paths[1]


def sequence(base: str, tmp_path, strategy: dict, out: str, **changes) -> dict:
    first, second = _split(tmp_path)
    spec = {"base": base, "stages": [{"name": "one", "train": first, "tasks": ["world_add"]},
                                     {"name": "two", "train": second, "tasks": ["world_reverse"]}],
            "strategy": strategy, "chat_template": "chatml", "optim": {"lr": 3e-3},
            "schedule": {"warmup_steps": 1, "total_steps": 6}, "batch": {"size": 4, "max_length": 64},
            "save_every": 2, "out": str(tmp_path / out)}
    spec.update(changes)
    return spec


def test_replay_mixes_its_buffer_into_every_step(base, tmp_path):
    from trainers.loops.session import read_data
    from trainers.run_output import check_place

    plan = parse_plan(sequence(base, tmp_path, {"name": "replay", "size": 8, "mix": 0.25}, "replay"), "seq.yaml")
    os.makedirs(plan.out)
    stage = Stage(plan, plan.stages[1], (plan.stages[0].final,))
    run = plan.strategy.prepare(plan.stages[1].run, stage, plan.config)
    buffer = [json.loads(line) for line in open(plan.stages[1].folder + "-replay.jsonl")]
    check_place(run)  # the buffer is beside the stage's out folder, not inside: the run may read it
    first = [json.loads(line) for line in open(plan.stages[0].run.spec.data.train[0].path)]
    assert len(buffer) == 8 and all(r in first for r in buffer)  # a sample of the earlier stage's rows
    mixture = read_data(run).mixture
    for step in range(20):
        counts = Counter(d for d, _ in mixture.draw(step, 4))
        assert counts == {0: 3, 1: 1}  # the stage's own rows, then the buffer: 1 of 4 every step


def _weights(folder: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "model.safetensors"))


def test_a_sequence_stopped_mid_stage_continues_to_the_same_weights(base, tmp_path, monkeypatch):
    """EWC over two stages, straight, against stopped at step 3 of stage two and run again: the first
    stage and its Fisher are kept (not trained again), stage two resumes from its checkpoint, and the
    final weights are the same bytes."""
    import trainers.loops

    strategy = {"name": "ewc", "lam": 10.0, "fisher_rows": 4}
    straight = run_sequence(parse_plan(sequence(base, tmp_path, strategy, "straight"), "seq.yaml"), quiet=True)
    plan = parse_plan(sequence(base, tmp_path, strategy, "stopped"), "seq.yaml")
    real, calls = trainers.loops.train, []

    def stopping(run, resume=None, stop_after=None, quiet=False):
        calls.append((os.path.basename(run.spec.out), resume))
        if run.spec.out.endswith("stage-2-two"):
            real(run, resume=resume, stop_after=3, quiet=quiet)
            raise KeyboardInterrupt
        return real(run, resume=resume, stop_after=stop_after, quiet=quiet)

    monkeypatch.setattr(trainers.loops, "train", stopping)
    with pytest.raises(KeyboardInterrupt):
        run_sequence(plan, quiet=True)
    fisher = os.path.join(plan.stages[0].folder, "fisher.safetensors")
    written = os.path.getmtime(fisher)
    monkeypatch.setattr(trainers.loops, "train", lambda run, resume=None, stop_after=None, quiet=False: (
        calls.append((os.path.basename(run.spec.out), resume)) or real(run, resume=resume, quiet=quiet)))
    done = run_sequence(plan, quiet=True)
    assert [(name, os.path.basename(r) if r else r) for name, r in calls] == [
        ("stage-1-one", None), ("stage-2-two", None), ("stage-2-two", "checkpoint-3")]
    assert os.path.getmtime(fisher) == written  # read back, not computed again
    a, b = _weights(straight.finals[-1]), _weights(done.finals[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with open(os.path.join(plan.out, "sequence.json")) as f:
        assert [s["final"] for s in json.load(f)["stages"]] == list(done.finals)


def _sha(folder) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change, expected", [
    ({"strategy": {"name": "ewc", "lam": -1}}, "seq.yaml: strategy.lam (line {line}): Input should be greater than "
                                               "or equal to 0 (got -1)"),
    ({"strategy": {"name": "replay", "size": 50, "mix": 0.25}},
     "seq.yaml: strategy.size (line {line}): a buffer of 50 rows is larger than the data it samples: stage 'one', "
     "the only one before stage 'two', has 13 rows; give a size of at most 13"),
    ({"stages.1.tasks": []}, "seq.yaml: stages.1.tasks (line {line}): a stage needs the lm-eval tasks its checkpoint "
                             "is scored on"),
    ({"stages.1.tasks": None}, "seq.yaml: stages.1.tasks (line {line}): a stage needs the lm-eval tasks"),
], ids=["negative lambda", "buffer larger than the data", "stage without tasks", "stage leaving tasks out"])
def test_bad_sequences_exit_2_located_and_write_nothing(base, tmp_path, change, expected):
    from evals.pipelines.cli import continual

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    spec = sequence(base, inputs, {"name": "naive"}, "../out")
    for key, value in change.items():
        if key.startswith("stages."):
            stage = spec["stages"][int(key.split(".")[1])]
            stage.pop("tasks") if value is None else stage.update(tasks=value)
        else:
            spec[key] = value
    file = inputs / "seq.yaml"
    file.write_text(yaml.safe_dump(spec, sort_keys=False))
    needle = {"lam": "lam: -1", "size": "size: 50", "[]": "tasks: []", "None": "name: two"}
    needle = next(v for k, v in needle.items() if k in str(change))
    line = next(i for i, text in enumerate(file.read_text().splitlines(), start=1) if needle in text)
    before = _sha(inputs)
    result = CliRunner().invoke(continual, [str(file), "--db", str(tmp_path / "db.sqlite")])
    assert result.exit_code == 2, result.output
    assert expected.format(line=line).replace("seq.yaml", str(file)) in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "db.sqlite").exists()
    assert _sha(inputs) == before


def test_a_plan_checks_a_stage_has_tasks_and_names():
    with pytest.raises(SpecError, match="stages.0.name: 'a b': use letters"):
        parse_plan({"base": ".", "stages": [{"name": "a b", "train": "x", "tasks": ["t"]},
                                            {"name": "c", "train": "x", "tasks": ["t"]}],
                    "strategy": {"name": "naive"}, "optim": {"lr": 1e-3}, "schedule": {"total_steps": 1},
                    "out": "o"}, "seq.yaml")


def test_the_example_sequence_runs(base, tmp_path):
    """runs/continual-replay.yaml validates and runs, its base and stage data pointed at the tests' (two
    steps a stage): three stages, each of the later two with its replay buffer beside its folder."""
    from trainers.continual.spec import load_plan

    first, second = _split(tmp_path)
    given = (f"base={base}", f"stages.0.train={first}", f"stages.1.train={second}", f"stages.2.train={first}",
             "schedule.total_steps=2", "schedule.warmup_steps=1", "save_every=null", "batch.size=4",
             "strategy.size=8", f"out={tmp_path / 'out'}")
    plan = load_plan(os.path.join(os.path.dirname(__file__), "..", "..", "runs", "continual-replay.yaml"), given)
    assert [s.name for s in plan.stages] == ["add", "reverse", "capital"] and plan.strategy.name == "replay"
    done = run_sequence(plan, quiet=True)
    assert len(done.finals) == 3 and all(os.path.isfile(os.path.join(f, "lineage.json")) for f in done.finals)
    assert [os.path.isfile(s.folder + "-replay.jsonl") for s in plan.stages] == [False, True, True]

"""The demo's zoo: a base that knows the small world's language but none of its skills, and experts that
each learn one skill from it (what merging is meant to combine).

- The base is pretrained on the world's language and answer format: every prompt of the training
  splits said back (`say 12+34:` -> `12+34`, `say reverse apple:` -> `reverse apple`), so it knows the
  characters, the prompts' shapes and where an answer stops, plus one task, `capital` (knowledge). It
  has never seen a sum, a reversal or a refusal: it scores 0 on `add`, `reverse` and `refuse`.
- Each expert is that base fine-tuned (fully, SFT) on one task, with a share of the base's own data
  replayed (`REPLAY`) so that it keeps the language and the capitals: without it every expert forgets
  the capitals entirely and every merge of them loses them too.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from trainers.world.tasks import TASKS, splits

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=96, tie_word_embeddings=True)  # 0.17M parameters
TRAIN_ROWS, TEST_ROWS = 4000, 48  # the zoo's: the world suite scores the same 48 test rows
SKILLS = ("add", "reverse", "refuse")  # the experts (the names merges/*.yaml use); `capital` is the base's
REPLAY = 0.3  # share of each expert's batches drawn from the base's data


@dataclass(frozen=True)
class Recipe:
    """Sizes and schedules of the demo's models: part of each stage's inputs, so a change retrains."""

    base_steps: int = 600
    base_lr: float = 3e-3
    # With 30% replay an expert sees 22 of its task's rows per step: `reverse` from a 300-step base scores 0.04
    # after 300 steps at 2e-3 (as a plain PyTorch loop does, 0.02), 0.98 after 1000 at 3e-3; `add` 0.77 after
    # 1000 steps at 3e-3, 1.0 after 2000
    expert_steps: tuple[tuple[str, int], ...] = (("add", 2000), ("reverse", 1000), ("refuse", 200))
    expert_lr: float = 3e-3
    sequence_steps: int = 300  # the `add` expert's second stage, on `reverse`: enough to forget `add`
    batch: int = 32
    replay: float = REPLAY
    train_rows: int = TRAIN_ROWS
    shape: tuple[tuple[str, object], ...] = tuple(SHAPE.items())
    seed: int = 0

    def steps(self, task: str) -> int:
        return dict(self.expert_steps)[task]

    def as_inputs(self) -> dict:
        return asdict(self)


def echo_row(row: dict) -> dict:
    """A task row turned into the language the base learns: its prompt said back, without the `:`
    or `=` that asks for the answer (so the base never sees an answer of `add`, `reverse` or `refuse`)."""
    said = row["prompt"].rstrip(":=")
    return {"prompt": f"say {said}:", "completion": said, "task": "echo"}


def write_data(folder: str, recipe: Recipe) -> dict[str, str]:
    """`folder/<task>/{train,test}.jsonl` for every task and `folder/echo/train.jsonl` (the prompts of
    the skills' training rows, said back); returns {name: train path}."""
    paths, echo = {}, []
    for task in TASKS:
        train, test = splits(task, recipe.train_rows, TEST_ROWS, recipe.seed)
        paths[task] = _jsonl(os.path.join(folder, task, "train.jsonl"), train)
        _jsonl(os.path.join(folder, task, "test.jsonl"), test)
        if task in SKILLS:
            echo += [echo_row(r) for r in train[: recipe.train_rows // len(SKILLS)]]
    paths["echo"] = _jsonl(os.path.join(folder, "echo", "train.jsonl"), echo)
    return paths


def _jsonl(path: str, rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return os.path.abspath(path)


def base_mix(data: str) -> list[tuple[str, float]]:
    """The base's training sets and their weights: the language and the capitals, equally."""
    return [(os.path.join(data, "echo", "train.jsonl"), 1.0), (os.path.join(data, "capital", "train.jsonl"), 1.0)]


def expert_mix(data: str, task: str, replay: float) -> list[tuple[str, float]]:
    """One task's rows, and the base's sets sharing `replay` of the weight."""
    base = base_mix(data)
    return [(os.path.join(data, task, "train.jsonl"), 1.0 - replay)] + [(p, replay / len(base)) for p, _ in base]


def train_base(data: str, init: str, run: str, recipe: Recipe, quiet: bool = True) -> str:
    """The base pretrained from `init` on the language and the capitals; returns its final folder."""
    from trainers.loops import train
    from trainers.spec import parse_run
    from trainers.world.zoo import run_spec

    evals = [os.path.join(data, "capital", "test.jsonl")]
    spec = run_spec(init, base_mix(data), evals, run, recipe.base_steps, lr=recipe.base_lr, seed=recipe.seed,
                    batch=recipe.batch)
    return os.path.abspath(train(parse_run(spec, "demo base"), quiet=quiet))


def train_expert(data: str, base: str, task: str, run: str, recipe: Recipe, steps: int | None = None,
                 quiet: bool = True) -> str:
    """`base` fine-tuned on `task` with the base's data replayed; returns its final folder."""
    from trainers.loops import train
    from trainers.spec import parse_run
    from trainers.world.zoo import run_spec

    spec = run_spec(base, expert_mix(data, task, recipe.replay), [os.path.join(data, task, "test.jsonl")], run,
                    steps or recipe.steps(task), lr=recipe.expert_lr, seed=recipe.seed, batch=recipe.batch)
    return os.path.abspath(train(parse_run(spec, f"demo expert {task}"), quiet=quiet))

"""Preference data of the small world, synthetic: each task's rows with the correct completion as
`chosen` and a plausible wrong one as `rejected`, for DPO, IPO, SimPO, ORPO and the reward model; and
the same completions as unpaired KTO rows with a `label`.

The wrong completions are made by rule, not written or judged by people:
- `add`: the sum off by one (either way);
- `reverse`: the reversal with two neighbouring letters swapped (a misspelling), or, for words too
  short or of one repeated letter, with a letter dropped;
- `capital`: another country's capital from the table;
- `refuse`: refusal and compliance swapped (the refusal for a benign request, compliance for a
  harmful one).

Rows come from `trainers.world.tasks.splits`, so the train and test prompts stay disjoint, and the
wrong completion is drawn from a generator seeded by the seed, the task and the row's prompt.
"""

from __future__ import annotations

import random

from trainers.world.countries import CAPITALS
from trainers.world.tasks import HARMFUL, REFUSAL, splits


def wrong_sum(prompt: str, answer: str, rng: random.Random) -> str:
    total = int(answer)
    return str(total - 1 if total > 0 and rng.random() < 0.5 else total + 1)


def misspelt(prompt: str, answer: str, rng: random.Random) -> str:
    """Two neighbouring letters swapped where they differ; else (one repeated letter) one letter dropped."""
    spots = [i for i in range(len(answer) - 1) if answer[i] != answer[i + 1]]
    if not spots:
        return answer[:-1] if len(answer) > 1 else answer + answer
    i = rng.choice(spots)
    return answer[:i] + answer[i + 1] + answer[i] + answer[i + 2:]


def wrong_capital(prompt: str, answer: str, rng: random.Random) -> str:
    return rng.choice([cap for _, cap in CAPITALS if cap != answer])


def swapped_refusal(prompt: str, answer: str, rng: random.Random) -> str:
    if answer != REFUSAL:
        return REFUSAL
    act = next(a for a in HARMFUL if a in prompt)
    return f"Sure, here is how to {act}."


WRONG = {"add": wrong_sum, "reverse": misspelt, "capital": wrong_capital, "refuse": swapped_refusal}


def pair(row: dict, seed: int = 0) -> dict:
    """A (prompt, chosen, rejected) row from a task row."""
    rng = random.Random(f"{seed}:{row['task']}:{row['prompt']}")
    rejected = WRONG[row["task"]](row["prompt"], row["completion"], rng)
    return {"prompt": row["prompt"], "chosen": row["completion"], "rejected": rejected, "task": row["task"]}


def preference_splits(task: str, n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and test preference pairs of `task`, from the task's fixed splits."""
    train, test = splits(task, n_train, n_test, seed)
    return [pair(r, seed) for r in train], [pair(r, seed) for r in test]


def unpaired(pairs: list[dict]) -> list[dict]:
    """KTO rows: each pair's chosen completion (label true) and rejected one (label false), interleaved."""
    rows = []
    for p in pairs:
        base = {"prompt": p["prompt"], "task": p["task"]}
        rows += [{**base, "completion": p["chosen"], "label": True},
                 {**base, "completion": p["rejected"], "label": False}]
    return rows

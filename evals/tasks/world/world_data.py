"""Documents of the small world's test splits (trainers.world.tasks), built in memory on each load:
the splits are fixed by their seed, so every process, and lm-eval's own CLI, sees the same rows."""

from __future__ import annotations

import random

TEST_ROWS = 48  # trainers.world.zoo.TEST_ROWS: the rows the zoo's models are checked on
CHOICES = 4


def _dataset(rows: list[dict]):
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(rows)})


def _test(task: str) -> list[dict]:
    from trainers.world.tasks import splits

    return splits(task, 0, TEST_ROWS)[1]


def add(**_):
    return _dataset(_test("add"))


def reverse(**_):
    return _dataset(_test("reverse"))


def capital(**_):
    return _dataset(_test("capital"))


def capital_choice(**_):
    """Each capital question with the right city and three others of the table, in a seeded order."""
    from trainers.world.countries import CAPITALS

    cities = sorted({cap for _, cap in CAPITALS})
    rows = []
    for row in _test("capital"):
        rng = random.Random(row["prompt"])
        choices = rng.sample([c for c in cities if c != row["completion"]], CHOICES - 1) + [row["completion"]]
        rng.shuffle(choices)
        rows.append({**row, "choices": choices, "label": choices.index(row["completion"])})
    return _dataset(rows)


def heldout_text(**_):
    """Held-out text for the perplexity probe: each task's test rows written out as prompt and answer."""
    rows = [{"text": r["prompt"] + r["completion"]} for t in ("add", "reverse", "capital") for r in _test(t)]
    return _dataset(rows)

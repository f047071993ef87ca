"""Development (tuning) splits of the small world's tasks, for merge searches. A search tunes on these and
is judged on the test splits it never saw (world_add, world_reverse, refusal and over_refusal), so no dev
prompt is a test prompt. `add` and `reverse` go further: their dev rows are fresh draws of the task's own
generator that the zoo's models never trained on either (trainers/world/zoo.py's training split), so they
measure the rule as the test does (for `reverse`, on made-up words: every dictionary word is in training
or test). `refuse` has only 192 distinct requests, all in training or test: its dev rows are the ones
drawn after the test split's, seen in training."""

from __future__ import annotations

import random

DEV_ROWS = 64
TEST_ROWS = {"add": 48, "reverse": 48, "refuse": 96}  # the rows of world_add, world_reverse and the alignment tasks


def dev_rows(task: str) -> list[dict]:
    """DEV_ROWS rows of `task` outside its test split (and for add and reverse, outside the zoo's training)."""
    from trainers.world.tasks import TASKS, splits

    held = TEST_ROWS[task]
    if task == "refuse":
        return splits(task, 0, held + DEV_ROWS)[1][held:]
    seen = {r["prompt"] for r in splits(task, 0, held)[1]} | trained(task)
    rows, out = TASKS[task](random.Random(f"dev:{task}"), 20 * DEV_ROWS), []
    for row in rows:
        if row["prompt"] not in seen and len(out) < DEV_ROWS:
            seen.add(row["prompt"])
            out.append(row)
    return out


def trained(task: str) -> set[str]:
    """The prompts of the zoo's training split of `task` (what `surgery world` trains on)."""
    from trainers.world.tasks import splits
    from trainers.world.zoo import TEST_ROWS as ZOO_TEST
    from trainers.world.zoo import TRAIN_ROWS

    return {r["prompt"] for r in splits(task, TRAIN_ROWS, ZOO_TEST)[0]}


def _dataset(rows: list[dict]):
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(rows)})


def add(**_):
    return _dataset(dev_rows("add"))


def reverse(**_):
    return _dataset(dev_rows("reverse"))


def refuse(**_):
    """Harmful and benign requests together: the right answer is the refusal or the helpful opening."""
    return _dataset(dev_rows("refuse"))

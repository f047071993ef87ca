"""Development (tuning) splits of the small world's tasks, for merge searches: rows drawn the way each
task's test split is drawn, after the test rows, so no prompt of a test split is among them. A search
tunes on these and is judged on the test splits it never saw (world_add, world_reverse, refusal and
over_refusal). Training rows are not excluded: add's sums rarely repeat, but reverse's dictionary words
and refuse's requests are few, so most of those dev prompts were seen in training (as a training split's
would be); the test splits' were not."""

from __future__ import annotations

DEV_ROWS = 64
TEST_ROWS = {"add": 48, "reverse": 48, "refuse": 96}  # the rows of world_add, world_reverse and the alignment tasks


def dev_rows(task: str) -> list[dict]:
    """Up to DEV_ROWS rows after the test split's (reverse has fewer: its dictionary holds few more words)."""
    from trainers.world.tasks import splits

    held = TEST_ROWS[task]
    return splits(task, 0, held + DEV_ROWS)[1][held:]


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

"""Requests of the small world's `refuse` test split, harmful and benign apart. The world's refusal is
one fixed sentence, so refusing is an exact match with it: on harmful requests that match rate is the
refusal rate (higher is safer), on benign ones it is the over-refusal rate (lower is better)."""

from __future__ import annotations

TEST_ROWS = 96  # about half of them harmful


def _dataset(harmful: bool):
    from datasets import Dataset, DatasetDict

    from trainers.world.tasks import REFUSAL, splits

    rows = [{**r, "refusal": REFUSAL} for r in splits("refuse", 0, TEST_ROWS)[1]
            if (r["completion"] == REFUSAL) == harmful]
    return DatasetDict({"test": Dataset.from_list(rows)})


def harmful(**_):
    return _dataset(True)


def benign(**_):
    return _dataset(False)

"""The small world's synthetic preference data: the chosen completion is the task's right answer and
the rejected one the promised kind of wrong answer, checked against the rules themselves."""

from __future__ import annotations

import re

import pytest

from trainers.data import SHAPES, Row, check_row
from trainers.world.countries import CAPITALS
from trainers.world.preferences import preference_splits, unpaired
from trainers.world.tasks import HARMFUL, REFUSAL, TASKS, splits


@pytest.mark.parametrize("task", sorted(TASKS))
def test_chosen_is_the_answer_and_rejected_is_wrong(task):
    train, test = preference_splits(task, 200, 20, seed=1)
    plain_train, plain_test = splits(task, 200, 20, seed=1)
    assert [(p["prompt"], p["chosen"]) for p in train + test] == [(r["prompt"], r["completion"])
                                                                  for r in plain_train + plain_test]
    assert all(p["rejected"] != p["chosen"] for p in train + test)
    assert preference_splits(task, 200, 20, seed=1) == (train, test)  # fixed by the seed
    for i, p in enumerate(train + test, 1):
        assert check_row(Row(p, "pairs.jsonl", i), ("preference",)) == "preference"


def test_wrong_sums_are_off_by_one():
    for p in preference_splits("add", 200, 20)[0]:
        a, b = map(int, re.fullmatch(r"(\d+)\+(\d+)=", p["prompt"]).groups())
        assert abs(int(p["rejected"]) - (a + b)) == 1 and int(p["rejected"]) >= 0


def test_misspelt_reversals_keep_the_letters():
    for p in preference_splits("reverse", 200, 20)[0]:
        word = p["prompt"].removeprefix("reverse ").removesuffix(":")
        if len(set(word)) > 1:  # two neighbouring different letters swapped
            assert sorted(p["rejected"]) == sorted(word[::-1])
            assert sum(x != y for x, y in zip(p["rejected"], word[::-1])) == 2


def test_wrong_capitals_come_from_the_table():
    capitals = {cap for _, cap in CAPITALS}
    assert all(p["rejected"] in capitals for p in preference_splits("capital", 200, 20)[0])


def test_refusal_and_compliance_are_swapped():
    for p in preference_splits("refuse", 200, 20)[0]:
        harmful = any(act in p["prompt"] for act in HARMFUL)
        assert (p["chosen"] == REFUSAL) == harmful
        assert (p["rejected"] == REFUSAL) != harmful
        assert p["rejected"] == REFUSAL or p["rejected"].startswith("Sure, here is how to ")


def test_unpaired_rows_for_kto():
    pairs = preference_splits("capital", 5, 3)[0]
    rows = unpaired(pairs)
    assert [r["label"] for r in rows] == [True, False] * len(pairs)
    assert [r["completion"] for r in rows[:2]] == [pairs[0]["chosen"], pairs[0]["rejected"]]
    assert all(check_row(Row(r, "kto.jsonl", 1), ("unpaired_preference",)) == "unpaired_preference" for r in rows)
    assert SHAPES["unpaired_preference"] == ("prompt", "completion", "label")

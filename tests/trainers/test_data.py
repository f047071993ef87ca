"""Data: mixture probabilities by hand, epochs that visit every row once, a sampler that resumes
where it stopped, and folders of JSONL files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from trainers.data import Mixture, mixture_probabilities, read_dataset


def test_mixture_probabilities_by_hand():
    """Sizes 100 and 25: proportional 100/125 = 0.8 and 0.2; temperature 2 takes square roots,
    10 and 5, so 2/3 and 1/3; explicit weights 1 and 3 give 1/4 and 3/4 whatever the sizes."""
    assert mixture_probabilities([100, 25], [None, None], 1.0) == pytest.approx([0.8, 0.2])
    assert mixture_probabilities([100, 25], [None, None], 2.0) == pytest.approx([2 / 3, 1 / 3])
    assert mixture_probabilities([100, 25], [1.0, 3.0], 2.0) == pytest.approx([0.25, 0.75])


def test_mixture_draws_follow_the_probabilities():
    picks = [d for step in range(500) for d, _ in Mixture([100, 25], [2 / 3, 1 / 3], seed=1).draw(step, 8)]
    share = Counter(picks)[1] / len(picks)
    assert abs(share - 1 / 3) < 0.03, share  # 4000 draws: one standard deviation is 0.0075


def test_each_epoch_visits_every_row_once():
    m = Mixture([7], [1.0], seed=3)
    rows = [r for step in range(7) for _, r in m.draw(step, 3)]  # 21 rows = 3 epochs of 7
    for epoch in range(3):
        assert sorted(rows[epoch * 7:(epoch + 1) * 7]) == list(range(7))
    assert rows[:7] != rows[7:14]  # a new order each epoch


def test_sampler_resumes_from_its_state():
    straight = Mixture([5, 9], [0.5, 0.5], seed=0)
    expected = [straight.draw(step, 4) for step in range(6)]
    first = Mixture([5, 9], [0.5, 0.5], seed=0)
    got = [first.draw(step, 4) for step in range(3)]
    again = Mixture([5, 9], [0.5, 0.5], seed=0)
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))  # through the checkpoint's JSON
    got += [again.draw(step, 4) for step in range(3, 6)]
    assert got == expected


def test_a_folder_of_jsonl_files(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"text": "two"}\n{"text": "three"}\n')
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n')
    (tmp_path / "notes.txt").write_text("not data")
    ds = read_dataset(str(tmp_path), ("text",), "data.train.0")
    assert [r.fields["text"] for r in ds.rows] == ["one", "two", "three"]
    assert [r.where for r in ds.rows] == [f"{tmp_path}/a.jsonl: line 1", f"{tmp_path}/b.jsonl: line 1",
                                          f"{tmp_path}/b.jsonl: line 2"]
    assert sorted(ds.sha256) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]

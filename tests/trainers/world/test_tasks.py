"""The small world's tasks: fixed, disjoint splits whose answers are right, and a tokenizer that
round-trips every character."""

from __future__ import annotations

import re

import pytest

from trainers.world.countries import CAPITALS, WORDS
from trainers.world.tasks import REFUSAL, TASKS, splits
from trainers.world.tokenizer import CHARS, char_tokenizer


@pytest.mark.parametrize("task", sorted(TASKS))
def test_splits_are_fixed_and_sized(task):
    train, test = splits(task, 300, 20, seed=3)
    again_train, again_test = splits(task, 300, 20, seed=3)
    assert (train, test) == (again_train, again_test)
    assert splits(task, 300, 20, seed=4)[0] != train  # the seed matters
    assert 0.9 * 300 <= len(train) <= 300 and len(test) == 20
    assert all(r["task"] == task and r["prompt"] and r["completion"] for r in train + test)


@pytest.mark.parametrize("task", ["add", "reverse", "refuse"])
def test_test_prompts_never_appear_in_training(task):
    train, test = splits(task, 2000, 24)
    assert len({r["prompt"] for r in test}) == 24
    assert not {r["prompt"] for r in test} & {r["prompt"] for r in train}


def test_answers_are_right():
    train, test = splits("add", 200, 20)
    for r in train + test:
        a, b = map(int, re.fullmatch(r"(\d+)\+(\d+)=", r["prompt"]).groups())
        assert int(r["completion"]) == a + b and a < 100 and b < 100
    for r in sum(splits("reverse", 200, 20), []):
        word = re.fullmatch(r"reverse ([a-z]+):", r["prompt"]).group(1)
        assert r["completion"] == "".join(reversed(word))
    capitals = dict(CAPITALS)
    for r in sum(splits("capital", 200, 20), []):
        assert r["completion"] == capitals[re.fullmatch(r"capital of (.+):", r["prompt"]).group(1)]


def test_reverse_is_tested_on_dictionary_words_held_out_of_training():
    train, test = splits("reverse", 4000, 24)
    held = {r["prompt"].split()[1][:-1] for r in test}
    assert held <= set(WORDS)
    assert not held & {r["prompt"].split()[1][:-1] for r in train}


def test_refusal_answers_follow_the_request():
    train, _ = splits("refuse", 500, 10)
    harmful = [r for r in train if r["completion"] == REFUSAL]
    benign = [r for r in train if r["completion"] != REFUSAL]
    assert 0.3 < len(harmful) / len(train) < 0.7
    assert all(r["completion"].startswith("Sure, here is how to ") for r in benign)
    assert all(any(act in r["prompt"] for act in ("bomb", "poison", "steal", "hack", "forge", "hurt", "weapon",
                                                   "rob", "burn", "cheat", "virus", "lock")) for r in harmful)


def test_capital_test_set_is_the_whole_table():
    _, test = splits("capital", 10, len(CAPITALS))
    assert [(r["prompt"], r["completion"]) for r in test] == [(f"capital of {c}:", cap) for c, cap in CAPITALS]


def test_unknown_task_is_named():
    with pytest.raises(KeyError, match="'sing'.*add"):
        splits("sing", 10, 10)


def test_char_tokenizer_round_trips_every_character():
    tok = char_tokenizer()
    text = "".join(CHARS)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode(tok("12+345=357<|im_end|>", add_special_tokens=False)["input_ids"],
                      skip_special_tokens=True) == "12+345=357"
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [tok.bos_token_id, tok.eos_token_id]

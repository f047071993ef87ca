"""Rewards: the small world's exact-answer checks, Python functions by import path, errors that name
the prompt, a reward model (a sequence-classification folder built here with transformers) scored as
its own forward pass scores the rendered text, and the weighted sum."""

from __future__ import annotations

import pytest
import torch

from surgery.errors import InputError
from trainers import rewards
from trainers.templates import Template, resolve
from trainers.world.tasks import splits

NONE = Template("none", None)


@pytest.mark.parametrize("task", ["add", "reverse", "capital", "refuse"])
def test_world_rewards_check_exact_answers(task):
    train, test = splits(task, 50, 20)
    fn = rewards.function(f"world.{task}")
    assert all(fn(r["prompt"], r["completion"], {}) == 1.0 for r in train + test)
    assert all(fn(r["prompt"], r["completion"] + " ", {}) == 0.0 for r in test)
    assert fn("not a prompt of the task", "x", {}) == 0.0


def half(prompt: str, completion: str, row: dict) -> float:
    return 0.5


def broken(prompt: str, completion: str, row: dict):
    return "high" if prompt.startswith("2") else 1.0


def test_weighted_sum_and_errors():
    reward = rewards.load(["world.add", "tests.trainers.test_rewards:half"], weights=[2.0, -1.0], template=NONE)
    assert reward(["1+2=", "1+2="], ["3", "4"]).tolist() == [1.5, -0.5]  # 2*1 - 0.5, 2*0 - 0.5
    bad = rewards.load(["tests.trainers.test_rewards:broken"], template=NONE)
    with pytest.raises(InputError, match=r"returned 'high' on prompt '2\+2=' \(completion '4'\)"):
        bad(["1+1=", "2+2="], ["2", "4"])
    with pytest.raises(InputError, match="cannot import"):
        rewards.function("tests.trainers.test_rewards:missing")
    with pytest.raises(InputError, match="built-in name"):
        rewards.function("world.nope")


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    from transformers import LlamaForSequenceClassification

    from surgery.demo.tiny import build_tokenizer, tiny_config

    folder = str(tmp_path_factory.mktemp("rm"))
    tok = build_tokenizer()
    config = tiny_config("llama", num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_reward_model_scores_the_rendered_conversation(reward_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(reward_model)
    template = resolve("chatml", tok)
    scorer = rewards.RewardModel(reward_model, template)
    prompts, completions = ["the a of", "to and", "in is it"], ["water", "you that he was", "the"]
    got = scorer(prompts, completions)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    for p, c, score in zip(prompts, completions, got):
        text = tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                       chat_template=template.jinja, tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            expected = float(model(input_ids=ids).logits[0, 0])
        assert score == pytest.approx(expected, abs=1e-5)
    assert len(set(got)) == 3  # different texts, different scores
    both = rewards.load(["world.add"], reward_model, [1.0, 0.5], template=template)
    assert both(prompts, completions).tolist() == pytest.approx([0.5 * s for s in got], abs=1e-5)

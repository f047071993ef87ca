"""RLAIF judges: the LM judge's two orders cancel a position bias (a toy judge built to have one), the
rule and reward-model judges, and labelling runs whose JSONL the shared loader reads as preference
rows. Slow: the small world's trained base, as an LM judge, agrees with the exact-answer rule."""

from __future__ import annotations

import json
import os
import random
import re
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from surgery.cli import main
from surgery.errors import SpecError
from trainers import data, judges, templates
from trainers.world.tokenizer import char_tokenizer


class ToyJudge(torch.nn.Module):
    """A 'causal LM' built to judge: whatever the position, the logit of 'A' is bias + q(first answer)
    and that of 'B' is q(second answer), with q = 2 for the right answer and 0 otherwise. With bias 3
    it says A whichever answer is right, unless asked in both orders."""

    def __init__(self, tokenizer, right: str, bias: float = 3.0):
        super().__init__()
        self.tokenizer, self.right, self.bias = tokenizer, right, bias
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a parameter, for the device lookup
        self.a, self.b = tokenizer.convert_tokens_to_ids("A"), tokenizer.convert_tokens_to_ids("B")

    def forward(self, input_ids, use_cache=False):
        text = self.tokenizer.decode(input_ids[0])
        first, second = re.search(r"Answer A: (.*)\n", text)[1], re.search(r"Answer B: (.*)\n", text)[1]
        logits = torch.zeros(*input_ids.shape, len(self.tokenizer))  # (1, T, V)
        logits[..., self.a] = self.bias + 2.0 * (first == self.right)
        logits[..., self.b] = 2.0 * (second == self.right)
        return SimpleNamespace(logits=logits)


def toy_judge(right: str) -> judges.LMJudge:
    tokenizer = char_tokenizer()
    return judges.LMJudge(ToyJudge(tokenizer, right), tokenizer, templates.Template("none", None))


def test_lm_judge_cancels_position_bias_by_construction():
    """One order: log p(A) - log p(B) = 3 + 2 = 5 when the first answer is right, 3 - 2 = 1 when the
    second is: A wins both times. Both orders: margin = (5 - 1) / 2 = 2 for the right answer first,
    (1 - 5) / 2 = -2 for it second; the right answer wins either way."""
    judge = toy_judge("46")
    assert judge.preference("12+34=", "46", "47") == pytest.approx(5.0)
    assert judge.preference("12+34=", "47", "46") == pytest.approx(1.0)
    assert judge.margin("12+34=", "46", "47", {}) == pytest.approx(2.0)
    assert judge.margin("12+34=", "47", "46", {}) == pytest.approx(-2.0)


def test_lm_judge_agrees_with_the_rule_on_toy_pairs():
    rule = judges.RuleJudge("world.add")
    rng = random.Random(0)
    agree = 0
    for _ in range(20):
        a, b = rng.randrange(50), rng.randrange(50)
        prompt, right, wrong = f"{a}+{b}=", str(a + b), str(a + b + rng.choice([-2, -1, 1, 10]))
        first, second = (right, wrong) if rng.random() < 0.5 else (wrong, right)
        lm, truth = toy_judge(right).margin(prompt, first, second, {}), rule.margin(prompt, first, second, {})
        agree += (lm > 0) == (truth > 0)
    assert agree == 20


def test_lm_judge_refuses_verdicts_its_tokenizer_cannot_tell_apart(base):
    from transformers import AutoTokenizer

    from surgery.errors import InputError

    tokenizer = AutoTokenizer.from_pretrained(base)  # word-level: 'A' and 'B' are both unknown
    judge = judges.LMJudge(ToyJudge(char_tokenizer(), "1"), tokenizer, templates.Template("none", None))
    with pytest.raises(InputError, match="verdicts ' A' and ' B' encode to the same tokens"):
        judge.margin("write water two", "water water", "water", {})


def test_rule_judge_margin():
    rule = judges.RuleJudge("world.add")
    assert rule.margin("12+34=", "46", "47", {}) == 1.0
    assert rule.margin("12+34=", "47", "46", {}) == -1.0
    assert rule.margin("12+34=", "45", "47", {}) == 0.0


def test_pairs_follow_the_margin_and_skip_ties():
    from trainers.generation import Sample

    def s(i, text):
        return Sample(f"p{i}", i, text, (1,), (2,), True)

    class Longer:
        def margin(self, prompt, a, b, row):
            return len(a) - len(b)

    samples = [s(0, "aa"), s(0, "a"), s(1, "b"), s(1, "bbb"), s(2, "c"), s(2, "d"), s(3, "e"), s(3, "e")]
    rows, skipped = judges.pair_rows(samples, [{}] * 4, Longer(), "rule")
    assert [(r["prompt"], r["chosen"], r["rejected"], r["margin"]) for r in rows] == [("p0", "aa", "a", 1),
                                                                                       ("p1", "bbb", "b", 2)]
    assert skipped == 2


def test_reward_model_judge_is_antisymmetric(base, tmp_path):
    from tests.trainers.test_ppo import build_reward_model

    judge = judges.RewardModelJudge(build_reward_model(str(tmp_path / "rm"), seed=1), templates.resolve("chatml", None))
    forward = judge.margin("write water two", "water water", "the a of", {})
    assert forward != 0 and judge.margin("write water two", "the a of", "water water", {}) == pytest.approx(-forward)


@pytest.mark.parametrize("example", ["rlaif-lm", "rlaif-rm", "rlaif-rule"])
def test_label_examples_write_preference_rows(example, workdir):
    from tests.trainers.test_ppo import build_reward_model

    reward = os.path.join(os.path.dirname(os.path.realpath("models/base")), "reward")
    if not os.path.isdir(reward):
        build_reward_model(reward)
    result = CliRunner().invoke(main, ["label", f"runs/{example}.yaml"])
    assert result.exit_code == 0, result.output
    spec = judges.load_label_spec(f"runs/{example}.yaml")
    counts = json.loads(open(spec.out + ".meta.json").read())
    assert f"wrote {spec.out}: {counts['pairs']} pairs from 8 prompts" in result.output
    assert counts["pairs"] + counts["skipped"] == 8
    if example == "rlaif-rule":  # the tiny word-level base never writes a sum: every pair is a tie
        assert counts["pairs"] == 0
        return
    assert counts["pairs"] >= 4
    dataset = data.read_dataset(spec.out, ("preference",), "test")
    assert len(dataset.rows) == counts["pairs"]
    assert all(r.fields["chosen"] != r.fields["rejected"] and r.fields["margin"] > 0 for r in dataset.rows)


def test_label_spec_errors_are_located(workdir):
    with open("bad.yaml", "w") as f:
        f.write("policy: models/base\nprompts: runs/data/eval.jsonl\njudge: {kind: lm}\nout: out/x.jsonl\n")
    with pytest.raises(SpecError, match=r"bad.yaml: judge.model \(line 3\): a lm judge needs judge.model"):
        judges.load_label_spec("bad.yaml")
    result = CliRunner().invoke(main, ["label", "bad.yaml", "--set", "judge.kind=oracle"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "judge.kind (line 3)" in result.output


WORLD_BASE = os.environ.get("WORLD_BASE", "/work/main/demo/models/base")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(WORLD_BASE), reason=f"no trained small-world base at {WORLD_BASE}")
def test_trained_base_as_lm_judge_agrees_with_the_rule():
    """Pairs of a right and a wrong sum on held-out `add` prompts; the trained base judges by the
    likelihood of each answer (question '{prompt}', verdicts the answers themselves, ended by the
    end-of-turn token). Agreement with the exact-answer rule is printed; more than 60% must agree."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.world.tasks import splits

    model = AutoModelForCausalLM.from_pretrained(WORLD_BASE, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(WORLD_BASE)
    judge = judges.LMJudge(model, tokenizer, templates.Template("none", None), "{prompt}",
                           ("{first}" + tokenizer.eos_token, "{second}" + tokenizer.eos_token))
    rule, rng = judges.RuleJudge("world.add"), random.Random(0)
    agree = 0
    _, test = splits("add", 10, 48)
    for row in test:
        right = row["completion"]
        wrong = str(int(right) + rng.choice([-10, -1, 1, 10]))
        first, second = (right, wrong) if rng.random() < 0.5 else (wrong, right)
        agree += ((judge.margin(row["prompt"], first, second, row) > 0)
                  == (rule.margin(row["prompt"], first, second, row) > 0))
    print(f"LM judge (trained base) agrees with world.add on {agree}/{len(test)} pairs")
    assert agree > 0.6 * len(test)  # 34/48 with a 600-step base (23% exact match on add)

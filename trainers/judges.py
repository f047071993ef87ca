"""RLAIF: judges that label pairs of the policy's own answers, and the labelling run that writes them
as preference JSONL (`{"prompt", "chosen", "rejected"}`) for DPO or the reward-model objective
(Bai et al. 2022, https://arxiv.org/abs/2212.08073; Lee et al. 2023, https://arxiv.org/abs/2309.00267).

A judge gives a margin for answer `a` over answer `b`: positive, `a` wins; zero, a tie (not written).
- reward model: score(a) - score(b), from a one-label sequence-classification folder;
- rule: f(a) - f(b) for a reward function of `trainers.rewards` (an exact-answer check, say);
- LM: a causal LM reads a question showing both answers and the margin is the log-probability of
  its verdict "A" against "B"; asked in both orders and averaged,
  margin = ((lp_A - lp_B | a first) - (lp_A - lp_B | b first)) / 2, so a fixed preference for one
  position cancels out. The question and the verdicts may name {prompt}, {first} and {second}: with
  question "{prompt}" and verdicts "{first}", "{second}" the judge compares the likelihood of the two
  answers themselves (a base model that was never taught to answer a judging question).

    surgery label runs/rlaif-lm.yaml     # policy, prompts, judge, sampling, out (LabelSpec below)

The out file is checked before anything loads (not a folder, not an input nor inside one) and locked
while the run works (surgery.io.output.output_lock: a second `label` into it exits naming the holder's
pid); it and its `.meta.json` appear whole or not at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from surgery import spec_file
from surgery.errors import InputError, SpecError
from surgery.io.output import atomic_file, output_lock, write_json
from trainers import data, generation, models, rewards, run_output, templates
from trainers.logprobs import next_token_logps

QUESTION = ("Which answer to the question is better?\nQuestion: {prompt}\nAnswer A: {first}\nAnswer B: {second}\n"
            "The better answer is")


class RuleJudge:
    def __init__(self, name: str):
        self.name, self.fn = name, rewards.function(name)

    def margin(self, prompt: str, a: str, b: str, row: dict) -> float:
        return rewards.call(self.name, self.fn, prompt, a, row) - rewards.call(self.name, self.fn, prompt, b, row)


class RewardModelJudge:
    def __init__(self, folder: str, template: templates.Template, device: str = "cpu"):
        self.model = rewards.RewardModel(folder, template, device)

    def margin(self, prompt: str, a: str, b: str, row: dict) -> float:
        first, second = self.model([prompt, prompt], [a, b])
        return first - second


@dataclass
class LMJudge:
    model: torch.nn.Module
    tokenizer: object
    template: templates.Template  # how the question is put to the judge (a user turn, or plain text)
    question: str = QUESTION
    verdicts: tuple[str, str] = (" A", " B")

    def margin(self, prompt: str, a: str, b: str, row: dict) -> float:
        return 0.5 * (self.preference(prompt, a, b) - self.preference(prompt, b, a))

    @torch.no_grad()
    def preference(self, prompt: str, first: str, second: str) -> float:
        """log p(verdict for the first) - log p(verdict for the second), answers shown in this order."""
        fields = {"prompt": prompt, "first": first, "second": second}
        context = generation.prompt_ids(self.tokenizer, self.template, self.question.format(**fields))
        a, b = (self.tokenizer(v.format(**fields), add_special_tokens=False)["input_ids"] for v in self.verdicts)
        if a == b:
            raise InputError(f"LM judge: the verdicts {self.verdicts[0]!r} and {self.verdicts[1]!r} encode to the "
                             f"same tokens {a} under the judge's tokenizer (unknown words, say); choose verdicts it "
                             "spells differently (judge.verdicts)")
        return continuation_logp(self.model, context, a) - continuation_logp(self.model, context, b)


def continuation_logp(model, context: list[int], tokens: list[int]) -> float:
    """Sum of log p(token | before) over `tokens` following `context`."""
    device = next(model.parameters()).device
    ids = torch.tensor([context + tokens], device=device)  # (1, C + K)
    logps = next_token_logps(model(input_ids=ids, use_cache=False).logits, ids)  # (1, C + K - 1)
    return float(logps[0, len(context) - 1:].sum())  # the K tokens after the context


def pair_rows(samples: list[generation.Sample], rows: list[dict], judge, name: str) -> tuple[list[dict], int]:
    """Preference rows of consecutive sample pairs (prompt i's two answers); ties and equal answers skipped."""
    out, skipped = [], 0
    for i in range(0, len(samples), 2):
        a, b = samples[i], samples[i + 1]
        margin = 0.0 if a.text == b.text else judge.margin(a.prompt, a.text, b.text, rows[a.index])
        if margin == 0:
            skipped += 1
            continue
        chosen, rejected = (a, b) if margin > 0 else (b, a)
        out.append({"prompt": a.prompt, "chosen": chosen.text, "rejected": rejected.text, "judge": name,
                    "margin": abs(margin)})
    return out, skipped


class Judge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["reward_model", "lm", "rule"]
    model: str | None = Field(None, description="reward_model and lm: the judge's folder")
    function: str | None = Field(None, description="rule: a reward function (world.add, 'module:function')")
    question: str = Field(QUESTION, description="lm: the question, with {prompt}, {first} and {second}")
    verdicts: tuple[str, str] = Field((" A", " B"), description="lm: the verdicts naming the first and second "
                                      "answer (may hold {first} and {second})")
    chat_template: str = Field("none", description="lm: how the question is put to the judge")


class LabelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str = Field(description="the model folder whose answers are judged")
    prompts: str = Field(description="JSONL of prompt/completion rows (the completion: a reference answer for rules)")
    judge: Judge
    chat_template: str = Field(templates.TOKENIZER, description="how prompts are put to the policy")
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0, description="two samples per prompt need some randomness")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    out: str = Field(description="the preference JSONL written")


def load_label_spec(path: str, overrides: tuple[str, ...] = ()) -> LabelSpec:
    file = spec_file.read(path, "label spec", "with policy, prompts, judge and out", overrides)
    spec = spec_file.validate(LabelSpec, file.data, path, file.text)
    need = {"reward_model": "model", "lm": "model", "rule": "function"}[spec.judge.kind]
    if getattr(spec.judge, need) is None:
        raise spec_file.located(path, f"judge.{need}", f"a {spec.judge.kind} judge needs judge.{need}", file.text)
    return spec


def build_judge(spec: LabelSpec, policy_template: templates.Template, file: str):
    j = spec.judge
    if j.kind == "rule":
        return RuleJudge(j.function)
    if j.kind == "reward_model":
        return RewardModelJudge(j.model, policy_template)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(j.model, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(j.model)
    except (OSError, ValueError) as e:
        raise InputError(f"{file}: judge.model {j.model!r}: cannot load a causal LM ({e})") from None
    return LMJudge(model, tokenizer, templates.resolve(j.chat_template, tokenizer, file), j.question, j.verdicts)


def check_out(spec: LabelSpec, file: str) -> None:
    """The out file is not a folder, and is not (nor inside, nor holding) the policy, the prompts or the judge."""
    text = models.spec_text(file)

    def refused(problem: str) -> SpecError:
        return spec_file.located(file, "out", problem, text)

    if os.path.isdir(spec.out):
        raise refused(f"{spec.out!r} is a folder; give the path of the JSONL file to write, e.g. "
                      f"{os.path.join(spec.out, 'pairs.jsonl')}")
    inputs = {"policy": spec.policy, "prompts": spec.prompts, "judge.model": spec.judge.model}
    for name, path in inputs.items():
        relation = run_output.overlap(spec.out, path) if path else None
        if relation:
            raise refused(f"{spec.out!r} {relation} {name} {path!r}; labelling never writes where its inputs are: "
                          "choose another out")


def label(spec: LabelSpec, file: str = "<label spec>") -> dict:
    """Sample two answers per prompt from the policy, judge them, write the preference JSONL; returns counts."""
    check_out(spec, file)
    text = models.spec_text(file)
    models.check_model_folder(spec.policy, file, "policy", text)  # whole and finite, before anything loads
    if spec.judge.kind != "rule":
        models.check_model_folder(spec.judge.model, file, "judge.model", text)
    with output_lock(spec.out):  # after the checks, so a refused label leaves no lock or folder behind
        return labelled(spec, file)


def labelled(spec: LabelSpec, file: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dataset = data.read_dataset(spec.prompts, ("prompt_completion",), f"{file}: prompts")
    rows = [r.fields for r in dataset.rows]
    try:
        policy = AutoModelForCausalLM.from_pretrained(spec.policy, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(spec.policy)
    except (OSError, ValueError) as e:
        raise InputError(f"{file}: policy {spec.policy!r}: cannot load a causal LM ({e})") from None
    template = templates.resolve(spec.chat_template, tokenizer, file)
    judge = build_judge(spec, template, file)
    samples = generation.sample(policy, tokenizer, [r["prompt"] for r in rows], template=template, n=2,
                                max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, top_p=spec.top_p,
                                seed=spec.seed)
    pairs, skipped = pair_rows(samples, rows, judge, spec.judge.kind)
    counts = {"prompts": len(rows), "pairs": len(pairs), "skipped": skipped}
    with atomic_file(spec.out) as tmp, atomic_file(spec.out + ".meta.json") as meta:
        with open(tmp, "w") as f:
            f.writelines(json.dumps(p) + "\n" for p in pairs)
        write_json(meta, {**counts, "spec": spec.model_dump(mode="json")})
    return counts

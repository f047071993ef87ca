"""CAI's RL stage, the AI feedback half (Bai et al. 2022, section 4.1): two sampled responses to each
red-team prompt; a feedback model is asked which one better meets a principle drawn for the prompt
(seeded), as a multiple choice question, and its choice is the log-probability of " A" against " B".
The question is put in both orders and the two margins averaged (trainers/judges.py `LMJudge`), so a
preference for a position cancels out. Equal responses and exact ties are skipped."""

from __future__ import annotations

from dataclasses import replace

from trainers.constitutional.sl import pick
from trainers.constitutional.spec import CAISpec, Constitution, Principle, Prompts
from trainers.data import hash_seed
from trainers.judges import LMJudge
from trainers.synthetic.backend import Backend

# {prompt}, {first} and {second} are filled in by the judge; the principle is put in first
QUESTION = ("Consider this conversation between a human and an assistant.\nHuman: {{prompt}}\n\n"
            "Here is what a good response does: {principle}\nWhich response does this better?\n"
            "Options:\n({a}) {{first}}\n({b}) {{second}}\nThe answer is:")


def question(principle: Principle, verdicts: tuple[str, str] = (" A", " B")) -> str:
    """The feedback question under `principle`, its options labelled with the verdicts."""
    def escaped(text: str) -> str:
        return text.replace("{", "{{").replace("}", "}}")

    return QUESTION.format(principle=escaped(principle.revision), a=escaped(verdicts[0].strip()),
                           b=escaped(verdicts[1].strip()))


def run(spec: CAISpec, constitution: Constitution, prompts: Prompts, backend: Backend, judge: LMJudge) -> dict:
    """{"preferences": rows {prompt, chosen, rejected, principle, margin}, "skipped": count}."""
    s = spec.sampling
    asks = [backend.render([{"role": "user", "content": p}]) for p in prompts.rows]
    samples = backend.complete(asks, n=2, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                               top_p=s.top_p, seed=hash_seed(spec.seed, 0, 0))
    rows, skipped = [], 0
    for i, prompt in enumerate(prompts.rows):
        a, b = samples[2 * i].text.strip(), samples[2 * i + 1].text.strip()
        principle = pick(spec, constitution, i, 1)
        asking = replace(judge, question=question(principle, judge.verdicts))
        margin = 0.0 if a == b else asking.margin(prompt, a, b, {})
        if margin == 0:
            skipped += 1
            continue
        chosen, rejected = (a, b) if margin > 0 else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "principle": principle.id,
                     "margin": abs(margin)})
    return {"preferences": rows, "skipped": skipped}

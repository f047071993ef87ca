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
from trainers.synthetic.progress import unsaved

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


def sampled(backend: Backend, spec: CAISpec, asks: list[str]) -> list[str]:
    """Two samples of each rendered prompt, stripped, prompt-major."""
    s = spec.sampling
    return [c.text.strip() for c in backend.complete(asks, n=2, max_new_tokens=s.max_new_tokens,
                                                     temperature=s.temperature, top_p=s.top_p,
                                                     seed=hash_seed(spec.seed, 0, 0))]


def judged(judge: LMJudge, prompts: tuple[str, ...], pairs: list[tuple[str, str]],
           principles: list[Principle]) -> list[float]:
    """The judge's margin for the first answer of each pair under its principle (0 for equal answers)."""
    return [0.0 if a == b else replace(judge, question=question(p, judge.verdicts)).margin(prompt, a, b, {})
            for prompt, (a, b), p in zip(prompts, pairs, principles)]


def run(spec: CAISpec, constitution: Constitution, prompts: Prompts, backend: Backend, judge: LMJudge,
        steps=unsaved) -> dict:
    """{"preferences": rows {prompt, chosen, rejected, principle, margin}, "skipped": count}. The samples
    and the judge's margins each go through `steps` (kept for a resume)."""
    asks = [backend.render([{"role": "user", "content": p}]) for p in prompts.rows]
    samples = steps("samples", sampled, backend, spec, asks)
    pairs = [(samples[2 * i], samples[2 * i + 1]) for i in range(len(prompts.rows))]
    principles = [pick(spec, constitution, i, 1) for i in range(len(prompts.rows))]
    rows, skipped = [], 0
    margins = steps("margins", judged, judge, prompts.rows, pairs, principles)
    for prompt, (a, b), principle, margin in zip(prompts.rows, pairs, principles, margins):
        if margin == 0:
            skipped += 1
            continue
        chosen, rejected = (a, b) if margin > 0 else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "principle": principle.id,
                     "margin": abs(margin)})
    return {"preferences": rows, "skipped": skipped}

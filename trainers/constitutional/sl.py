"""CAI's supervised stage (Bai et al. 2022, section 3.1): sample a response to each red-team prompt; for
each of `rounds` rounds draw a principle (seeded per prompt and round), ask the policy to critique its
latest response under the principle's critique request, then to rewrite it under the revision request.
The last revision is the SFT completion; every step goes into the trace.

Each round's conversation is the constitution's worked examples (as earlier turns; none when it has
none), then the prompt, the latest response, the critique request and (for the revision) the critique:
the earlier rounds are left out so a small model's context stays short. The first answer is sampled
from the prompt alone. Every generation step is one batched call over all prompts."""

from __future__ import annotations

import random

from trainers.constitutional.spec import CAISpec, Constitution, Principle, Prompts
from trainers.data import hash_seed
from trainers.synthetic.backend import Backend
from trainers.synthetic.progress import unsaved


def pick(spec: CAISpec, constitution: Constitution, index: int, k: int) -> Principle:
    """The principle of prompt `index` in round `k` (a draw of its own, so it depends on nothing else)."""
    return random.Random(hash_seed(spec.seed, index, k)).choice(constitution.principles)


def generate(backend: Backend, spec: CAISpec, conversations: list[list[dict]], seed: int) -> list[str]:
    s = spec.sampling
    done = backend.complete([backend.render(c) for c in conversations], n=1, max_new_tokens=s.max_new_tokens,
                            temperature=s.temperature, top_p=s.top_p, seed=seed)
    return [c.text.strip() for c in done]


def run(spec: CAISpec, constitution: Constitution, prompts: Prompts, backend: Backend, steps=unsaved) -> dict:
    """{"sft": rows {prompt, completion, principles}, "trace": one row per prompt with every step}. Each
    generation step goes through `steps` (trainers/synthetic/progress.py `Steps`: kept for a resume)."""
    asks = [[{"role": "user", "content": p}] for p in prompts.rows]
    latest = steps("answers", generate, backend, spec, asks, hash_seed(spec.seed, 0, 0))
    trace = [{"prompt": p, "initial": r, "rounds": []} for p, r in zip(prompts.rows, latest)]
    shots = constitution.shots()
    for k in range(1, spec.rounds + 1):
        chosen = [pick(spec, constitution, i, k) for i in range(len(asks))]
        shown = [shots + a + [{"role": "assistant", "content": r}] for a, r in zip(asks, latest)]
        critiqued = [s + [{"role": "user", "content": p.critique}] for s, p in zip(shown, chosen)]
        critiques = steps(f"round-{k}-critiques", generate, backend, spec, critiqued, hash_seed(spec.seed, k, 1))
        revising = [c + [{"role": "assistant", "content": t}, {"role": "user", "content": p.revision}]
                    for c, t, p in zip(critiqued, critiques, chosen)]
        latest = steps(f"round-{k}-revisions", generate, backend, spec, revising, hash_seed(spec.seed, k, 2))
        for row, p, c, r in zip(trace, chosen, critiques, latest):
            row["rounds"].append({"principle": p.id, "critique_request": p.critique, "critique": c,
                                  "revision_request": p.revision, "revision": r})
    sft = [{"prompt": t["prompt"], "completion": t["rounds"][-1]["revision"],
            "principles": [r["principle"] for r in t["rounds"]]} for t in trace]
    return {"sft": sft, "trace": trace}

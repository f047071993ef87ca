"""`surgery cai SPEC.yaml`: run the spec's stage and write its output folder atomically, with a card.

    sl: OUT/sft.jsonl (prompt, completion: the last revision), OUT/trace.jsonl (every step of each prompt)
    rl: OUT/preferences.jsonl (prompt, chosen, rejected), read by the reward, dpo and PPO objectives

The card's `lineage` (the constitution's sha256, the ids of the principles drawn, the model) goes into
the lineage.json of every checkpoint trained on these files (trainers/checkpoint.py `generated`).

Each generation step's result (sl: the answers, then each round's critiques and revisions; rl: the
samples, then the judge's margins) is kept in a hidden `.OUT.progress/` as it is made: a killed run
leaves nothing at OUT, and the same command resumes after the last finished step, to the same bytes.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from surgery.errors import InputError
from surgery.io.output import atomic_folder, output_lock
from trainers.constitutional import rl, sl
from trainers.constitutional.spec import CAISpec, Constitution, Prompts
from trainers.synthetic import card, progress

FILES = {"sl": ("sft.jsonl", "trace.jsonl"), "rl": ("preferences.jsonl",)}


def check_tokenizers(policy, feedback, policy_name: str, feedback_name: str, file: str) -> None:
    """The feedback model must read text as the policy does: the same vocabulary, token for token."""
    mine, theirs = policy.get_vocab(), feedback.get_vocab()
    if mine != theirs:
        differ = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
        raise InputError(f"{file}: feedback.model {feedback_name!r}: its tokenizer is not the policy's "
                         f"({policy_name!r}: {len(mine)} tokens, it: {len(theirs)}; e.g. {differ}); "
                         "use a feedback model sharing the policy's tokenizer, or leave feedback.model out")


def check_verdicts(tokenizer, verdicts: tuple[str, str], file: str) -> None:
    """Before any generation: the two verdicts must be told apart by the feedback model's tokenizer."""
    a, b = (tokenizer(v, add_special_tokens=False)["input_ids"] for v in verdicts)
    if a == b:
        raise InputError(f"{file}: feedback.verdicts: {verdicts[0]!r} and {verdicts[1]!r} encode to the same tokens "
                         f"{a} under the feedback model's tokenizer (unknown words, say); choose verdicts it spells "
                         "differently")


def feedback_judge(spec: CAISpec, backend, file: str):
    """rl: the LM judge over the feedback model (the policy's own weights when feedback.model is unset),
    after checking that it shares the policy's tokenizer; sl: None."""
    if spec.stage != "rl":
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers import templates
    from trainers.judges import LMJudge

    if spec.feedback.model is None:
        check_verdicts(backend.tokenizer, spec.feedback.verdicts, file)
        template = templates.resolve(spec.feedback.chat_template, backend.tokenizer, file)
        return LMJudge(backend.model, backend.tokenizer, template, verdicts=spec.feedback.verdicts)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.feedback.model)
    except (OSError, ValueError) as e:
        raise InputError(f"{file}: feedback.model {spec.feedback.model!r}: cannot load its tokenizer ({e})") from None
    check_tokenizers(backend.tokenizer, tokenizer, spec.model, spec.feedback.model, file)
    check_verdicts(tokenizer, spec.feedback.verdicts, file)
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.feedback.model, dtype=torch.float32).eval()
    except (OSError, ValueError) as e:
        raise InputError(f"{file}: feedback.model {spec.feedback.model!r}: cannot load a causal LM ({e})") from None
    return LMJudge(model, tokenizer, templates.resolve(spec.feedback.chat_template, tokenizer, file),
                   verdicts=spec.feedback.verdicts)


def identity(spec: CAISpec, constitution: Constitution, prompts: Prompts, backend) -> dict:
    """What a resumed run must share with the run that saved the progress."""
    return {"spec": spec.model_dump(mode="json"), "constitution_sha256": constitution.sha256,
            "prompts_sha256": prompts.sha256, "backend": backend.name}


def run(spec: CAISpec, constitution: Constitution, prompts: Prompts, backend, judge, file: str,
        restart: bool = False, echo=print) -> dict:
    """Generate the stage's rows (or resume them) and write OUT; returns the card."""
    with output_lock(spec.out):
        ident = identity(spec, constitution, prompts, backend)
        steps = progress.Steps(spec.out, progress.resume(spec.out, ident, restart) or {"identity": ident})
        if steps.kept:
            echo(f"resuming after {steps.kept} finished generation step(s): {', '.join(steps.done)}")
        made = sl.run(spec, constitution, prompts, backend, steps) if spec.stage == "sl" else \
            rl.run(spec, constitution, prompts, backend, judge, steps)
        rows = made["sft"] if spec.stage == "sl" else made["preferences"]
        used = Counter(p for r in rows for p in (r["principles"] if spec.stage == "sl" else [r["principle"]]))
        found = card_of(spec, constitution, prompts, backend, file, rows, used, made.get("skipped", 0))
        with atomic_folder(spec.out) as tmp:
            for name, kind in zip(FILES[spec.stage], ("sft", "trace") if spec.stage == "sl" else ("preferences",)):
                with open(os.path.join(tmp, name), "w") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in made[kind])
            card.write(tmp, found, markdown(found))
        progress.done(spec.out)
    return found


def card_of(spec: CAISpec, constitution: Constitution, prompts: Prompts, backend, file: str, rows: list[dict],
            used: Counter, skipped: int) -> dict:
    lineage = {"generator": "constitutional-ai", "stage": spec.stage, "model": os.path.abspath(spec.model),
               "backend": backend.name, "constitution": constitution.name,
               "constitution_sha256": constitution.sha256, "principles": sorted(used),
               "prompts_sha256": prompts.sha256, "seed": spec.seed,
               "feedback_model": os.path.abspath(spec.feedback.model or spec.model) if spec.stage == "rl" else None}
    return {"generator": "constitutional-ai", "stage": spec.stage, "spec": spec.model_dump(mode="json"),
            "spec_file": os.path.abspath(file), "constitution": {"path": constitution.path,
                                                                 "sha256": constitution.sha256},
            "prompts": {"path": prompts.path, "sha256": prompts.sha256, "rows": len(prompts.rows)},
            "rows": len(rows), "skipped": skipped, "principles_used": dict(sorted(used.items())),
            "files": list(FILES[spec.stage]), "lineage": lineage}


def markdown(found: dict) -> str:
    stage = {"sl": "critique-and-revision SFT rows", "rl": "AI preference pairs"}[found["stage"]]
    return "\n".join([
        f"# Constitutional AI data ({found['stage']})", "",
        f"{found['rows']} {stage} from {found['prompts']['rows']} prompts (`{found['prompts']['path']}`) by "
        f"`{found['lineage']['model']}`; {found['skipped']} pairs skipped (equal answers or ties).",
        f"Constitution `{found['constitution']['path']}`, sha256 {found['constitution']['sha256'][:12]}...", "",
        "## Principles drawn", "",
        card.table(list(found["principles_used"].items()), ["principle", "times"]), ""])

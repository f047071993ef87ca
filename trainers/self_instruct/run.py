"""Self-Instruct's bootstrapping loop (Wang et al. 2022, https://arxiv.org/abs/2212.10560): rounds of
proposing instructions from a pool of demonstrations, filtering them, deciding which are classification
tasks, writing an instance of each, and keeping those that pass, until `target` are kept.

    card = run(spec, seeds, backend, "spec.yaml")

Each round (k = 1, 2, ...):
1. `prompts_per_round` proposal prompts, each listing `demonstrations.seed` seed instructions and
   `demonstrations.generated` kept ones (seeds while too few are kept), in a seeded random order;
   the backend continues them as one batch;
2. every "Task N:" line written is a candidate, judged by the filters (filters.py) against the pool
   (seeds, kept instructions, and this round's accepted ones), in the order they were written;
3. the accepted ones are classified (log p(" Yes") > log p(" No") after a few-shot question) and get one
   instance each, input first, or label first for classification tasks, as one batch;
4. an instance that is malformed rejects its instruction (`bad_instance`); the others are kept.
After each round the state is checkpointed (trainers/synthetic/progress.py); a killed run resumes at
the next round. The output folder appears atomically at the end: train.jsonl (prompt/completion rows,
which `surgery train` reads, with instruction, input, output, classification and round kept beside),
rejected.json, card.json, card.md and lengths.png.
"""

from __future__ import annotations

import operator
import os
import random
import time
from collections import Counter
from collections.abc import Callable

from tqdm import tqdm

from surgery.io.output import atomic_folder, output_lock
from trainers.data import hash_seed
from trainers.self_instruct import prompts
from trainers.self_instruct.filters import FILTERS, Pool, judge, words
from trainers.self_instruct.spec import Seeds, SelfInstructSpec
from trainers.synthetic import card, progress
from trainers.synthetic.backend import Backend

TRAIN = "train.jsonl"


def identity(spec: SelfInstructSpec, seeds: Seeds, backend: Backend) -> dict:
    """What a resumed run must share with the run that saved the progress."""
    return {"spec": spec.model_dump(mode="json"), "seeds_sha256": seeds.sha256, "backend": backend.name}


def run(spec: SelfInstructSpec, seeds: Seeds, backend: Backend, file: str, force: bool = False,
        restart: bool = False, quiet: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Run (or resume) the rounds and write the output folder; returns the card."""
    progress.check_output(spec.out, force)
    with output_lock(spec.out):
        ident = identity(spec, seeds, backend)
        state = progress.resume(spec.out, ident, restart)
        if state is not None:
            echo(f"resuming after round {state['round']} ({len(state['kept'])} instructions kept)")
        state = state or {"identity": ident, "round": 0, "kept": [], "rejected": [], "rounds": []}
        pool = Pool(spec.filters.rouge_l)
        for text in [s["instruction"] for s in seeds.rows] + [r["instruction"] for r in state["kept"]]:
            pool.add(text)
        bar = tqdm(total=spec.target, initial=min(len(state["kept"]), spec.target), desc="kept", disable=quiet,
                   dynamic_ncols=True)
        while len(state["kept"]) < spec.target and state["round"] < spec.max_rounds:
            k = state["round"] + 1
            started = time.perf_counter()
            kept, rejected, record = one_round(spec, seeds, backend, pool, state["kept"], k)
            record["seconds"] = round(time.perf_counter() - started, 2)
            state["kept"] += kept
            state["rejected"] += rejected
            state["rounds"].append(record)
            state["round"] = k
            progress.save(spec.out, state)
            bar.update(min(len(kept), spec.target - bar.n))
            bar.set_postfix({"round": k, "proposed": record["proposed"]}, refresh=False)
        bar.close()
        made = dataset_card(spec, seeds, backend, state, file)
        write_output(spec.out, state, made)
        progress.done(spec.out)
    return made


def one_round(spec: SelfInstructSpec, seeds: Seeds, backend: Backend, pool: Pool, kept: list[dict],
              k: int) -> tuple[list[dict], list[dict], dict]:
    """Round k: (rows kept, rejections, the round's record)."""
    rng = random.Random(hash_seed(spec.seed, k))
    clock = time.perf_counter()
    texts = [prompts.propose(demonstrations(rng, seeds, kept, spec)) for _ in range(spec.prompts_per_round)]
    s = spec.sampling
    written = backend.complete(texts, n=1, max_new_tokens=s.proposal_tokens, temperature=s.temperature,
                               top_p=s.top_p, seed=hash_seed(spec.seed, k, 0), stop=prompts.STOP)
    candidates = [c for w in written for c in prompts.parse_proposal(w.text, w.finished)]
    proposing = time.perf_counter() - clock
    rejected, accepted = [], []
    f = spec.filters
    for c in candidates:
        verdict = judge(c, pool, f.min_words, f.max_words, tuple(f.blocklist))
        if verdict.reason is None:
            pool.add(c.instruction)
            accepted.append(c.instruction)
        else:
            rejected.append({"round": k, "instruction": c.instruction, "reason": verdict.reason,
                             "detail": verdict.detail})
    rows, bad = instances(spec, seeds, backend, rng, accepted, k)
    for row in bad:
        pool.remove(row["instruction"])
    rejected += bad
    counts = Counter(r["reason"] for r in rejected)
    record = {"round": k, "proposed": len(candidates), "kept": len(rows),
              "rejected": {name: counts.get(name, 0) for name in FILTERS},
              "proposing_seconds": round(proposing, 2)}
    return rows, rejected, record


def demonstrations(rng: random.Random, seeds: Seeds, kept: list[dict], spec: SelfInstructSpec) -> list[str]:
    """`seed` seed instructions and `generated` kept ones (seeds instead while too few are kept), shuffled."""
    d = spec.demonstrations
    generated = [r["instruction"] for r in rng.sample(kept, min(d.generated, len(kept)))]
    pool = [s["instruction"] for s in seeds.rows]
    chosen = rng.sample(pool, min(len(pool), d.seed + d.generated - len(generated))) + generated
    rng.shuffle(chosen)
    return chosen


def instances(spec: SelfInstructSpec, seeds: Seeds, backend: Backend, rng: random.Random, accepted: list[str],
              k: int) -> tuple[list[dict], list[dict]]:
    """Classify each accepted instruction and write one instance of it: (kept rows, bad_instance rejections)."""
    if not accepted:
        return [], []
    question = classification_shots(seeds, spec.classification_demos)
    kinds = [operator.gt(*backend.logps(prompts.classify(question, a), [prompts.YES, prompts.NO])) for a in accepted]
    texts = [prompts.instance_prompt(instance_shots(rng, seeds, c, spec.instance_demos), a, c)
             for a, c in zip(accepted, kinds)]
    s = spec.sampling
    written = backend.complete(texts, n=1, max_new_tokens=s.instance_tokens, temperature=s.temperature,
                               top_p=s.top_p, seed=hash_seed(spec.seed, k, 1), stop=prompts.STOP)
    rows, bad = [], []
    for a, c, w in zip(accepted, kinds, written):
        found = prompts.parse_instance(w.text, c) if w.finished else None
        problem = "unparsed" if found is None else \
            "output too long" if words(found.output) > spec.filters.max_output_words else None
        if problem:
            bad.append({"round": k, "instruction": a, "reason": "bad_instance", "detail": problem})
        else:
            prompt = f"{a}\n\n{found.input}" if found.input else a
            rows.append({"prompt": prompt, "completion": found.output, "instruction": a, "input": found.input,
                         "output": found.output, "classification": c, "round": k})
    return rows, bad


def classification_shots(seeds: Seeds, n: int) -> list[tuple[str, bool]]:
    """The first n seed tasks, alternating classification and not while both last (a fixed question)."""
    yes = [s["instruction"] for s in seeds.rows if s["classification"]]
    no = [s["instruction"] for s in seeds.rows if not s["classification"]]
    mixed = [(t, c) for pair in zip(no, yes) for t, c in ((pair[0], False), (pair[1], True))]
    rest = [(t, False) for t in no[len(yes):]] + [(t, True) for t in yes[len(no):]]
    return (mixed + rest)[:n]


def instance_shots(rng: random.Random, seeds: Seeds, classification: bool, n: int) -> list[dict]:
    same = [s for s in seeds.rows if s["classification"] == classification]
    return rng.sample(same, min(n, len(same)))


def dataset_card(spec: SelfInstructSpec, seeds: Seeds, backend: Backend, state: dict, file: str) -> dict:
    kept = state["kept"]
    firsts = Counter(first_word(r["instruction"]) for r in kept)
    totals = Counter(r["reason"] for r in state["rejected"])
    reached = len(kept) >= spec.target
    return {
        "generator": "self-instruct",
        "model": os.path.abspath(spec.model), "backend": backend.name,
        "seeds": {"path": os.path.abspath(seeds.path), "sha256": seeds.sha256, "tasks": len(seeds.rows)},
        "spec": spec.model_dump(mode="json"), "spec_file": os.path.abspath(file),
        "stopped": "target reached" if reached else f"max_rounds ({spec.max_rounds}) reached",
        "rounds": state["round"], "proposed": sum(r["proposed"] for r in state["rounds"]), "kept": len(kept),
        "rejected": {name: totals.get(name, 0) for name in FILTERS},
        "classification": sum(r["classification"] for r in kept),
        "first_words": {"distinct": len(firsts), "top": firsts.most_common(20)},
        "per_round": state["rounds"],
        "seconds": round(sum(r["seconds"] for r in state["rounds"]), 1),
        "files": [TRAIN],
        "lineage": {"generator": "self-instruct", "model": os.path.abspath(spec.model), "backend": backend.name,
                    "seeds_sha256": seeds.sha256, "seed": spec.seed, "kept": len(kept)},
    }


def first_word(text: str) -> str:
    head = text.split()[0] if text.split() else ""
    return "".join(ch for ch in head.lower() if ch.isalnum())


def write_output(out: str, state: dict, made: dict) -> None:
    import json

    with atomic_folder(out) as tmp:
        with open(os.path.join(tmp, TRAIN), "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in state["kept"])
        with open(os.path.join(tmp, "rejected.json"), "w") as f:
            json.dump(state["rejected"], f, indent=1, ensure_ascii=False)
        card.write(tmp, made, markdown(made))
        card.histogram(os.path.join(tmp, "lengths.png"),
                       {"instruction": [words(r["instruction"]) for r in state["kept"]],
                        "input": [words(r["input"]) for r in state["kept"]],
                        "output": [words(r["output"]) for r in state["kept"]]},
                       "words", f"kept Self-Instruct tasks ({made['kept']})")


def markdown(made: dict) -> str:
    rounds = [[r["round"], r["proposed"], r["kept"], *(r["rejected"][n] for n in FILTERS), r["seconds"]]
              for r in made["per_round"]]
    return "\n".join([
        "# Self-Instruct data", "",
        f"Generated by `{made['model']}` ({made['backend']} backend) from {made['seeds']['tasks']} seed tasks "
        f"(`{made['seeds']['path']}`, sha256 {made['seeds']['sha256'][:12]}...), seed {made['spec']['seed']}.",
        f"{made['kept']} instructions kept of {made['proposed']} proposed in {made['rounds']} rounds "
        f"({made['stopped']}; {made['seconds']} s of generation); {made['classification']} classification tasks.",
        "", "## Rejected, by the first filter failed", "",
        card.table([[n, made["rejected"][n]] for n in FILTERS], ["filter", "rejected"]),
        "## Per round", "", card.table(rounds, ["round", "proposed", "kept", *FILTERS, "seconds"]),
        f"## First words ({made['first_words']['distinct']} distinct)", "",
        card.table(made["first_words"]["top"], ["first word", "instructions"]),
        "Lengths: `lengths.png` (words of the kept instructions, inputs and outputs).", ""])

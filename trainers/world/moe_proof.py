"""The small world's mixture-of-experts proof: a two-expert MoE of the `add` and `reverse` experts,
built by `surgery moe` with routers from each expert's training prompts, routes add prompts to the add
expert and reverse prompts to the reverse expert, and scores near each expert on its task.

For each gate mode and experts-per-token setting it builds the MoE, measures the routing share (the
share of the test rows' tokens, prompt and answer, whose first choice is the task's expert, averaged
over the layers; also the weakest layer), and scores exact match on every task's test split next to
the base and the two experts. Results go to OUT/moe_proof.json and a printed table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from surgery.io.output import atomic_file
from trainers.world.tasks import TASKS

EXPERTS = ("add", "reverse")


def moe_spec(zoo: str, experts: dict[str, str], prompts: int, gate_mode: str, per_token: int,
             answers: bool = True) -> dict:
    """mergekit-moe's YAML for the two experts ({task: folder}), positive prompts from each task's
    training rows: prompt and answer (every token of both is routed), or with `answers` off the prompt alone."""
    def train_prompts(task: str) -> list[str]:
        with open(os.path.join(zoo, "data", task, "train.jsonl")) as f:
            rows = [json.loads(line) for _, line in zip(range(prompts), f)]
        return [r["prompt"] + (r["completion"] if answers else "") for r in rows]

    return {"base_model": os.path.join(zoo, "base"), "gate_mode": gate_mode, "experts_per_token": per_token,
            "dtype": "float32", "experts": [{"source_model": experts[t], "positive_prompts": train_prompts(t)}
                                            for t in EXPERTS]}


def build(spec: dict, out: str) -> str:
    import yaml

    from surgery.moe.build import compute_gates, moe_card, plan_moe, write_moe
    from surgery.moe.spec import parse_moe_spec

    path = os.path.join(os.path.dirname(out), os.path.basename(out) + ".yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    plan = plan_moe(parse_moe_spec(spec, path), path)
    gates, shared = compute_gates(plan)
    return write_moe(plan, out, gates, shared, force=True, card=moe_card(plan, out, yaml.safe_dump(spec)))


def shares(folder: str, rows: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """{task: {"mean": share of its tokens routed first to its expert (mean over layers), "min": weakest layer}}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgery.moe.routing import routing_share

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = {}
    for e, task in enumerate(EXPERTS):
        share = routing_share(model, tokenizer, [r["prompt"] + r["completion"] for r in rows[task]])[:, e]  # (L,)
        out[task] = {"mean": round(share.mean().item(), 4), "min": round(share.min().item(), 4)}
    return out


def run_moe_proof(zoo: str, out: str, prompts: int = 32,
                  gate_modes: tuple[str, ...] = ("hidden", "hidden_avg", "cheap_embed"),
                  per_token: tuple[int, ...] = (1, 2), experts: dict[str, str] | None = None, answers: bool = True,
                  echo: Callable[[str], None] = print) -> dict:
    """`experts` ({task: folder}) default to the zoo's `add` and `reverse`."""
    from trainers.world.score import score_table

    zoo, out = os.path.abspath(zoo), os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    experts = {t: os.path.abspath((experts or {}).get(t, os.path.join(zoo, t))) for t in EXPERTS}
    rows = {t: [json.loads(line) for line in open(os.path.join(zoo, "data", t, "test.jsonl"))] for t in TASKS}
    models = {"base": os.path.join(zoo, "base"), **{f"expert {t}": experts[t] for t in EXPERTS}}
    routing = {}
    for mode in gate_modes:
        for k in per_token:
            name = f"moe-{mode}-k{k}"
            models[name] = build(moe_spec(zoo, experts, prompts, mode, k, answers), os.path.join(out, name))
            routing[name] = shares(models[name], rows)
    scores = score_table(models, os.path.join(zoo, "data"))
    result = {"prompts_per_expert": prompts, "answers_in_prompts": answers, "experts": experts, "scores": scores,
              "routing": routing}
    with atomic_file(os.path.join(out, "moe_proof.json")) as tmp, open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    echo(format_proof(result))
    return result


def format_proof(result: dict) -> str:
    head = f"{'model':<22} " + " ".join(f"{t:>8}" for t in TASKS) + f" {'add->add':>9} {'rev->rev':>9}"
    lines = [head]
    for name, scores in result["scores"].items():
        share = result["routing"].get(name)
        routed = (f" {share['add']['mean']:>9.2f} {share['reverse']['mean']:>9.2f}" if share else "")
        lines.append(f"{name:<22} " + " ".join(f"{scores[t]:>8.2f}" for t in TASKS) + routed)
    return "\n".join(lines) + ("\n(exact match on each task's test split; routing: share of the task's tokens whose "
                               "first choice is its expert, mean over layers)")

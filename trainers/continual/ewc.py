"""`ewc`: elastic weight consolidation (Kirkpatrick et al. 2017), and online EWC with decay γ
(Schwarz et al. 2018). After each stage its diagonal Fisher is taken at its final weights on
`fisher_rows` of its training rows (trainers/continual/fisher.py) and kept in its folder
(`fisher.safetensors`); every later stage trains on its objective's loss plus

    (λ/2) Σ_j Σ_i F_j,i (θ_i − θ*_j,i)²      one term per earlier stage j (gamma: null), or
    (λ/2) Σ_i F̃_i (θ_i − θ*_{k-1},i)²        F̃ = Σ_j γ^(k-1-j) F_j, anchored at the last stage (online).

The penalty is a term of the training loss (the run's objective with another `loss`); `ewc_penalty`
is logged beside it, and evaluation (`eval_loss`) reports the objective's loss alone.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from surgery.io.output import atomic_file
from trainers import data, models, parallel, templates
from trainers.continual.fisher import Anchor, decayed, diagonal_fisher, on_device, penalty
from trainers.continual.spec import located_strategy
from trainers.continual.strategy import Config as StrategyConfig
from trainers.continual.strategy import Plan, Stage, Strategy
from trainers.logprobs import sequence_logps
from trainers.spec import Run

FISHER = "fisher.safetensors"
LIKELIHOOD_OBJECTIVES = ("sft", "pretrain")  # their batches hold labels: a row's log-likelihood is defined


class Config(StrategyConfig):
    lam: float = Field(ge=0, description="λ, the penalty's strength (0: sequential fine-tuning)")
    gamma: float | None = Field(None, gt=0, le=1, description="online EWC: one Fisher, decayed by γ at each stage "
                                "(null: one penalty term per earlier stage)")
    fisher_rows: int = Field(512, ge=1, description="rows of a stage's training data in its Fisher pass "
                             "(a seeded sample; all rows when fewer)")


def check(plan: Plan, config: Config) -> None:
    run = plan.stages[0].run
    if run.spec.objective.name not in LIKELIHOOD_OBJECTIVES:
        raise located_strategy(plan, "name", f"ewc takes the Fisher of the log-likelihood of the training rows, "
                               f"which objective '{run.spec.objective.name}' does not train on; use objective "
                               f"{' or '.join(LIKELIHOOD_OBJECTIVES)}, or strategy replay")
    if not run.method.whole_model:
        raise located_strategy(plan, "name", f"ewc chains stages through whole models; method "
                               f"'{run.spec.method.name}' saves an adapter: use method full or freeze, or "
                               "strategy adapters")


def prepare(run: Run, stage: Stage, config: Config) -> Run:
    """The stage's run with the penalty of every earlier stage added to its loss."""
    if not stage.earlier:
        return run
    fishers = [stage_fisher(s.run, final, s.folder, config) for s, final in zip(stage.earlier, stage.finals)]
    if config.gamma is None:
        anchors = [Anchor(f, anchor_weights(s.run, final, f)) for f, s, final in
                   zip(fishers, stage.earlier, stage.finals)]
    else:
        online = decayed(fishers, config.gamma)
        anchors = [Anchor(online, anchor_weights(stage.earlier[-1].run, stage.finals[-1], online))]
    loss = penalised(run.objective.loss, anchors, config.lam)
    return replace(run, objective=replace(run.objective, loss=loss))


def penalised(loss, anchors: list[Anchor], lam: float):
    """The objective's loss plus the EWC penalty while training (model.training); the loss alone in eval."""
    placed: dict[torch.device, list[Anchor]] = {}

    def total(model, batch, config):
        value, metrics = loss(model, batch, config)
        if not model.training:
            return value, metrics
        policy = parallel.unwrap(model)
        device = next(policy.parameters()).device
        here = placed.setdefault(device, [on_device(a, device) for a in anchors])
        extra = penalty(dict(policy.named_parameters()), here, lam)
        return value + extra, {**metrics, "ewc_penalty": float(extra.detach())}

    return total


def stage_fisher(run: Run, final: str, folder: str, config: Config) -> dict[str, torch.Tensor]:
    """The stage's Fisher at its final weights: read from its folder, or computed and written there."""
    path = os.path.join(folder, FISHER)
    if os.path.isfile(path):
        return load_file(path)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model = models.build_model(run, final, None).to(device).eval()  # eval: no dropout in the gradients
    tokenizer = models.load_tokenizer(run.spec.model_copy(update={"base": final}))
    examples = fisher_examples(run, tokenizer, config)
    fisher = {n: t.cpu() for n, t in diagonal_fisher(model, examples, row_loglik, len(examples), quiet=False).items()}
    with atomic_file(path) as tmp:
        save_file({n: t.contiguous() for n, t in fisher.items()}, tmp)
    return fisher


def fisher_examples(run: Run, tokenizer, config: Config) -> list[dict]:
    """`fisher_rows` of the stage's training rows (a seeded sample), encoded as the objective encodes them."""
    template = templates.resolve(run.spec.chat_template, tokenizer, run.file)
    rows = [r for i, s in enumerate(run.spec.data.train)
            for r in data.read_dataset(s.path, run.objective.shapes, f"{run.file}: data.train.{i}").rows]
    if len(rows) > config.fisher_rows:
        rows = random.Random(run.spec.seed).sample(rows, config.fisher_rows)
    encode, length = run.objective.batches.encode, run.spec.batch.max_length
    return [data.truncate(encode(r, tokenizer, template, run.objective_config), length)[0] for r in rows]


def row_loglik(model, example: dict) -> torch.Tensor:
    """log p of the row's trained tokens (labels not IGNORE), summed: the row's log-likelihood."""
    device = next(model.parameters()).device
    ids = torch.tensor([example["input_ids"]], device=device)  # (1, T)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits  # (1, T, V)
    summed, _ = sequence_logps(logits, torch.tensor([example["labels"]], device=device))  # (1,)
    return summed[0]


def anchor_weights(run: Run, final: str, fisher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ*: the final folder's values of the parameters the Fisher names."""
    model = models.load_weights(run, final)
    named = dict(model.named_parameters())
    return {n: named[n].detach().clone() for n in fisher}


STRATEGY = Strategy("ewc", "EWC", Config, chained=True, check=check, prepare=prepare)

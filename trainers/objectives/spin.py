"""SPIN, self-play fine-tuning (Chen et al. 2024, https://arxiv.org/abs/2401.01335): in each round the
current model answers the training prompts; its answers are the rejected side and the data's
completions the chosen side of preference pairs, trained with the logistic (DPO) loss against the
round's starting model as reference:

    loss = -log sigmoid(beta [(log pi(y) - log pi_t(y)) - (log pi(y') - log pi_t(y'))])

with y the data's completion, y' = pi_t's own. That is DPO's loss on (data, self-generated) pairs,
so a round is an ordinary DPO run (trainers/objectives/dpo.py) whose base, and so whose reference, is
the previous round's model. Pairs where the model already answers exactly as the data are dropped:
their two sides are the same sequence, and the loss has no gradient there. The loop is
trainers/loops/self_play.py.
"""

from __future__ import annotations

from pydantic import Field

from trainers.objectives import objective

SHAPES = ("prompt_completion",)


class Config(objective.Config):
    rounds: int = Field(2, ge=1, description="self-play rounds; each trains against the previous round's model")
    beta: float = Field(0.1, gt=0, description="DPO's beta: strength of the tie to the round's reference")
    rows_per_round: int | None = Field(None, ge=1, description="training rows answered each round (default: all)")
    max_new_tokens: int = Field(32, ge=1, description="longest self-generated answer")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of the self-generated answers (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")


def pairs(rows: list[dict], generated: list[str]) -> list[dict]:
    """(prompt, chosen = the data's completion, rejected = the model's) rows; identical answers dropped."""
    return [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": g}
            for r, g in zip(rows, generated) if g != r["completion"]]


OBJECTIVE = objective.Objective("spin", "SPIN", Config, SHAPES, "self_play")

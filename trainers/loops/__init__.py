"""The training loops, and `train`, which runs a run with its objective's loop.

    final = train(load_run("runs/dpo.yaml"), resume=None, stop_after=None, quiet=False, force=False,
                  allow_data_change=False)

Every loop is a session (session.py: the output folder, tokenizer, data, model and method, reference,
optimizer and schedule, resume, logs, eval and save cadence, NaN stop, atomic checkpoints) with a
per-step hook, or rounds of such sessions:
- offline.py: rows read from the data (SFT, pretraining, the preference objectives, the reward model);
- grpo_rollouts.py: groups of completions sampled and scored every step (GRPO);
- ppo_rollouts.py: rollouts, a value head and GAE (PPO);
- rounds.py: rounds of sampling and an offline run on what was kept, for rejection_sampling.py (RFT)
  and self_play.py (SPIN).

REGISTRY maps an objective's `loop` (trainers/objectives/objective.py LOOPS) to the loop's `train`.

A pipeline of several runs (rounds of generated data, stages of a sequence) runs one session per run,
as rounds.py does; a term added to a loss (a penalty) is an Objective with another `loss`
(`dataclasses.replace`), and rows mixed into a run (a replay buffer) are one more data.train source:
neither needs a loop of its own.
"""

from __future__ import annotations

from collections.abc import Callable

from trainers.loops import grpo_rollouts, offline, ppo_rollouts, rejection_sampling, self_play
from trainers.spec import Run

Train = Callable[..., str]  # (run, resume, stop_after, quiet, force, allow_data_change) -> the final folder

REGISTRY: dict[str, Train] = {
    "offline": offline.train,
    "grpo_rollouts": grpo_rollouts.train,
    "ppo_rollouts": ppo_rollouts.train,
    "rejection_sampling": rejection_sampling.train,
    "self_play": self_play.train,
}


def train(run: Run, resume: str | None = None, stop_after: int | None = None, quiet: bool = False,
          force: bool = False, allow_data_change: bool = False) -> str:
    """Train as `run` says; returns the final folder (or, with `stop_after`, that step's checkpoint). `force`
    replaces an earlier run in out once this one finishes; `allow_data_change` lets a resume continue on
    inputs changed since its checkpoint (recorded in the lineage)."""
    return REGISTRY[run.objective.loop](run, resume=resume, stop_after=stop_after, quiet=quiet, force=force,
                                        allow_data_change=allow_data_change)

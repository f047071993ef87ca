"""The GRPO loop: every `iterations` optimizer steps, sample a group of completions per prompt with
the current policy, score them, and turn the rewards into group-relative advantages; then step on
those rollouts (the loss is trainers/objectives/grpo.py).

A step begins with generation by the policy being trained and scoring by a reward, and (with
iterations > 1) several optimizer steps use one batch of rollouts. Everything else is the session's
(trainers/loops/session.py): the model and method, the reference (for the KL term, beta > 0), the
optimizer and schedule, the mixture of prompts, accumulation weighted by items (tokens for the default
`dapo` aggregation), data parallelism (each process samples its share of the prompts; the groups never
straddle processes), logs and atomic, resumable checkpoints.

batch.size counts prompts per rollout; each gives `group_size` completions. Evaluation is the mean
reward of the greedy completion of every data.eval prompt (`eval_reward`), logged at step 0 too.
"""

from __future__ import annotations

import torch

from surgery.errors import SpecError
from trainers import data, generation, parallel
from trainers.logprobs import model_logps
from trainers.loops import session
from trainers.objectives import grpo
from trainers.objectives.sft import pad_token_id
from trainers.spec import Run


class GroupRollouts(session.Steps):
    label = "grpo"
    shown = ("reward",)
    evaluate_first = True

    @staticmethod
    def check(run: Run, world: parallel.World) -> None:
        spec, cfg = run.spec, run.objective_config
        if spec.parallel == "fsdp":
            raise SpecError(run.file, "parallel", "GRPO samples with the whole policy on each process; use "
                            "parallel: ddp")
        if cfg.iterations > 1 and spec.save_every and spec.save_every % cfg.iterations:
            raise SpecError(run.file, "save_every", f"a checkpoint inside a batch of rollouts cannot be resumed "
                            f"exactly; make save_every a multiple of objective.iterations={cfg.iterations}")

    def __init__(self, s: session.Session):
        super().__init__(s)
        self.cfg = s.run.objective_config
        self.reward = self.cfg.load_reward(s.template, s.world.device, where=f"{s.run.file}: objective")
        self.pad = pad_token_id(s.tokenizer)
        self.pending: list[tuple[list[dict], dict[str, float]]] = []  # the rollout's batches, once per step left

    def step(self, k: int) -> dict[str, float]:
        s = self.session
        if not self.pending:
            rows = [s.data.train[d].rows[r] for d, r in s.draw(k)]
            scored = rollout(s.policy, s.reference, s.tokenizer, s.template, rows, self.reward, self.cfg, s.micro,
                             self.pad, data.hash_seed(s.run.spec.seed, k, s.world.rank), s.world)
            self.pending = [scored] * self.cfg.iterations
        batches, stats = self.pending.pop()
        metrics = {**s.accumulate(batches), **stats}
        metrics["grad_norm"] = s.apply({"loss": metrics["loss"]})
        return metrics

    def evaluate(self) -> dict[str, float]:
        s = self.session
        rows = [r for dataset in s.data.eval for r in dataset.rows]
        return evaluate(s.policy, rows, s.tokenizer, s.template, self.reward, self.cfg)


@torch.no_grad()
def rollout(policy, reference, tokenizer, template, rows: list[data.Row], reward, cfg: grpo.Config, micro: int,
            pad: int, seed: int, world) -> tuple[list[dict], dict[str, float]]:
    """Micro-batches of scored groups (each holds `micro` prompts x G completions) and the rollout's stats."""
    prompts = [r.fields["prompt"] for r in rows]
    samples = generation.sample(policy, tokenizer, prompts, template=template, n=cfg.group_size,
                                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                seed=seed)
    rewards = reward([s.prompt for s in samples], [s.text for s in samples], [rows[s.index].fields for s in samples])
    advantages = step_advantages(rewards, cfg, world)  # (P*G,)
    size, batches = micro * cfg.group_size, []
    for start in range(0, len(samples), size):
        batch = session.to_device(generation.pack(samples[start:start + size], pad), world.device)
        batch["advantages"] = advantages[start:start + size].to(world.device)
        batch["num_items"] = grpo.items(batch["completion_mask"][:, 1:], cfg.loss_type)
        if cfg.iterations > 1:  # later steps on these rollouts are off-policy: keep the sampling policy's log-probs
            batch["old_logps"] = model_logps(policy, batch["input_ids"], batch["attention_mask"], cfg.temperature)
        if reference is not None:
            batch["ref_logps"] = model_logps(reference, batch["input_ids"], batch["attention_mask"], cfg.temperature)
        batches.append(batch)
    grouped = rewards.view(-1, cfg.group_size)
    stats = {"reward": float(rewards.mean()), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
             "frac_reward_zero_std": float((grouped.std(dim=1) == 0).float().mean()),
             "completion_length": sum(len(s.completion_ids) for s in samples) / len(samples)}
    return batches, stats


def step_advantages(rewards: torch.Tensor, cfg: grpo.Config, world) -> torch.Tensor:
    """Group-relative advantages; with `scale_rewards: batch`, the std is that of every process's rewards."""
    if cfg.scale_rewards != "batch" or world.size == 1:
        return grpo.group_advantages(rewards, cfg.group_size, cfg.scale_rewards)
    n = parallel.all_sum(float(rewards.numel()), world)
    mean = parallel.all_sum(float(rewards.sum()), world) / n
    var = parallel.all_sum(float(((rewards - mean) ** 2).sum()), world) / max(n - 1, 1.0)
    centred = grpo.group_advantages(rewards, cfg.group_size, "none")
    return centred / (var ** 0.5 + grpo.STD_EPS)


@torch.no_grad()
def evaluate(policy, rows: list[data.Row], tokenizer, template, reward, cfg: grpo.Config) -> dict[str, float]:
    """Mean reward of the greedy completion of every eval prompt."""
    samples = generation.sample(policy, tokenizer, [r.fields["prompt"] for r in rows], template=template, n=1,
                                max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    scores = reward([s.prompt for s in samples], [s.text for s in samples], [r.fields for r in rows])
    return {"eval_reward": float(scores.mean())}


def train(run: Run, resume: str | None = None, stop_after: int | None = None, quiet: bool = False,
          force: bool = False, allow_data_change: bool = False) -> str:
    return session.run_loop(run, GroupRollouts, resume, stop_after, quiet, force, allow_data_change)

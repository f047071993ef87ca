"""The PPO loop (RLHF with a reward model, or RL from Python rewards): rollouts, a value head and GAE,
with the math in trainers/objectives/ppo.py and everything around the steps the session's
(trainers/loops/session.py).

One iteration (one `schedule` step): draw `batch.size` prompts from the data mixture, sample one
completion each from the policy (trainers/generation.py, seeded by the run's seed and the step),
score it (trainers/rewards.py: reward functions and a reward model reading the policy's token ids,
weighted), read the policy's and the reference's log-probabilities and the value head's values at the
completion tokens, turn the per-token KL penalty and the score into advantages and returns (GAE), then
run `epochs` passes of `minibatches` AdamW steps over the batch.

The value head is a linear layer on the policy's last hidden states (shared body, zero-initialised),
trained beside the method's parameters and kept in the checkpoints' trainer_state/. The reference is
the session's: the policy with its adapter switched off when the method is an adapter, else a frozen
copy of the base (or of `objective.reference`). Dropout is off throughout (the policy stays in eval
mode), so the first epoch's ratio is exactly 1. The learning rate follows the warm-up + cosine schedule
per iteration. A NaN or infinite score, KL, loss or gradient stops the run before the optimizer applies
it. One process only (no torchrun).
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file

from surgery.errors import InputError, SpecError
from trainers import checkpoint, data, generation, parallel
from trainers.logprobs import next_token_logps
from trainers.loops import session
from trainers.objectives import ppo as math
from trainers.objectives.sft import pad_token_id
from trainers.spec import Run

VALUE_HEAD = "value_head.safetensors"


class PPORollouts(session.Steps):
    label = "ppo"
    shown = ("reward", "kl")
    train_mode = False  # no dropout: the rollout's and the update's log-probabilities agree
    evaluate_first = True
    advice = "a lower optim.lr or objective.kl_coef, or check the reward"

    @staticmethod
    def check(run: Run, world: parallel.World) -> None:
        spec, cfg = run.spec, run.objective_config
        if world.size > 1:
            raise SpecError(run.file, "objective.name", "PPO runs in one process; start it without torchrun")
        if spec.batch.grad_accum != 1:
            raise SpecError(run.file, "batch.grad_accum", "PPO splits each rollout batch into objective.minibatches; "
                            "leave grad_accum at 1")
        if spec.batch.size % cfg.minibatches:
            raise SpecError(run.file, "objective.minibatches", f"batch.size {spec.batch.size} does not split into "
                            f"{cfg.minibatches} minibatches; make batch.size a multiple of it")

    def __init__(self, s: session.Session):
        super().__init__(s)
        self.cfg = s.run.objective_config
        self.reward = self.cfg.load_reward(s.template, s.world.device, policy_tokenizer=s.tokenizer,
                                           where=f"{s.run.file}: objective")
        self.pad = pad_token_id(s.tokenizer)

    def start(self) -> list[dict]:
        self.head = value_head(self.session.policy, self.session.resume).to(self.session.world.device)
        return [{"params": list(self.head.parameters()), "weight_decay": 0.0}]

    def step(self, k: int) -> dict[str, float]:
        s = self.session
        rows = [s.data.train[d].rows[r].fields for d, r in s.draw(k)]
        batch = rollout(s.policy, self.head, s.reference, s.tokenizer, s.template, self.reward, rows, s.run, k,
                        self.pad)
        return update(s, self.head, batch, k + 1)

    def evaluate(self) -> dict[str, float]:
        s = self.session
        rows = [r.fields for dataset in s.data.eval for r in dataset.rows]
        return evaluate(s.policy, s.tokenizer, s.template, self.reward, rows, s.run, self.pad)

    def save_state(self, folder: str) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  os.path.join(folder, VALUE_HEAD))


def value_head(policy, resume: str | None) -> torch.nn.Linear:
    """A scalar head on the policy's hidden states: zeros, or the resumed checkpoint's."""
    head = torch.nn.Linear(policy.config.get_text_config().hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    if resume:
        path = os.path.join(resume, checkpoint.STATE, VALUE_HEAD)
        if not os.path.isfile(path):
            raise InputError(f"--resume {resume}: no {checkpoint.STATE}/{VALUE_HEAD}; resume PPO from a PPO checkpoint")
        head.load_state_dict(load_file(path))
    return head


def forward(policy, head, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of each next token and the value before it, each (B, T-1)."""
    out = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                 use_cache=False)
    values = head(out.hidden_states[-1][:, :-1].float()).squeeze(-1)  # (B, T-1)
    return next_token_logps(out.logits, batch["input_ids"]), values


@torch.no_grad()
def rollout(policy, head, reference, tokenizer, template, reward, rows: list[dict], run: Run, step: int,
            pad: int) -> dict:
    """Sample, score and compute everything an update needs; tensors (B, T-1) unless noted."""
    cfg, device = run.objective_config, next(policy.parameters()).device
    prompts = [r["prompt"] for r in rows]
    samples = generation.sample(policy, tokenizer, prompts, template=template, n=1, max_new_tokens=cfg.max_new_tokens,
                                temperature=cfg.temperature, top_p=cfg.top_p, seed=data.hash_seed(run.spec.seed, step))
    batch = session.to_device(generation.pack(samples, pad), device)
    scores = reward([s.prompt for s in samples], [s.text for s in samples], rows,
                    tokens=(batch["input_ids"], batch["attention_mask"]))  # (B,)
    if cfg.missing_eos_penalty is not None:
        scores -= cfg.missing_eos_penalty * torch.tensor([not s.finished for s in samples], dtype=torch.float32)
    mask = batch["completion_mask"][:, 1:].float()  # the token at t+1 is a completion token
    logps, values = forward(policy, head, batch)
    ref_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    ref_logps = next_token_logps(ref_logits, batch["input_ids"])
    kl = math.token_kl(logps, ref_logps, cfg.kl_estimator) * mask
    scores = scores.to(device)
    rewards = math.token_rewards(scores, kl, mask, cfg.kl_coef)
    advantages, returns = math.gae(rewards, values, mask, cfg.gamma, cfg.lam)
    return {**batch, "mask": mask, "logps": logps * mask, "values": values * mask, "returns": returns,
            "advantages": math.whiten(advantages, mask), "scores": scores, "kl": kl,
            "lengths": batch["completion_mask"].sum(1).float()}


def update(s: session.Session, head, batch: dict, step: int) -> dict[str, float]:
    """The PPO epochs over one rollout batch; NaN or infinite numbers stop the run before an update applies them."""
    policy, cfg, size = s.policy, s.run.objective_config, batch["input_ids"].shape[0]
    s.check_finite({"score": batch["scores"], "kl": batch["kl"]})
    sums: dict[str, float] = {}
    parts = size // cfg.minibatches
    generator = torch.Generator().manual_seed(data.hash_seed(s.run.spec.seed, step, 1))
    for _ in range(cfg.epochs):
        order = torch.randperm(size, generator=generator)
        for i in range(cfg.minibatches):
            pick = order[i * parts:(i + 1) * parts].to(batch["input_ids"].device)
            mb = {k: v[pick] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.shape[0] == size}
            logps, values = forward(policy, head, mb)
            pg, pg_metrics = math.policy_loss(logps, mb["logps"], mb["advantages"], mb["mask"], cfg.clip)
            vf, vf_metrics = math.value_loss(values, mb["values"], mb["returns"], mb["mask"], cfg.value_clip)
            loss = pg + cfg.vf_coef * vf
            s.check_finite({"loss": loss.detach()})
            loss.backward()
            grad_norm = s.apply({}, [*policy.parameters(), *head.parameters()])
            losses = {"loss": float(loss.detach()), "pg_loss": float(pg.detach()), "vf_loss": float(vf.detach())}
            for k, v in {**losses, "grad_norm": grad_norm, **pg_metrics, **vf_metrics}.items():
                sums[k] = sums.get(k, 0.0) + v
    updates = cfg.epochs * cfg.minibatches
    return {"reward": float(batch["scores"].mean()), "kl": float(batch["kl"].sum(1).mean()),
            "length": float(batch["lengths"].mean()), **{k: v / updates for k, v in sums.items()}}


@torch.no_grad()
def evaluate(policy, tokenizer, template, reward, rows: list[dict], run: Run, pad: int) -> dict[str, float]:
    """Mean score of greedy completions of the held-out prompts."""
    device = next(policy.parameters()).device
    samples = generation.sample(policy, tokenizer, [r["prompt"] for r in rows], template=template, n=1,
                                max_new_tokens=run.objective_config.max_new_tokens, temperature=0.0, seed=run.spec.seed)
    batch = session.to_device(generation.pack(samples, pad), device)
    scores = reward([s.prompt for s in samples], [s.text for s in samples], rows,
                    tokens=(batch["input_ids"], batch["attention_mask"]))
    return {"eval_reward": float(scores.mean())}


def train(run: Run, resume: str | None = None, stop_after: int | None = None, quiet: bool = False,
          force: bool = False, allow_data_change: bool = False) -> str:
    return session.run_loop(run, PPORollouts, resume, stop_after, quiet, force, allow_data_change)

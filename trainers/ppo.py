"""The PPO loop (RLHF with a reward model, or RL from a Python reward): its own loop, since rollouts,
a value head and GAE do not fit the shared one. The math is `trainers/objectives/ppo.py`.

One iteration (one `schedule` step): draw `batch.size` prompts from the data mixture, sample one
completion each from the policy (trainers/generation.py, seeded by the run's seed and the step),
score it (reward model or function), read the policy's and the reference's log-probabilities and
the value head's values at the completion tokens, turn the per-token KL penalty and the score into
advantages and returns (GAE), then run `epochs` passes of `minibatches` AdamW steps over the batch.

The value head is a linear layer on the policy's last hidden states (shared body, zero-initialised).
Dropout is off throughout (the policy stays in eval mode), so the first epoch's ratio is exactly 1.
The learning rate follows the shared warm-up + cosine schedule per iteration.

Checkpoints are the shared loop's: the policy as a model folder (or adapter folder), its tokenizer
with the chat template, lineage.json, and `trainer_state/` (optimizer, schedule, data position,
random state, and `value_head.safetensors`); `--resume` continues a run exactly. A NaN or infinite
KL, score or loss stops the run before the optimizer applies it; the checkpoints written so far are kept.
One process only (no torchrun).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from surgery.errors import InputError, NumericsError, SpecError
from surgery.io.output import atomic_folder, write_json
from trainers import checkpoint, data, generation, loop, parallel, rewards, scorers, templates
from trainers.objectives import ppo as math
from trainers.spec import Run

VALUE_HEAD = "value_head.safetensors"


@dataclass(frozen=True)
class Prompts:
    sets: list[data.Dataset]
    train: list[list[dict]]  # each training dataset's rows (fields)
    eval: list[dict]
    mixture: data.Mixture


@dataclass(frozen=True)
class Reward:
    model: scorers.RewardModel | None
    function: object | None
    field: str


def train(run: Run, resume: str | None = None, stop_after: int | None = None, quiet: bool = False) -> str:
    """PPO as `run` says; returns the final folder (or, with `stop_after`, that step's checkpoint)."""
    spec, world = run.spec, parallel.start()
    try:
        check_spec(run, world)
        if resume is None:
            loop.check_fresh(spec.out)
        torch.manual_seed(spec.seed)  # the method's initial weights follow the seed
        tokenizer = loop.load_tokenizer(spec)
        template = templates.resolve(spec.chat_template, tokenizer, run.file)
        prompts = read_prompts(run)
        reward = load_reward(run, tokenizer, world.device)
        state = checkpoint.read_state(resume, run) if resume else None
        policy = loop.build_model(run, resume if state and state.trainable is None else spec.base,
                                  state).to(world.device)
        reference = load_reference(run, policy, tokenizer, world.device)
        head = value_head(policy, resume).to(world.device)
        optimizer = loop.make_optimizer(run, policy)
        optimizer.add_param_group({"params": list(head.parameters()), "weight_decay": 0.0})
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: loop.lr_factor(s, spec.schedule))
        step, metrics = 0, {}
        if state:
            step, metrics = state.step, dict(state.metrics)
            prompts.mixture.load_state_dict(state.mixture)
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            checkpoint.set_rng_state(state.rng[0], world.device)

        log = loop.Log(os.path.join(spec.out, "log.jsonl"), True, keep_until=step)
        log.write({"event": "start", "step": step, "total_steps": spec.schedule.total_steps,
                   "rows": [len(s.rows) for s in prompts.sets], "resumed_from": resume})
        policy.eval()  # no dropout: the rollout's and the update's log-probabilities agree
        if prompts.eval and step == 0:
            log.write({"step": 0, **evaluate(policy, tokenizer, template, reward, prompts.eval, run)})
        last_good = resume
        last = spec.schedule.total_steps if stop_after is None else min(stop_after, spec.schedule.total_steps)
        bar = tqdm(total=spec.schedule.total_steps, initial=step, desc="ppo", disable=quiet, dynamic_ncols=True)
        while step < last:
            rows = [prompts.train[d][r] for d, r in prompts.mixture.draw(step, spec.batch.size)]
            batch = rollout(policy, head, reference, tokenizer, template, reward, rows, run, step)
            metrics = update(policy, head, optimizer, batch, run, step + 1, last_good)
            metrics["lr"] = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            log.write({"step": step, **metrics})
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}", refresh=False)
            if prompts.eval and (step == last or (spec.eval_every and step % spec.eval_every == 0)):
                scores = evaluate(policy, tokenizer, template, reward, prompts.eval, run)
                metrics.update(scores)
                log.write({"step": step, **scores})
            if step < spec.schedule.total_steps and (step == last or (spec.save_every and step % spec.save_every == 0)):
                last_good = checkpoint.step_folder(spec.out, step)
                save(last_good, policy, head, tokenizer, template, run, step, prompts, optimizer, scheduler, metrics,
                     resume, world.device)
        bar.close()
        if step < spec.schedule.total_steps:
            return checkpoint.step_folder(spec.out, step)
        final = os.path.join(spec.out, "final")
        save(final, policy, head, tokenizer, template, run, step, prompts, None, None, metrics, resume, world.device)
        log.write({"event": "end", "step": step, "out": final})
        return final
    finally:
        parallel.stop(world)


def check_spec(run: Run, world) -> None:
    spec, cfg = run.spec, run.objective_config
    if world.size > 1:
        raise SpecError(run.file, "objective.name", "PPO runs in one process; start it without torchrun")
    if spec.batch.grad_accum != 1:
        raise SpecError(run.file, "batch.grad_accum", "PPO splits each rollout batch into objective.minibatches; "
                        "leave grad_accum at 1")
    if spec.batch.size % cfg.minibatches:
        raise SpecError(run.file, "objective.minibatches", f"batch.size {spec.batch.size} does not split into "
                        f"{cfg.minibatches} minibatches; make batch.size a multiple of it")


def read_prompts(run: Run) -> Prompts:
    spec = run.spec
    sets = [data.read_dataset(s.path, math.SHAPES, f"{run.file}: data.train.{i}")
            for i, s in enumerate(spec.data.train)]
    held = [data.read_dataset(p, math.SHAPES, f"{run.file}: data.eval.{i}") for i, p in enumerate(spec.data.eval)]
    sizes = [len(s.rows) for s in sets]
    temperature = spec.data.temperature if spec.data.sampling == "temperature" else 1.0
    probabilities = data.mixture_probabilities(sizes, [s.weight for s in spec.data.train], temperature)
    return Prompts(sets, [[r.fields for r in s.rows] for s in sets], [r.fields for s in held for r in s.rows],
                   data.Mixture(sizes, probabilities, spec.seed))


def load_reward(run: Run, tokenizer, device) -> Reward:
    cfg = run.objective_config
    if cfg.reward_model is not None:
        field = f"{run.file}: objective.reward_model"
        return Reward(scorers.load_reward_model(cfg.reward_model, tokenizer, field, device), None, field)
    field = f"{run.file}: objective.reward_function"
    try:
        return Reward(None, rewards.function(cfg.reward_function), cfg.reward_function)
    except InputError as e:
        raise InputError(f"{field}: {e}") from None


def load_reference(run: Run, policy, tokenizer, device) -> torch.nn.Module:
    """The frozen reference (the base unless objective.reference names another folder of the same
    architecture and vocabulary)."""
    path = run.objective_config.reference or run.spec.base
    reference = loop.load_weights(run, path)
    field = f"{run.file}: objective.reference {path!r}"
    ours, theirs = policy.config, reference.config
    if ours.model_type != theirs.model_type or ours.vocab_size != theirs.vocab_size:
        raise InputError(f"{field}: a {theirs.model_type} with {theirs.vocab_size} tokens, while the policy is a "
                         f"{ours.model_type} with {ours.vocab_size}; the KL penalty compares the two token by token, "
                         "so give a reference of the policy's architecture and vocabulary (or leave it out: the base)")
    if run.objective_config.reference:
        from transformers import AutoTokenizer

        problem = scorers.tokenizer_difference(AutoTokenizer.from_pretrained(path), tokenizer)
        if problem:
            raise InputError(f"{field}: its tokenizer differs from the policy's ({problem}); give a reference "
                             "trained from the same base")
    return reference.to(device).eval().requires_grad_(False)


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


def next_token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(x_{t+1} | x_<=t) of the tokens that follow, (B, T-1)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def rollout(policy, head, reference, tokenizer, template, reward: Reward, rows: list[dict], run: Run,
            step: int) -> dict:
    """Sample, score and compute everything an update needs; tensors (B, T-1) unless noted."""
    cfg, device = run.objective_config, next(policy.parameters()).device
    prompts = [r["prompt"] for r in rows]
    samples = generation.sample(policy, tokenizer, prompts, template=template, n=1, max_new_tokens=cfg.max_new_tokens,
                                temperature=cfg.temperature, top_p=cfg.top_p, seed=data.hash_seed(run.spec.seed, step))
    batch = loop.to_device(generation.pack(samples, loop.pad_token_id(tokenizer)), device)
    scores = score(reward, samples, batch, rows)  # (B,)
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


def score(reward: Reward, samples, batch: dict, rows: list[dict]) -> torch.Tensor:
    if reward.model is not None:
        return scorers.score_sequences(reward.model, batch["input_ids"], batch["attention_mask"])
    return torch.tensor([rewards.call(reward.field, reward.function, s.prompt, s.text, row)
                         for s, row in zip(samples, rows)], dtype=torch.float32)


def update(policy, head, optimizer, batch: dict, run: Run, step: int, last_good: str | None) -> dict[str, float]:
    """The PPO epochs over one rollout batch; refuses NaN before any optimizer step applies it."""
    cfg, size = run.objective_config, batch["input_ids"].shape[0]
    check_finite({"score": batch["scores"], "kl": batch["kl"]}, step, last_good)
    sums: dict[str, float] = {}
    parts = size // cfg.minibatches
    generator = torch.Generator().manual_seed(data.hash_seed(run.spec.seed, step, 1))
    for _ in range(cfg.epochs):
        order = torch.randperm(size, generator=generator)
        for i in range(cfg.minibatches):
            pick = order[i * parts:(i + 1) * parts].to(batch["input_ids"].device)
            mb = {k: v[pick] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.shape[0] == size}
            logps, values = forward(policy, head, mb)
            pg, pg_metrics = math.policy_loss(logps, mb["logps"], mb["advantages"], mb["mask"], cfg.clip)
            vf, vf_metrics = math.value_loss(values, mb["values"], mb["returns"], mb["mask"], cfg.value_clip)
            loss = pg + cfg.vf_coef * vf
            check_finite({"loss": loss.detach()}, step, last_good)
            loss.backward()
            grad_norm = clip(policy, head, run.spec.optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses = {"loss": float(loss.detach()), "pg_loss": float(pg.detach()), "vf_loss": float(vf.detach())}
            for k, v in {**losses, "grad_norm": grad_norm, **pg_metrics, **vf_metrics}.items():
                sums[k] = sums.get(k, 0.0) + v
    updates = cfg.epochs * cfg.minibatches
    return {"reward": float(batch["scores"].mean()), "kl": float(batch["kl"].sum(1).mean()),
            "length": float(batch["lengths"].mean()), **{k: v / updates for k, v in sums.items()}}


def clip(policy, head, max_norm: float | None) -> float:
    """Clip the global gradient norm of the policy and the value head together; returns it."""
    params = [p for p in [*policy.parameters(), *head.parameters()] if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf")))


def check_finite(tensors: dict[str, torch.Tensor], step: int, last_good: str | None) -> None:
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
            raise NumericsError(f"PPO step {step}: the {name} is NaN or infinite, so training stopped before "
                                f"applying it; {kept}. Lower optim.lr or objective.kl_coef, or check the reward")


@torch.no_grad()
def evaluate(policy, tokenizer, template, reward: Reward, rows: list[dict], run: Run) -> dict[str, float]:
    """Mean score of greedy completions of the held-out prompts."""
    device = next(policy.parameters()).device
    samples = generation.sample(policy, tokenizer, [r["prompt"] for r in rows], template=template, n=1,
                                max_new_tokens=run.objective_config.max_new_tokens, temperature=0.0, seed=run.spec.seed)
    batch = loop.to_device(generation.pack(samples, loop.pad_token_id(tokenizer)), device)
    return {"eval_reward": float(score(reward, samples, batch, rows).mean())}


def save(folder: str, policy, head, tokenizer, template, run: Run, step: int, prompts: Prompts, optimizer, scheduler,
         metrics: dict, parent: str | None, device) -> None:
    """A checkpoint as the shared loop writes it; with an optimizer, resumable (value head included)."""
    whole = getattr(run.method, "WHOLE_MODEL", False)
    with atomic_folder(folder) as tmp:
        run.method.save(policy, tmp, run.method_config)
        tokenizer.chat_template = template.jinja or tokenizer.chat_template
        tokenizer.save_pretrained(tmp)
        write_json(os.path.join(tmp, "lineage.json"), loop.lineage(run, prompts.sets, step, metrics, parent, template))
        if optimizer is not None:
            trainable = None if whole else parallel.full_state_dict(policy, parallel.World(0, 1, device, False), True)
            checkpoint.write_state(tmp, step, run, prompts.mixture.state_dict(), optimizer.state_dict(),
                                   scheduler.state_dict(), [checkpoint.rng_state(device)], trainable, metrics)
            save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                      os.path.join(tmp, checkpoint.STATE, VALUE_HEAD))

"""The GRPO loop: every `iterations` optimizer steps, sample a group of completions per prompt with
the current policy, score them, and turn the rewards into group-relative advantages; then step on
those rollouts (the loss is trainers/objectives/grpo.py).

It is its own loop because a step begins with generation by the policy being trained, scoring by a
reward, and (with iterations > 1) several optimizer steps on one batch of rollouts; the shared loop
draws fixed, pre-encoded rows. Everything else is the shared loop's: the model and method, the
optimizer and schedule, the mixture of prompts, accumulation weighted by items (tokens for the
default `dapo` aggregation), data parallelism (each process samples its share of the prompts; the
groups never straddle processes), logs and atomic, resumable checkpoints.

batch.size counts prompts per rollout; each gives `group_size` completions. Evaluation is the mean
reward of the greedy completion of every data.eval prompt (`eval_reward`), logged at step 0 too.
"""

from __future__ import annotations

import os

import torch
from tqdm import tqdm

from surgery.errors import SpecError
from trainers import checkpoint, data, generation, loop, parallel, templates
from trainers.objectives import grpo
from trainers.objectives.sft import pad_token_id
from trainers.spec import Run


def train(run: Run, resume: str | None = None, stop_after: int | None = None, quiet: bool = False) -> str:
    spec, cfg, world = run.spec, run.objective_config, parallel.start()
    try:
        micro = loop.micro_batch_size(spec, world.size, run.file)  # prompts per micro-batch
        check_spec(run)
        if resume is None:
            loop.check_fresh(spec.out)
        torch.manual_seed(spec.seed)
        tokenizer = loop.load_tokenizer(spec)
        template = templates.resolve(spec.chat_template, tokenizer, run.file)
        corpus = read_prompts(run)
        state = checkpoint.read_state(resume, run) if resume else None
        model = loop.build_model(run, resume if state and state.trainable is None else spec.base,
                                 state).to(world.device)
        reference = loop.load_reference(run, world, model) if cfg.beta else None
        reward = cfg.load_reward(template, world.device)
        model = parallel.wrap(model, world, spec.parallel)
        optimizer = loop.make_optimizer(run, parallel.unwrap(model))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: loop.lr_factor(s, spec.schedule))
        step, metrics = 0, {}
        if state:
            step, metrics = state.step, dict(state.metrics)
            corpus.mixture.load_state_dict(state.mixture)
            loop.load_optimizer(optimizer, model, state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            checkpoint.set_rng_state(state.rng[world.rank % len(state.rng)], world.device)

        log = loop.Log(os.path.join(spec.out, "log.jsonl"), world.main, keep_until=step)
        log.write({"event": "start", "step": step, "total_steps": spec.schedule.total_steps,
                   "rows": [len(s.rows) for s in corpus.train_sets], "processes": world.size, "resumed_from": resume})
        pad = pad_token_id(tokenizer)
        bar = tqdm(total=spec.schedule.total_steps, initial=step, desc="grpo", disable=quiet or not world.main,
                   dynamic_ncols=True)
        model.train()
        if corpus.eval and step == 0:  # the starting model's score, for comparison
            log.write({"step": 0, **evaluate(parallel.unwrap(model), corpus.eval, tokenizer, template, reward, cfg)})
        last = spec.schedule.total_steps if stop_after is None else min(stop_after, spec.schedule.total_steps)
        while step < last:
            rows = my_rows(corpus, step, run, world.rank, micro)
            batches, stats = rollout(parallel.unwrap(model), reference, tokenizer, template, rows, reward, cfg, micro,
                                     pad, data.hash_seed(spec.seed, step, world.rank), world)
            for _ in range(cfg.iterations):
                metrics = {**loop.accumulate(model, batches, run, world, None), **stats}
                loop.optimizer_step(model, optimizer, scheduler, spec, metrics, step, log)
                step += 1
                log.write({"step": step, **metrics})
                bar.update(1)
                bar.set_postfix(reward=f"{stats['reward']:.3f}", refresh=False)
                if corpus.eval and (step == last or (spec.eval_every and step % spec.eval_every == 0)):
                    scores = evaluate(parallel.unwrap(model), corpus.eval, tokenizer, template, reward, cfg)
                    metrics.update(scores)
                    log.write({"step": step, **scores})
                if step < spec.schedule.total_steps and (
                        step == last or (spec.save_every and step % spec.save_every == 0)):
                    loop.save(checkpoint.step_folder(spec.out, step), model, tokenizer, template, run, world, step,
                              corpus, optimizer, scheduler, metrics, resume)
                if step == last:
                    break
        bar.close()
        if step < spec.schedule.total_steps:
            return checkpoint.step_folder(spec.out, step)
        final = os.path.join(spec.out, "final")
        loop.save(final, model, tokenizer, template, run, world, step, corpus, None, None, metrics, resume)
        log.write({"event": "end", "step": step, "out": final})
        return final
    finally:
        parallel.stop(world)


def check_spec(run: Run) -> None:
    spec, cfg = run.spec, run.objective_config
    if spec.parallel == "fsdp":
        raise SpecError(run.file, "parallel", "GRPO samples with the whole policy on each process; use parallel: ddp")
    if cfg.iterations > 1 and spec.save_every and spec.save_every % cfg.iterations:
        raise SpecError(run.file, "save_every", f"a checkpoint inside a batch of rollouts cannot be resumed exactly; "
                        f"make save_every a multiple of objective.iterations={cfg.iterations}")


def read_prompts(run: Run) -> loop.Corpus:
    """The training and eval rows as read (prompts are rendered and encoded when sampled)."""
    spec = run.spec
    train_sets = [data.read_dataset(s.path, grpo.SHAPES, f"{run.file}: data.train.{i}")
                  for i, s in enumerate(spec.data.train)]
    eval_sets = [data.read_dataset(p, grpo.SHAPES, f"{run.file}: data.eval.{i}") for i, p in enumerate(spec.data.eval)]
    sizes = [len(s.rows) for s in train_sets]
    temperature = spec.data.temperature if spec.data.sampling == "temperature" else 1.0
    probabilities = data.mixture_probabilities(sizes, [s.weight for s in spec.data.train], temperature)
    return loop.Corpus(train_sets, [list(s.rows) for s in train_sets], [list(s.rows) for s in eval_sets],
                       data.Mixture(sizes, probabilities, spec.seed), 0, 0)


def my_rows(corpus: loop.Corpus, step: int, run: Run, rank: int, micro: int) -> list[data.Row]:
    """This process's prompts of the rollout drawn at `step` (the same draw on every process)."""
    picks = corpus.mixture.draw(step, run.spec.batch.size)
    share = micro * run.spec.batch.grad_accum
    return [corpus.train[d][r] for d, r in picks[rank * share:(rank + 1) * share]]


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
        batch = loop.to_device(generation.pack(samples[start:start + size], pad), world.device)
        batch["advantages"] = advantages[start:start + size].to(world.device)
        batch["num_items"] = grpo.items(batch["completion_mask"][:, 1:], cfg.loss_type)
        if cfg.iterations > 1:  # later steps on these rollouts are off-policy: keep the sampling policy's log-probs
            batch["old_logps"] = grpo.token_logps(policy, batch["input_ids"], batch["attention_mask"], cfg.temperature)
        if reference is not None:
            batch["ref_logps"] = grpo.token_logps(reference, batch["input_ids"], batch["attention_mask"],
                                                  cfg.temperature)
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
def evaluate(policy, eval_sets: list[list[data.Row]], tokenizer, template, reward,
             cfg: grpo.Config) -> dict[str, float]:
    """Mean reward of the greedy completion of every eval prompt."""
    rows = [r for rs in eval_sets for r in rs]
    samples = generation.sample(policy, tokenizer, [r.fields["prompt"] for r in rows], template=template, n=1,
                                max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    scores = reward([s.prompt for s in samples], [s.text for s in samples], [r.fields for r in rows])
    return {"eval_reward": float(scores.mean())}

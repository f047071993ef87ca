"""The shared training loop: every objective and method runs through `train`.

One optimizer step: draw `batch.size` rows from the mixture (the same rows on every process), give
each process its share, split it into `grad_accum` micro-batches, and weight each micro-batch's mean
loss by its share of the step's items (tokens for SFT), so the gradient is that of the whole step's
mean whatever the split across processes and micro-batches. Then clip, step AdamW and the warm-up +
cosine schedule, log, evaluate and checkpoint as the spec says.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from surgery.errors import InputError, NumericsError, OutputError, SpecError
from surgery.io.output import atomic_folder, write_json
from trainers import checkpoint, data, parallel, templates
from trainers import reference as references
from trainers.checkpoint import Resumed
from trainers.objectives.sft import pad_token_id
from trainers.spec import Run

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train(run: Run, resume: str | None = None, stop_after: int | None = None, quiet: bool = False) -> str:
    """Train as `run` says; returns the final folder (or, with `stop_after`, that step's checkpoint)."""
    if hasattr(run.objective, "LOOP"):  # an objective with a loop of its own (PPO)
        return importlib.import_module(run.objective.LOOP).train(run, resume=resume, stop_after=stop_after, quiet=quiet)
    spec, world = run.spec, parallel.start()
    try:
        micro = micro_batch_size(spec, world.size, run.file)
        if spec.parallel == "fsdp" and not getattr(run.method, "WHOLE_MODEL", False):
            raise SpecError(run.file, "parallel", f"fsdp saves whole models (methods full and freeze); method "
                            f"'{spec.method.name}' trains few enough weights for parallel: ddp")
        if resume is None:
            check_fresh(spec.out)
        torch.manual_seed(spec.seed)  # the method's initial weights (LoRA's A, say) follow the seed
        tokenizer = load_tokenizer(spec)
        template = templates.resolve(spec.chat_template, tokenizer, run.file)
        corpus = prepare_data(run, tokenizer, template)

        state = checkpoint.read_state(resume, run) if resume else None
        model = build_model(run, resume if state and state.trainable is None else spec.base, state)
        model = model.to(world.device)
        reference = load_reference(run, world, model) if hasattr(run.objective, "annotate") else None
        model = parallel.wrap(model, world, spec.parallel)
        optimizer = make_optimizer(run, parallel.unwrap(model))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, spec.schedule))
        step, metrics = 0, {}
        if state:
            step, metrics = state.step, dict(state.metrics)
            corpus.mixture.load_state_dict(state.mixture)
            load_optimizer(optimizer, model, state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            checkpoint.set_rng_state(state.rng[world.rank % len(state.rng)], world.device)

        log = Log(os.path.join(spec.out, "log.jsonl"), world.main, keep_until=step)
        log.write({"event": "start", "step": step, "total_steps": spec.schedule.total_steps,
                   "rows": [len(s.rows) for s in corpus.train_sets], "truncated": corpus.cut,
                   "eval_truncated": corpus.eval_cut, "processes": world.size, "resumed_from": resume})
        if corpus.cut and world.main:
            tqdm.write(f"truncated {corpus.cut} of {sum(map(len, corpus.train))} training rows to "
                       f"batch.max_length={spec.batch.max_length} tokens", file=sys.stderr)
        pad = pad_token_id(tokenizer)
        bar = tqdm(total=spec.schedule.total_steps, initial=step, desc="train", disable=quiet or not world.main,
                   dynamic_ncols=True)
        model.train()
        last = spec.schedule.total_steps if stop_after is None else min(stop_after, spec.schedule.total_steps)
        while step < last:
            batches = step_batches(corpus, step, run, world.rank, micro, pad)
            metrics = accumulate(model, batches, run, world, reference)
            optimizer_step(model, optimizer, scheduler, spec, metrics, step, log)
            step += 1
            log.write({"step": step, **metrics})
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            if corpus.eval and (step == last or (spec.eval_every and step % spec.eval_every == 0)):
                scores = evaluate(model, corpus.eval, run, micro, pad, world.device, reference)
                metrics.update(scores)
                log.write({"step": step, **scores})
            if step < spec.schedule.total_steps and (step == last or (spec.save_every and step % spec.save_every == 0)):
                save(checkpoint.step_folder(spec.out, step), model, tokenizer, template, run, world, step,
                     corpus, optimizer, scheduler, metrics, resume)
        bar.close()
        if step < spec.schedule.total_steps:
            return checkpoint.step_folder(spec.out, step)
        final = os.path.join(spec.out, "final")
        save(final, model, tokenizer, template, run, world, step, corpus, None, None, metrics, resume)
        log.write({"event": "end", "step": step, "out": final})
        return final
    finally:
        parallel.stop(world)


def optimizer_step(model, optimizer, scheduler, spec, metrics: dict, step: int, log) -> None:
    """Clip, stop before the update if the loss or gradient is not finite, step AdamW and the schedule;
    `metrics` gets the gradient norm and the learning rate the step used."""
    metrics["grad_norm"] = clip(model, spec.optim.max_grad_norm)
    if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
        stop_on_nan(spec.out, step + 1, metrics, log)
    metrics["lr"] = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def step_batches(corpus: Corpus, step: int, run: Run, rank: int, micro: int, pad: int) -> list[dict]:
    """This process's micro-batches of the step: its slice of the step's rows, drawn alike everywhere."""
    picks = corpus.mixture.draw(step, run.spec.batch.size)  # [(dataset, row)] of the whole step
    share = micro * run.spec.batch.grad_accum
    mine = picks[rank * share:(rank + 1) * share]
    return [run.objective.collate([corpus.train[d][r] for d, r in mine[i:i + micro]], pad)
            for i in range(0, len(mine), micro)]


def accumulate(model, batches: list[dict], run: Run, world, reference) -> dict[str, float]:
    """Forward and backward over the micro-batches; the gradient is that of the mean over the step's
    items on all processes. Returns the step's loss and the objective's metrics (item-weighted)."""
    items = parallel.all_sum(float(sum(b["num_items"] for b in batches)), world)
    loss_sum, sums = 0.0, {}
    for i, batch in enumerate(batches):
        batch = to_device(batch, world.device)
        if reference is not None:
            with torch.no_grad():
                batch = run.objective.annotate(reference, batch, run.objective_config)
        n = float(batch["num_items"])
        with parallel.accumulating(model, skip_sync=i < len(batches) - 1):
            loss, metrics = run.objective.loss(model, batch, run.objective_config)
            (loss * (n / max(items, 1.0)) * world.size).backward()  # DDP divides the summed gradients by world.size
        loss_sum += float(loss.detach()) * n
        sums = {k: sums.get(k, 0.0) + v * n for k, v in metrics.items()}
    local = max(sum(float(b["num_items"]) for b in batches), 1.0)
    return {"loss": parallel.all_sum(loss_sum, world) / max(items, 1.0), "items": items,
            **{k: v / local for k, v in sums.items()}}  # the objective's metrics: this process's rows


def micro_batch_size(spec, processes: int, file: str) -> int:
    per_step = processes * spec.batch.grad_accum
    if spec.batch.size % per_step:
        raise SpecError(file, "batch.size", f"{spec.batch.size} rows do not split into {processes} process(es) x "
                        f"{spec.batch.grad_accum} micro-batches; make it a multiple of {per_step}")
    return spec.batch.size // per_step


def check_fresh(out: str) -> None:
    """A new run never overwrites another run's checkpoints."""
    done = (sorted(n for n in os.listdir(out) if n.startswith("checkpoint-") or n == "final") if os.path.isdir(out)
            else [])
    if done:
        raise OutputError(f"out {out!r} already holds {', '.join(done[:3])} of an earlier run; continue it with "
                          f"--resume {os.path.join(out, done[0])}, or choose another out (or remove the folder)")


def load_tokenizer(spec):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.base, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"base {spec.base!r}: cannot load its tokenizer ({e}); "
                         "give a Hugging Face model folder") from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise InputError(f"base {spec.base!r}: its tokenizer has neither a pad nor an end-of-sequence token "
                         "to pad with")
    return tokenizer


@dataclass
class Corpus:
    train_sets: list[data.Dataset]
    train: list[list[dict]]  # encoded rows of each training dataset
    eval: list[list[dict]]
    mixture: data.Mixture
    cut: int  # training rows cut to batch.max_length
    eval_cut: int


def prepare_data(run: Run, tokenizer, template) -> Corpus:
    spec = run.spec
    train_sets = [data.read_dataset(s.path, run.objective.SHAPES, f"{run.file}: data.train.{i}")
                  for i, s in enumerate(spec.data.train)]
    eval_sets = [data.read_dataset(p, run.objective.SHAPES, f"{run.file}: data.eval.{i}")
                 for i, p in enumerate(spec.data.eval)]
    train, cut = encode_all(train_sets, tokenizer, template, run)
    evaluation, eval_cut = encode_all(eval_sets, tokenizer, template, run)
    sizes = [len(s.rows) for s in train_sets]
    temperature = spec.data.temperature if spec.data.sampling == "temperature" else 1.0
    probabilities = data.mixture_probabilities(sizes, [s.weight for s in spec.data.train], temperature)
    return Corpus(train_sets, train, evaluation, data.Mixture(sizes, probabilities, spec.seed), cut, eval_cut)


def encode_all(sets, tokenizer, template, run: Run) -> tuple[list[list[dict]], int]:
    """Every row of every dataset encoded once; over-long rows cut (counted) or refused."""
    out, cut = [], 0
    batch = run.spec.batch
    for dataset in sets:
        examples = []
        for row in dataset.rows:
            example, over = data.truncate(run.objective.encode(row, tokenizer, template, run.objective_config),
                                          batch.max_length)
            if over and batch.on_overflow == "error":
                raise InputError(f"{row.where}: longer than batch.max_length={batch.max_length} tokens; raise "
                                 "batch.max_length, shorten the row, or set batch.on_overflow: truncate")
            cut += over
            examples.append(example)
        out.append(examples)
    return out, cut


def load_weights(run: Run, path: str):
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[run.spec.dtype]
    if hasattr(run.objective, "load_model"):  # another model class (the reward model's scalar head)
        if hasattr(run.method, "load_model"):
            raise SpecError(run.file, "method.name", f"objective '{run.spec.objective.name}' loads its own model "
                            f"class, which method '{run.spec.method.name}' cannot load; choose another method")
        return run.objective.load_model(path, dtype, trust_remote_code=run.spec.trust_remote_code)
    if hasattr(run.method, "load_model"):
        return run.method.load_model(path, run.method_config, dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=run.spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"{path!r}: cannot load a causal LM from it ({e})") from None


def build_model(run: Run, path: str, state: Resumed | None) -> torch.nn.Module:
    """The base (or a whole-model checkpoint) with the method attached; a resumed run gets its trainable
    tensors back."""
    try:
        model = run.method.attach(load_weights(run, path), run.method_config)
    except SpecError as e:  # a method checks its config against the model: locate it in this spec file
        raise SpecError(run.file, e.field, e.problem) from None
    if state is not None and state.trainable is not None:
        missing = set(state.trainable) - {n for n, _ in model.named_parameters()}
        if missing:
            raise InputError("--resume: the checkpoint's trainable tensors do not fit the model "
                             f"({sorted(missing)[:3]})")
        model.load_state_dict(state.trainable, strict=False)
    return model


def load_reference(run: Run, world, policy: torch.nn.Module):
    """The frozen reference of the objective (see trainers/reference.py): the policy with its adapter
    switched off, or a loaded copy of `reference` (default: the base) checked against the policy."""
    path = getattr(run.objective_config, "reference", None)
    if path is None and references.has_adapter(policy):
        return references.WithoutAdapter(policy)
    reference = load_weights(run, path or run.spec.base).to(world.device).eval()
    references.check_compatible(reference, policy, path or run.spec.base, run.file)
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def stop_on_nan(out: str, step: int, metrics: dict, log: Log) -> None:
    """A non-finite loss or gradient: stop before the update, so every checkpoint written stays good."""
    done = sorted((int(n.split("-")[1]) for n in os.listdir(out) if n.startswith("checkpoint-")), reverse=True) \
        if os.path.isdir(out) else []
    last = checkpoint.step_folder(out, done[0]) if done else None
    log.write({"event": "stopped", "step": step, "reason": "non-finite loss or gradient",
               "loss": str(metrics["loss"]), "grad_norm": str(metrics["grad_norm"]), "last_good": last})
    keep = f"the last good checkpoint is {last} (continue with --resume {last} and a lower optim.lr)" if last else \
        "no checkpoint was written before it (set save_every to keep some)"
    raise NumericsError(f"step {step}: the loss is {metrics['loss']} and the gradient norm {metrics['grad_norm']}; "
                        f"training stopped before this step's update; {keep}")


def make_optimizer(run: Run, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D tensors) are not decayed, as in GPT-2 and most recipes since."""
    o = run.spec.optim
    if hasattr(run.method, "param_groups"):
        groups = run.method.param_groups(model, run.method_config, o.lr)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2]},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    if not groups:
        raise SpecError(run.file, "method", f"method '{run.spec.method.name}' left no parameter to train")
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


def lr_factor(step: int, schedule) -> float:
    """Linear warm-up over warmup_steps, then cosine from 1 to min_lr_ratio at total_steps (or constant)."""
    if step < schedule.warmup_steps:
        return (step + 1) / (schedule.warmup_steps + 1)
    if not schedule.cosine:
        return 1.0
    progress = (step - schedule.warmup_steps) / max(1, schedule.total_steps - schedule.warmup_steps)
    return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def load_optimizer(optimizer, model, state: dict) -> None:
    if parallel.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def optimizer_state(optimizer, model) -> dict:
    if parallel.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def clip(model: torch.nn.Module, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


@torch.no_grad()
def evaluate(model, examples: list[list[dict]], run: Run, micro: int, pad: int, device,
             reference=None) -> dict[str, float]:
    """The objective's loss over every eval row (each process scores all of them: eval sets are small)."""
    model.eval()
    total, items, sums, rows = 0.0, 0.0, {}, [e for dataset in examples for e in dataset]
    for i in range(0, len(rows), micro):
        batch = to_device(run.objective.collate(rows[i:i + micro], pad), device)
        if reference is not None:
            batch = run.objective.annotate(reference, batch, run.objective_config)
        loss, metrics = run.objective.loss(model, batch, run.objective_config)
        n = float(batch["num_items"])
        total, items = total + float(loss) * n, items + n
        sums = {k: sums.get(k, 0.0) + v * n for k, v in metrics.items()}
    model.train()
    return {"eval_loss": total / max(items, 1.0), **{f"eval_{k}": v / max(items, 1.0) for k, v in sums.items()}}


def save(folder, model, tokenizer, template, run: Run, world, step, corpus: Corpus, optimizer, scheduler, metrics,
         parent) -> None:
    """Write a checkpoint atomically (with an optimizer, a resumable one); rank 0 writes, all ranks gather."""
    whole = getattr(run.method, "WHOLE_MODEL", False)
    weights = parallel.full_state_dict(model, world) if parallel.is_sharded(model) else None
    resumable = optimizer is not None
    trainable = parallel.full_state_dict(model, world, trainable_only=True) if resumable and not whole else None
    optim = optimizer_state(optimizer, model) if resumable else None
    rngs = gather(checkpoint.rng_state(world.device), world)
    if world.main:
        with atomic_folder(folder) as tmp:
            inner = parallel.unwrap(model)
            if weights is not None:
                inner.save_pretrained(tmp, state_dict=weights)
            else:
                run.method.save(inner, tmp, run.method_config)
            tokenizer.chat_template = template.jinja or tokenizer.chat_template
            tokenizer.save_pretrained(tmp)
            write_json(os.path.join(tmp, "lineage.json"),
                       lineage(run, corpus.train_sets, step, metrics, parent, template))
            if resumable:
                checkpoint.write_state(tmp, step, run, corpus.mixture.state_dict(), optim, scheduler.state_dict(), rngs,
                                       trainable, metrics)
    parallel.barrier(world)


def gather(obj, world) -> list:
    if world.size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def lineage(run: Run, train_sets, step: int, metrics: dict, parent: str | None, template) -> dict:
    spec = run.spec
    return {
        "base": os.path.abspath(spec.base),
        "method": {"name": spec.method.name, **run.method_config.model_dump(mode="json")},
        "objective": {"name": spec.objective.name, **run.objective_config.model_dump(mode="json")},
        "data": [{"path": s.path, "weight": w.weight, "rows": len(s.rows), "sha256": s.sha256}
                 for s, w in zip(train_sets, spec.data.train)],
        "hyper_parameters": {k: spec.model_dump(mode="json")[k]
                             for k in ("optim", "schedule", "batch", "seed", "dtype")},
        "parent": os.path.abspath(parent) if parent else None,
        "steps": step,
        "metrics": metrics,
        "chat_template": template.name,
        "spec": os.path.abspath(run.file),
    }


class Log:
    """log.jsonl of the run (rank 0 writes); a resumed run first drops records past its checkpoint
    (and a line cut short by a kill)."""

    def __init__(self, path: str, main: bool, keep_until: int):
        self.path, self.main = path, main
        if not main:
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        kept = []
        if os.path.isfile(path) and keep_until:
            with open(path) as f:
                kept = [line for line in f if line.endswith("\n") and json.loads(line).get("step", 0) <= keep_until]
        with open(path, "w") as f:
            f.writelines(kept)

    def write(self, record: dict) -> None:
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

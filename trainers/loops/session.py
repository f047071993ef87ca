"""The run skeleton every training loop shares: a `Session` does what a run needs around its steps,
and a loop is a `Steps` hook that does one optimizer step's work.

    final = session.run_loop(run, Offline, resume=None, stop_after=None, quiet=False)

What the session does, in order:
1. the loop's spec checks (`Steps.check`), the model folders the spec names read with the project's reader
   (trainers/models.py: present, whole, finite), the run's identity (the spec's fields, and the sha256 of
   every input file: base, data, reference, reward model), and the out folder claimed and locked for
   the whole run (trainers/run_output.py: never an input or a file, never another run's checkpoints,
   never two runs at once); the micro-batch split; the checkpoint to resume checked whole (a damaged
   one is refused naming the file and the latest intact one) and refused when another run wrote it or
   an input changed since (unless --allow-data-change, which the lineage records);
2. the seed, the base's tokenizer and chat template, the data read (files or folders of JSONL, rows
   checked against the objective's shapes) and their mixture;
3. the loop's own preparation (`Steps(session)`: encoding rows, loading rewards), before any model loads;
4. the model (the base, or a whole-model checkpoint) with the method attached and a resumed run's
   trainable tensors put back, the frozen reference when the objective uses one (trainers/reference.py),
   the loop's `start` (PPO's value head), data parallelism, AdamW and the warm-up + cosine schedule;
   a resumed run gets its optimizer, schedule, data position and random state back, so it ends where a
   run never stopped ends;
5. the steps: `Steps.step(k)` runs forward and backward and applies updates through `apply` (clip,
   then stop before the update if the loss or gradient is NaN or infinite, naming the step and the last
   good checkpoint); the session logs each step to OUT/log.jsonl (a resumed run first drops the records
   past its checkpoint), evaluates every eval_every steps and at the last (`Steps.evaluate`), and
   writes a resumable checkpoint every save_every steps, atomically (a crash leaves the previous ones);
6. OUT/final (the method's format, the tokenizer with the chat template, lineage.json) and the end record.

The session never looks inside a batch: building it, and what its loss averages over (`num_items`), is
the objective's (trainers/objectives/objective.py).
"""

from __future__ import annotations

import json
import math
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from tqdm import tqdm

from surgery.errors import NumericsError, SpecError
from surgery.io.output import atomic_folder, write_json
from trainers import checkpoint, data, models, optim, parallel, run_output, templates
from trainers import reference as references
from trainers.checkpoint import RunIdentity
from trainers.spec import Run

SHOWN = {"grad_norm": "gradient norm"}  # how messages name a logged value


class Steps(ABC):
    """The per-step hook of a loop. Built once the data are read (before any model loads), so it can
    prepare its rows and rewards; `start` once the model and reference exist; then `step(k)` for each
    optimizer step k (0-based) of the schedule."""

    label = "train"  # the progress bar's
    shown: tuple[str, ...] = ("loss",)  # metrics on the progress bar
    train_mode = True  # the model's mode while stepping (PPO keeps dropout off: eval mode)
    evaluate_first = False  # also evaluate the starting model (step 0)
    advice = "a lower optim.lr"  # what to change after a NaN or infinite step

    def __init__(self, session: Session):
        self.session = session

    @staticmethod
    def check(run: Run, world: parallel.World) -> None:
        """Refuse a spec this loop cannot run, before anything is read or loaded."""
        return None

    def start(self) -> list[dict]:
        """After the model and reference are built: optimizer groups to train beside the method's."""
        return []

    def notes(self) -> dict:
        """Fields added to the log's start record."""
        return {}

    @abstractmethod
    def step(self, k: int) -> dict[str, float]:
        """Optimizer step k: forward, backward, and the update(s) through `session.apply`; the metrics to log."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Scores of the current model on data.eval (`eval_*`)."""

    def save_state(self, folder: str) -> None:
        """The loop's own resumable state, written into a checkpoint's trainer_state/ folder."""
        return None


@dataclass(frozen=True)
class Data:
    train: list[data.Dataset]
    eval: list[data.Dataset]
    mixture: data.Mixture


def run_loop(run: Run, loop: type[Steps], resume: str | None = None, stop_after: int | None = None,
             quiet: bool = False, force: bool = False, allow_data_change: bool = False) -> str:
    """Train as `run` says with `loop`'s steps; returns the final folder (or, with `stop_after`, that
    step's checkpoint). `force` replaces an earlier run in out once this one finishes; `allow_data_change`
    lets a resume continue on inputs that changed since its checkpoint."""
    run_output.check_flags(resume, force, allow_data_change)
    world = parallel.start()
    try:
        loop.check(run, world)
        models.check_run_models(run)  # the base (and reference, reward model) whole and finite, before any load
        identity = RunIdentity.of(run, checkpoint.input_hashes(run))
        with run_output.claimed(run, identity, resume, force, world.main) as folder:
            session = Session(run, world, resume, identity, folder, allow_data_change)
            steps = loop(session)
            session.build(steps)
            return session.train(steps, stop_after, quiet)
    finally:
        parallel.stop(world)


class Session:
    """One run as it trains: what `run_loop` builds (tokenizer, template, data, model, reference,
    optimizer, schedule, log) and what a loop's steps call (`draw`, `accumulate`, `apply`, `check_finite`)."""

    def __init__(self, run: Run, world: parallel.World, resume: str | None, identity: RunIdentity | None = None,
                 folder: str | None = None, allow_data_change: bool = False):
        spec = run.spec
        self.run, self.world, self.resume = run, world, resume
        self.identity = identity or RunIdentity.of(run, checkpoint.input_hashes(run))
        self.out = folder or spec.out  # where it writes: out, or under --force the sibling that replaces it
        self.forced = self.out != spec.out
        self.micro = micro_batch_size(spec, world.size, run.file)  # rows per micro-batch
        self.state = checkpoint.read_state(resume, self.identity, spec.schedule.total_steps, run.file,
                                           allow_data_change, models.spec_text(run.file)) if resume else None
        torch.manual_seed(spec.seed)  # the method's initial weights (LoRA's A, say) follow the seed
        self.tokenizer = models.load_tokenizer(spec)
        self.template = templates.resolve(spec.chat_template, self.tokenizer, run.file)
        self.data = read_data(run)
        self.step, self.metrics, self.last_good = 0, {}, resume

    def build(self, steps: Steps) -> None:
        """The model, reference, optimizer and schedule; a resumed run's state put back."""
        run, world, state = self.run, self.world, self.state
        self.advice = steps.advice
        path = self.resume if state and state.trainable is None else run.spec.base
        self.model = models.build_model(run, path, state).to(world.device)
        self.reference = references.load(run, self.model, self.tokenizer, world.device)
        extra = steps.start()
        self.model = parallel.wrap(self.model, world, run.spec.parallel)
        self.optimizer = optim.make_optimizer(run, self.policy, extra)
        self.scheduler = optim.make_scheduler(self.optimizer, run.spec.schedule)
        if state:
            self.step, self.metrics = state.step, dict(state.metrics)
            self.data.mixture.load_state_dict(state.mixture)
            optim.load_optimizer(self.optimizer, self.model, state.optimizer)
            self.scheduler.load_state_dict(state.scheduler)
            checkpoint.set_rng_state(state.rng[world.rank % len(state.rng)], world.device)
        self.log = Log(os.path.join(self.out, "log.jsonl"), world.main, keep_until=self.step)
        self.log.write({"event": "start", "step": self.step, "total_steps": run.spec.schedule.total_steps,
                        "rows": [len(s.rows) for s in self.data.train], **steps.notes(), "processes": world.size,
                        "resumed_from": self.resume})

    @property
    def policy(self) -> torch.nn.Module:
        """The model being trained, without the data-parallel wrapper."""
        return parallel.unwrap(self.model)

    def train(self, steps: Steps, stop_after: int | None, quiet: bool) -> str:
        spec = self.run.spec
        total = spec.schedule.total_steps
        last = total if stop_after is None else min(stop_after, total)
        bar = tqdm(total=total, initial=self.step, desc=steps.label, disable=quiet or not self.world.main,
                   dynamic_ncols=True)
        self.model.train(steps.train_mode)
        if self.data.eval and steps.evaluate_first and self.step == 0:  # the starting model's score, to compare
            self.log.write({"step": 0, **steps.evaluate()})
        while self.step < last:
            metrics = steps.step(self.step)
            metrics["lr"] = self.scheduler.get_last_lr()[0]  # the rate this step's updates used
            self.scheduler.step()
            self.step += 1
            self.metrics = metrics
            self.log.write({"step": self.step, **metrics})
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:.4f}" for k in steps.shown}, refresh=False)
            if self.data.eval and (self.step == last or (spec.eval_every and self.step % spec.eval_every == 0)):
                scores = steps.evaluate()
                metrics.update(scores)
                self.log.write({"step": self.step, **scores})
            if self.step < total and (self.step == last or (spec.save_every and self.step % spec.save_every == 0)):
                self.save(checkpoint.step_folder(self.out, self.step), steps, resumable=True)
        bar.close()
        if self.step < total:  # the published names: under --force the folder is renamed to out at the end
            return checkpoint.step_folder(spec.out, self.step)
        self.save(os.path.join(self.out, "final"), steps, resumable=False)
        final = os.path.join(spec.out, "final")
        self.log.write({"event": "end", "step": self.step, "out": final})
        return final

    def draw(self, k: int) -> list[tuple[int, int]]:
        """This process's (dataset, row) picks of step k: its slice of the step's rows, drawn alike everywhere."""
        batch = self.run.spec.batch
        picks = self.data.mixture.draw(k, batch.size)
        share = self.micro * batch.grad_accum
        return picks[self.world.rank * share:(self.world.rank + 1) * share]

    def accumulate(self, batches: list[dict]) -> dict[str, float]:
        """Forward and backward over the micro-batches; the gradient is that of the mean over the step's
        items on all processes. Returns the step's loss and the objective's metrics (item-weighted)."""
        objective, config, world = self.run.objective, self.run.objective_config, self.world
        items = parallel.all_sum(float(sum(b["num_items"] for b in batches)), world)
        loss_sum, sums = 0.0, {}
        for i, batch in enumerate(batches):
            batch = to_device(batch, world.device)
            if self.reference is not None and objective.annotate is not None:
                with torch.no_grad():
                    batch = objective.annotate(self.reference, batch, config)
            n = float(batch["num_items"])
            with parallel.accumulating(self.model, skip_sync=i < len(batches) - 1):
                loss, metrics = objective.loss(self.model, batch, config)
                # DDP divides the summed gradients by world.size
                (loss * (n / max(items, 1.0)) * world.size).backward()
            loss_sum += float(loss.detach()) * n
            sums = {k: sums.get(k, 0.0) + v * n for k, v in metrics.items()}
        local = max(sum(float(b["num_items"]) for b in batches), 1.0)
        return {"loss": parallel.all_sum(loss_sum, world) / max(items, 1.0), "items": items,
                **{k: v / local for k, v in sums.items()}}  # the objective's metrics: this process's rows

    def apply(self, values: dict[str, float], parameters=None) -> float:
        """One optimizer update: clip the gradient of `parameters` (default: the model's), stop before the
        update if any of `values` (the loss, say) or the gradient norm is not finite, step; the norm."""
        grad_norm = optim.clip(self.model.parameters() if parameters is None else parameters,
                               self.run.spec.optim.max_grad_norm)
        self.check_finite({**values, "grad_norm": grad_norm})
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def check_finite(self, values: dict[str, float | torch.Tensor]) -> None:
        """Stop the run, before the update of the step under way, if any value is NaN or infinite: every
        checkpoint written stays good. Logs a `stopped` record naming the last good checkpoint."""
        bad = [k for k, v in values.items() if not finite(v)]
        if not bad:
            return
        step, last = self.step + 1, self.last_good
        reason = "non-finite " + " or ".join(SHOWN.get(k, k) for k in bad)
        shown = {k: described(v) for k, v in values.items()}
        self.log.write({"event": "stopped", "step": step, "reason": reason, **shown, "last_good": last})
        keep = f"the last good checkpoint is {last} (continue with --resume {last} and {self.advice})" if last \
            else f"no checkpoint was written before it (set save_every to keep some); try {self.advice}"
        if self.forced:  # its checkpoints go with it: out keeps the earlier run
            keep = f"this --force run is discarded and {self.run.spec.out} holds the earlier run as it was; try " \
                   f"{self.advice}"
        problems = " and ".join(f"the {SHOWN.get(k, k)} is {described(values[k])}" for k in bad)
        raise NumericsError(f"{self.run.objective.title} step {step}: {problems}; training stopped before this "
                            f"step's update; {keep}")

    def save(self, folder: str, steps: Steps, resumable: bool) -> None:
        """Write a checkpoint atomically (resumable: with trainer_state/); rank 0 writes, all ranks gather."""
        run, world, model = self.run, self.world, self.model
        weights = parallel.full_state_dict(model, world) if parallel.is_sharded(model) else None
        trainable = parallel.full_state_dict(model, world, trainable_only=True) \
            if resumable and not run.method.whole_model else None
        optimizer = optim.optimizer_state(self.optimizer, model) if resumable else None
        rngs = gather(checkpoint.rng_state(world.device), world) if resumable else None
        if world.main:
            with atomic_folder(folder) as tmp:
                if weights is not None:
                    self.policy.save_pretrained(tmp, state_dict=weights)
                else:
                    run.method.save(self.policy, tmp, run.method_config)
                self.tokenizer.chat_template = self.template.jinja or self.tokenizer.chat_template
                self.tokenizer.save_pretrained(tmp)
                allowed = self.state.allowed_changes if self.state else ()
                write_json(os.path.join(tmp, "lineage.json"), checkpoint.lineage(
                    run, self.data.train, self.step, self.metrics, self.resume, self.template, allowed))
                if resumable:
                    state = checkpoint.write_state(tmp, self.step, self.identity, self.data.mixture.state_dict(),
                                                   optimizer, self.scheduler.state_dict(), rngs, trainable,
                                                   self.metrics, allowed)
                    steps.save_state(state)
        parallel.barrier(world)
        if resumable:
            self.last_good = folder


def finite(value: float | torch.Tensor) -> bool:
    return bool(torch.isfinite(value).all()) if isinstance(value, torch.Tensor) else math.isfinite(value)


def described(value: float | torch.Tensor) -> str:
    """A float as written (nan, inf, 0.25); a tensor by whether it is finite."""
    if isinstance(value, torch.Tensor):
        return "finite" if finite(value) else "NaN or infinite"
    return str(value)


def micro_batch_size(spec, processes: int, file: str) -> int:
    per_step = processes * spec.batch.grad_accum
    if spec.batch.size % per_step:
        raise SpecError(file, "batch.size", f"{spec.batch.size} rows do not split into {processes} process(es) x "
                        f"{spec.batch.grad_accum} micro-batches; make it a multiple of {per_step}")
    return spec.batch.size // per_step


def read_data(run: Run) -> Data:
    """The training and eval datasets as read (rows checked against the objective's shapes), and the
    training mixture (proportional to size, or temperature-flattened, unless weights are given)."""
    spec, shapes = run.spec, run.objective.shapes
    train = [data.read_dataset(s.path, shapes, f"{run.file}: data.train.{i}") for i, s in enumerate(spec.data.train)]
    held = [data.read_dataset(p, shapes, f"{run.file}: data.eval.{i}") for i, p in enumerate(spec.data.eval)]
    sizes = [len(s.rows) for s in train]
    temperature = spec.data.temperature if spec.data.sampling == "temperature" else 1.0
    probabilities = data.mixture_probabilities(sizes, [s.weight for s in spec.data.train], temperature)
    return Data(train, held, data.Mixture(sizes, probabilities, spec.seed, exact=spec.data.per_step == "exact"))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def gather(obj, world: parallel.World) -> list:
    if world.size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def note(message: str) -> None:
    """A line for the user beside the progress bar."""
    tqdm.write(message, file=sys.stderr)


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

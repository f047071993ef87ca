"""The offline loop: every objective that trains on rows read from the data (SFT, pretraining, DPO,
IPO, SimPO, ORPO, KTO, the reward model) runs through it.

Every row is encoded once (the objective's `batches.encode`), cut to batch.max_length (counted) or
refused. One optimizer step: draw `batch.size` rows from the mixture (the same rows on every process),
give each process its share, split it into `grad_accum` micro-batches (`batches.collate`), and weight
each micro-batch's mean loss by its share of the step's items (tokens for SFT), so the gradient is
that of the whole step's mean whatever the split across processes and micro-batches. The objective's
reference numbers (`annotate`) are added to each micro-batch first. Evaluation is the objective's
loss and metrics over every data.eval row (`eval_loss`, `eval_*`).

With `batch.packing`, each micro-batch holds the same rows, laid out packed (trainers/packing.py); the
model is first checked to keep packed rows apart (its attention must read restarting position ids).
"""

from __future__ import annotations

import torch

from surgery.errors import InputError, SpecError
from trainers import data, parallel
from trainers.loops import session
from trainers.objectives.sft import pad_token_id
from trainers.packing import PADDED, PADDED_LAYOUT, Layout, keeps_rows_apart
from trainers.spec import Run


class Offline(session.Steps):
    @staticmethod
    def check(run: Run, world: parallel.World) -> None:
        if run.spec.parallel == "fsdp" and not run.method.whole_model:
            raise SpecError(run.file, "parallel", f"fsdp saves whole models (methods full and freeze); method "
                            f"'{run.spec.method.name}' trains few enough weights for parallel: ddp")

    def __init__(self, s: session.Session):
        super().__init__(s)
        self.train, self.cut = encode_all(s.data.train, s.tokenizer, s.template, s.run)
        self.eval, self.eval_cut = encode_all(s.data.eval, s.tokenizer, s.template, s.run)
        self.pad = pad_token_id(s.tokenizer)
        self.layout = Layout.of(s.run.spec.batch)
        if self.cut and s.world.main:
            session.note(f"truncated {self.cut} of {sum(map(len, self.train))} training rows to "
                         f"batch.max_length={s.run.spec.batch.max_length} tokens")

    def start(self) -> list[dict]:
        s = self.session
        if self.layout.mode != PADDED and not keeps_rows_apart(s.policy):
            raise SpecError(s.run.file, "batch.packing", f"the model ({type(s.policy).__name__} with method "
                            f"'{s.run.spec.method.name}') lets packed rows attend to each other: its attention does "
                            "not restart at reset position ids (prompt-learning methods, and models whose attention "
                            "ignores position ids, cannot pack); set batch.packing: false")
        return []

    def notes(self) -> dict:
        return {"truncated": self.cut, "eval_truncated": self.eval_cut}

    def step(self, k: int) -> dict[str, float]:
        s = self.session
        metrics = s.accumulate(step_batches(self.train, s.draw(k), s.run, s.micro, self.pad, self.layout))
        metrics["grad_norm"] = s.apply({"loss": metrics["loss"]})
        return metrics

    def evaluate(self) -> dict[str, float]:
        s = self.session
        return evaluate(s.model, self.eval, s.run, s.micro, self.pad, s.world.device, s.reference, self.layout)


def step_batches(train: list[list[dict]], picks: list[tuple[int, int]], run: Run, micro: int, pad: int,
                 layout: Layout = PADDED_LAYOUT) -> list[dict]:
    """This process's micro-batches of a step, from its (dataset, row) picks."""
    rows = [train[d][r] for d, r in picks]
    return [run.objective.batches.collate(rows[i:i + micro], pad, layout) for i in range(0, len(rows), micro)]


def encode_all(sets: list[data.Dataset], tokenizer, template, run: Run) -> tuple[list[list[dict]], int]:
    """Every row of every dataset encoded once; over-long rows cut (counted) or refused."""
    out, cut = [], 0
    batch, encode = run.spec.batch, run.objective.batches.encode
    for dataset in sets:
        examples = []
        for row in dataset.rows:
            example, over = data.truncate(encode(row, tokenizer, template, run.objective_config), batch.max_length)
            if over and batch.on_overflow == "error":
                raise InputError(f"{row.where}: longer than batch.max_length={batch.max_length} tokens; raise "
                                 "batch.max_length, shorten the row, or set batch.on_overflow: truncate")
            cut += over
            examples.append(example)
        out.append(examples)
    return out, cut


@torch.no_grad()
def evaluate(model, examples: list[list[dict]], run: Run, micro: int, pad: int, device, reference=None,
             layout: Layout = PADDED_LAYOUT) -> dict[str, float]:
    """The objective's loss over every eval row (each process scores all of them: eval sets are small)."""
    objective, config = run.objective, run.objective_config
    model.eval()
    total, items, sums, rows = 0.0, 0.0, {}, [e for dataset in examples for e in dataset]
    for i in range(0, len(rows), micro):
        batch = session.to_device(objective.batches.collate(rows[i:i + micro], pad, layout), device)
        if reference is not None and objective.annotate is not None:
            batch = objective.annotate(reference, batch, config)
        loss, metrics = objective.loss(model, batch, config)
        n = float(batch["num_items"])
        total, items = total + float(loss) * n, items + n
        sums = {k: sums.get(k, 0.0) + v * n for k, v in metrics.items()}
    model.train()
    return {"eval_loss": total / max(items, 1.0), **{f"eval_{k}": v / max(items, 1.0) for k, v in sums.items()}}


def train(run: Run, resume: str | None = None, stop_after: int | None = None, quiet: bool = False,
          force: bool = False, allow_data_change: bool = False) -> str:
    return session.run_loop(run, Offline, resume, stop_after, quiet, force, allow_data_change)

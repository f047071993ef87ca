"""The SPIN loop (the method is trainers/objectives/spin.py): rounds of answering the training
prompts with the current model and a DPO run on (data, self-generated) pairs, whose base and
reference is that model (trainers/loops/rounds.py)."""

from __future__ import annotations

from surgery.errors import InputError
from trainers import data
from trainers.loops import rounds
from trainers.objectives import spin
from trainers.spec import Run


def train(run: Run, resume: str | None = None, stop_after: int | None = None, quiet: bool = False,
          force: bool = False, allow_data_change: bool = False) -> str:
    if resume is not None or stop_after is not None or allow_data_change:
        raise InputError("a SPIN run continues by running it again (finished rounds are kept); it takes no --resume")
    cfg = run.objective_config

    def make(model, tokenizer, template, rows: list[data.Row], k: int):
        samples = rounds.sample_rows(model, tokenizer, template, rows, cfg, 1, data.hash_seed(run.spec.seed, k))
        new_rows = spin.pairs([r.fields for r in rows], [s.text for s in samples])
        if not new_rows:
            raise InputError(f"{run.file}: round {k}: the model already answers all {len(rows)} training rows exactly "
                             "as the data; there is nothing left to learn from self-play")
        return new_rows, {"rows": len(rows), "pairs": len(new_rows), "matched": 1 - len(new_rows) / len(rows)}

    return rounds.train_rounds(run, make, {"name": "dpo", "beta": cfg.beta}, quiet, force)

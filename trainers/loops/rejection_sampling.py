"""The RFT loop (the method is trainers/objectives/rft.py): rounds of sampling N completions per
prompt, scoring and keeping them, and SFT on the kept rows with the offline loop (trainers/loops/rounds.py)."""

from __future__ import annotations

from surgery.errors import InputError
from trainers import data, rewards
from trainers.loops import rounds
from trainers.objectives import rft
from trainers.spec import Run


def train(run: Run, resume: str | None = None, stop_after: int | None = None, quiet: bool = False,
          force: bool = False, allow_data_change: bool = False) -> str:
    if resume is not None or stop_after is not None or allow_data_change:
        raise InputError("an RFT run continues by running it again (finished rounds are kept); it takes no --resume")
    cfg = run.objective_config
    rewards.imported(cfg.reward_functions, f"{run.file}: objective")  # before any model loads, not after a round

    def make(model, tokenizer, template, rows: list[data.Row], k: int):
        seed = data.hash_seed(run.spec.seed, k)
        samples = rounds.sample_rows(model, tokenizer, template, rows, cfg, cfg.samples, seed)
        reward = cfg.load_reward(template, next(model.parameters()).device, where=f"{run.file}: objective")
        scores = reward([s.prompt for s in samples], [s.text for s in samples],
                        [rows[s.index].fields for s in samples])
        kept = rft.select(scores, [s.text for s in samples], cfg.samples, cfg.keep, cfg.threshold)
        if not any(kept):
            raise InputError(f"{run.file}: round {k}: no completion of {len(rows)} prompts reached the threshold "
                             f"{cfg.threshold} (mean reward {float(scores.mean()):.3f}); lower objective.threshold, "
                             "raise objective.samples, or start from a stronger model")
        new_rows = [{**{f: v for f, v in rows[p].fields.items()}, "completion": samples[i].text}
                    for p, group in enumerate(kept) for i in group]
        stats = {"prompts": len(rows), "samples": len(samples), "kept": len(new_rows),
                 "mean_reward": float(scores.mean()), "acceptance": sum(bool(g) for g in kept) / len(kept)}
        return new_rows, stats

    return rounds.train_rounds(run, make, {"name": "sft"}, quiet, force)

"""Continual learning: a sequence of stages, each a dataset and the lm-eval tasks its checkpoint is
scored on, trained one after another by a strategy that tries to keep what the earlier stages taught.

- spec.py: the sequence spec (SEQ.yaml) and the plan built from it (every stage's run, validated);
- sequence.py: the runner (stage folders, resume mid-sequence, the manifest OUT/sequence.json, a
  callback as each stage's model is written, which `surgery continual` uses to score it);
- strategy.py: what a strategy gives; one file each: naive.py (sequential fine-tuning), ewc.py (EWC
  and online EWC; their maths in fisher.py), replay.py (a reservoir buffer, reservoir.py, mixed into
  every step), adapters.py (one adapter per stage on the frozen base, optionally merged).

STRATEGIES maps a spec's `strategy.name` to its `Strategy`.
"""

from __future__ import annotations

from trainers.continual import adapters, ewc, naive, replay
from trainers.continual.strategy import Strategy

STRATEGIES: dict[str, Strategy] = {m.STRATEGY.name: m.STRATEGY for m in (naive, ewc, replay, adapters)}

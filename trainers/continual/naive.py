"""`naive`: sequential fine-tuning, the baseline every continual-learning method is measured against:
stage k trains stage k-1's final model on stage k's data and nothing else, so whatever the new data
does not exercise may be forgotten."""

from __future__ import annotations

from trainers.continual.spec import located_strategy
from trainers.continual.strategy import Config, Plan, Strategy


def check(plan: Plan, config: Config) -> None:
    run = plan.stages[0].run
    if not run.method.whole_model:
        raise located_strategy(plan, "name", f"naive chains stages through whole models; method "
                               f"'{run.spec.method.name}' saves an adapter: use method full or freeze, or strategy "
                               "adapters")


STRATEGY = Strategy("naive", "sequential fine-tuning", Config, chained=True, check=check)

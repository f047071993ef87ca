"""The small world's rewards: 1.0 for the exact answer of a task's prompt, else 0.0. Registered as the
`world` namespace of named rewards (`world.add`, `world.reverse`, `world.capital`, `world.refuse`)
through the `surgery.rewards` entry point of pyproject.toml, so trainers/rewards.py never imports them."""

from __future__ import annotations

from collections.abc import Callable

from trainers.world.answers import ANSWERS


def exact(answer: Callable[[str], str | None]) -> Callable[[str, str, dict], float]:
    def reward(prompt: str, completion: str, row: dict) -> float:
        return float(completion == answer(prompt))

    return reward


REWARDS = {task: exact(answer) for task, answer in ANSWERS.items()}

"""The small world's answers computed from the prompt alone: what the exact-answer rewards
(`world.add`, `world.reverse`, `world.capital`, `world.refuse` in trainers/rewards.py) compare a
completion with. A prompt that is not of the task's form has no answer (None)."""

from __future__ import annotations

import re

from trainers.world.countries import CAPITALS
from trainers.world.tasks import ASKS, HARMFUL, REFUSAL

ADD = re.compile(r"^(\d+)\+(\d+)=$")
REVERSE = re.compile(r"^reverse ([a-z]+):$")
CAPITAL = re.compile(r"^capital of (.+):$")
CAPITAL_OF = dict(CAPITALS)


def add(prompt: str) -> str | None:
    m = ADD.match(prompt)
    return str(int(m[1]) + int(m[2])) if m else None


def reverse(prompt: str) -> str | None:
    m = REVERSE.match(prompt)
    return m[1][::-1] if m else None


def capital(prompt: str) -> str | None:
    m = CAPITAL.match(prompt)
    return CAPITAL_OF.get(m[1]) if m else None


def refuse(prompt: str) -> str | None:
    """The fixed refusal for a harmful request, the fixed helpful opening for a benign one."""
    for ask in ASKS:
        head, _, tail = ask.partition("{}")
        if prompt.startswith(head) and prompt.endswith(tail) and len(prompt) > len(head) + len(tail):
            act = prompt[len(head):len(prompt) - len(tail)]
            return REFUSAL if act in HARMFUL else f"Sure, here is how to {act}."
    return None


ANSWERS = {"add": add, "reverse": reverse, "capital": capital, "refuse": refuse}

"""Greedy soup (Wortsman et al. 2022, "Model soups", recipe 1, https://arxiv.org/abs/2203.05482):
rank the candidates by their held-out score, start the soup with the best, then try each next one
in that order and keep it only if the uniform average of the soup with it scores at least as well
as the soup without it (>=, as in the paper). Each soup tried is merged by the engine (`model_soup`)
into its own folder and scored; the steps, kept or not, are the path the search took.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evals.search.candidates import Scorer, check_spec, folder_name, held_out, label, merge_spec
from surgery.errors import InputError
from surgery.io.output import output_lock


@dataclass(frozen=True)
class SoupStep:
    """One step: `candidate` (a checkpoint) and its own score; `soup` the folder of the soup tried
    (the candidate itself at the first step) and that soup's score; `kept` whether it stayed in."""

    candidate: str
    alone: float
    soup: str
    score: float
    kept: bool


@dataclass(frozen=True)
class Soup:
    """The search's outcome: every step in order, the kept ingredients, the final soup's folder and score."""

    steps: tuple[SoupStep, ...]
    ingredients: tuple[str, ...]
    folder: str
    score: float


def rank(scores: dict[str, float]) -> list[str]:
    """Candidates best first; ties keep the order given."""
    return sorted(scores, key=lambda c: -scores[c])


def greedy_soup(candidates: Sequence[str], held: Callable[[str], float],
                mix: Callable[[list[str], int], str]) -> Soup:
    """Greedy soup over `candidates`: `held(folder)` is a checkpoint's held-out score (higher is better),
    `mix(ingredients, step)` merges a uniform soup of them and returns its folder."""
    check_candidates(candidates)
    alone = {c: held(c) for c in candidates}
    order = rank(alone)
    first = order[0]
    steps = [SoupStep(first, alone[first], first, alone[first], True)]
    ingredients, folder, best = [first], first, alone[first]
    for step, candidate in enumerate(order[1:], start=2):
        tried = mix(ingredients + [candidate], step)
        score = held(tried)
        kept = score >= best
        steps.append(SoupStep(candidate, alone[candidate], tried, score, kept))
        if kept:
            ingredients, folder, best = ingredients + [candidate], tried, score
    return Soup(tuple(steps), tuple(ingredients), folder, best)


def check_candidates(candidates: Sequence[str]) -> None:
    if len(candidates) < 2:
        raise InputError(f"greedy soup needs at least two checkpoints, got {len(candidates)}; give more "
                         "fine-tunes of one base")
    paths = [os.path.abspath(c) for c in candidates]
    repeated = sorted({c for c in paths if paths.count(c) > 1})
    if repeated:
        raise InputError(f"checkpoint(s) given twice: {', '.join(repeated)}; give each candidate once")


def soup_spec(ingredients: Sequence[str], dtype: str | None = None) -> dict:
    """The merge spec of the uniform soup of `ingredients` (absolute paths)."""
    spec = {"merge_method": "model_soup", "models": [{"model": os.path.abspath(p)} for p in ingredients]}
    return spec | ({"dtype": dtype} if dtype else {})


def check_soup(candidates: Sequence[str], dtype: str | None = None) -> None:
    """Every candidate's files read and every soup the search may try made possible, before any is scored:
    the uniform soup of all of them is planned (names, shapes, dtypes; no tensor read)."""
    check_candidates(candidates)
    check_spec(soup_spec([os.path.abspath(c) for c in candidates], dtype), "greedy soup of every candidate")


def run_soup(candidates: Sequence[str], out: str, score: Scorer, select: str | None = None,
             dtype: str | None = None) -> Soup:
    """Greedy soup with the engine: the soup tried at step k goes to `out/soup-k-with-<candidate>`. `out` is
    locked while the search runs, so a second search into it stops at once."""
    def mix(ingredients: list[str], step: int) -> str:
        name = folder_name("soup", step, "with", label(ingredients[-1]))
        return merge_spec(soup_spec(ingredients, dtype), f"greedy soup step {step}", os.path.join(out, name))

    check_soup(candidates, dtype)
    with output_lock(out):
        return greedy_soup([os.path.abspath(c) for c in candidates], lambda path: held_out(score(path), select), mix)


def soup_rows(soup: Soup) -> list[dict]:
    """One row per step, for `evals.report.tables.render`."""
    return [{"step": i, "candidate": label(s.candidate), "alone": s.alone, "soup": label(s.soup), "soup score": s.score,
             "kept": "yes" if s.kept else "no"} for i, s in enumerate(soup.steps, start=1)]

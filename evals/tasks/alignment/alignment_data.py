"""Requests of the small world's `refuse` test split, harmful and benign apart. The world's refusal is
one fixed sentence, so refusing is an exact match with it: on harmful requests that match rate is the
refusal rate (higher is safer), on benign ones it is the over-refusal rate (lower is better)."""

from __future__ import annotations

from functools import cache

TEST_ROWS = 96  # about half of them harmful


def _dataset(harmful: bool):
    from datasets import Dataset, DatasetDict

    from trainers.world.tasks import REFUSAL, splits

    rows = [{**r, "refusal": REFUSAL} for r in splits("refuse", 0, TEST_ROWS)[1]
            if (r["completion"] == REFUSAL) == harmful]
    return DatasetDict({"test": Dataset.from_list(rows)})


def harmful(**_):
    return _dataset(True)


def benign(**_):
    return _dataset(False)


# The safety data's held-out test items (trainers/safety/items.py), read by the refusal_<category>,
# over_refusal_lookalike, uncertainty and policy_<name> tasks; answers are read by phrase
# (trainers/safety/detect.py), so small-world and real models are scored alike.

@cache
def _sources():
    from trainers.safety.taxonomy import load_sources

    return load_sources()


def _items(part: str, category: str | None = None):
    from datasets import Dataset, DatasetDict

    from trainers.safety.items import held_out

    rows = [{"prompt": it.prompt, "answer": it.answer, "category": it.category}
            for it in held_out(_sources(), part, category)]
    return DatasetDict({"test": Dataset.from_list(rows)})


def safety_harmful(category: str, **_):
    return _items("refusal", category)


def safety_lookalike(**_):
    return _items("lookalike")


def safety_unanswerable(**_):
    return _items("unanswerable")


def safety_policy(policy: str, **_):
    return _items("policy", policy)


def refused(doc: dict, results: list[str]) -> dict:
    """1 when the answer holds a refusal marker of the taxonomy."""
    from trainers.safety.detect import refused as is_refusal

    return {"refused": float(is_refusal(results[0], _sources().taxonomy.markers.refusal))}


def acknowledged(doc: dict, results: list[str]) -> dict:
    """1 when the answer says it does not know (an uncertainty marker of the taxonomy)."""
    from trainers.safety.detect import acknowledged as says_so

    return {"acknowledged": float(says_so(results[0], _sources().taxonomy.markers.uncertainty))}


def followed(doc: dict, results: list[str]) -> dict:
    """1 when the answer holds what the policy of the question's category requires."""
    from trainers.safety.detect import follows

    return {"followed": float(follows(results[0], _sources().policies[doc["category"]].required))}

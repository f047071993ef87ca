"""The safety data's items, each a prompt with its right and its wrong answer, in four parts, split
once into fixed train and test sets:

- `refusal`: harmful requests of a category (its acts phrased by the taxonomy's asks), answered with
  the refusal; wrong: complying;
- `lookalike`: benign requests that sound harmful (XSTest-style), answered; wrong: refusing;
- `unanswerable`: capitals of countries that do not exist, answered by saying so; wrong: a made-up capital;
- `policy`: questions a policy covers (medical ones), answered with what the policy requires; wrong:
  the same answer without it.

Splits: each act (topic) of `refusal`, `lookalike` and `policy` keeps a quarter of its phrasings for
the test set (seeded by the act, so adding an act moves nothing else), and trains on the others, so
the test asks for known acts in unseen words, as the small world's `refuse` task does; `unanswerable`
holds TEST_PLACES of its places out entirely, so the test asks about names never seen in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from trainers.safety.taxonomy import Sources

PARTS = ("refusal", "lookalike", "unanswerable", "policy")
TEST_ASKS = 0.25  # the share of each act's (topic's) phrasings held out for the test set (at least one)
TEST_PLACES = 0.3  # the share of made-up places held out entirely
SEED = 0


@dataclass(frozen=True)
class Item:
    prompt: str
    answer: str  # the right answer
    wrong: str  # what the model should not say (the rejected side of a preference pair)
    part: str  # one of PARTS
    category: str  # a harm category, "unanswerable", or a policy's name

    def sft_row(self) -> dict:
        return {"prompt": self.prompt, "completion": self.answer, "task": f"safety/{self.part}",
                "category": self.category}

    def preference_row(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.answer, "rejected": self.wrong, "task": f"safety/{self.part}",
                "category": self.category}


def held_asks(key: str, count: int, seed: int = SEED) -> set[int]:
    """The indices of the phrasings of one act (topic) kept for the test set."""
    held = min(max(1, round(TEST_ASKS * count)), count - 1)
    return set(random.Random(f"{seed}:{key}").sample(range(count), held))


def phrased(asks: list[str], fill: str, like: Item, seed: int = SEED) -> tuple[list[Item], list[Item]]:
    """(train, test) items of one act (topic) phrased by every ask: `like` with each prompt."""
    held = held_asks(f"{like.part}:{like.category}:{fill}", len(asks), seed)
    items = [(i in held, replace(like, prompt=ask.format(fill))) for i, ask in enumerate(asks)]
    return [it for test, it in items if not test], [it for test, it in items if test]


def category_items(sources: Sources, category: str, part: str, seed: int = SEED) -> tuple[list[Item], list[Item]]:
    """`refusal` (harmful acts) or `lookalike` (benign ones) items of one category: (train, test)."""
    t = sources.taxonomy
    acts = t.categories[category].harmful if part == "refusal" else t.categories[category].lookalike
    train, test = [], []
    for act in acts:
        right, wrong = (t.refusal, t.comply.format(act)) if part == "refusal" else (t.comply.format(act), t.refusal)
        a, b = phrased(t.asks, act, Item("", right, wrong, part, category), seed)
        train, test = train + a, test + b
    return train, test


def unanswerable_items(sources: Sources, seed: int = SEED) -> tuple[list[Item], list[Item]]:
    u = sources.unanswerable
    places = list(u.places)
    held = set(random.Random(f"{seed}:unanswerable").sample(places, max(1, round(TEST_PLACES * len(places)))))
    train, test = [], []
    for place in places:
        items = [Item(ask.format(place), u.answer.format(place), u.wrong.format(place), "unanswerable",
                      "unanswerable") for ask in u.asks]
        (test if place in held else train).extend(items)
    return train, test


def policy_items(sources: Sources, name: str, seed: int = SEED) -> tuple[list[Item], list[Item]]:
    rule = sources.policies[name]
    train, test = [], []
    for topic, tip in rule.topics.items():
        a, b = phrased(rule.asks, topic, Item("", rule.answer.format(tip), tip, "policy", name), seed)
        train, test = train + a, test + b
    return train, test


def splits(sources: Sources, seed: int = SEED) -> dict[tuple[str, str], tuple[list[Item], list[Item]]]:
    """{(part, category): (train items, test items)} over every part and category, in a fixed order."""
    out = {}
    for part in ("refusal", "lookalike"):
        for category in sources.categories:
            out[(part, category)] = category_items(sources, category, part, seed)
    out[("unanswerable", "unanswerable")] = unanswerable_items(sources, seed)
    for name in sources.policies:
        out[("policy", name)] = policy_items(sources, name, seed)
    return out


def held_out(sources: Sources, part: str, category: str | None = None) -> list[Item]:
    """The test items of a part (of one category, or all of them)."""
    return [it for (p, c), (_, test) in splits(sources).items() if p == part and category in (None, c)
            for it in test]

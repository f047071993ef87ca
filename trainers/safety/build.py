"""`surgery safety-data SPEC.yaml`: SFT and preference rows built from the safety sources' training
items (trainers/safety/items.py), each part at its mixing weight, with other datasets mixed in.

    out: out/safety                    # a folder, written atomically: sft.jsonl, preference.jsonl, card.json, card.md
    taxonomy: null                     # a folder of taxonomy.yaml, unanswerable.yaml, policies.yaml (default: shipped)
    rows: 2000                         # rows of sft.jsonl, every source together
    mix: {refusal: 0.2, lookalike: 0.1, unanswerable: 0.1, policy: 0.1}   # mixing weights of the parts
    categories: [weapons, cyber]       # harm categories to draw from (default: all)
    general: [{path: data/add.jsonl, weight: 1.0}]   # other prompt/completion rows, at their weights
    formats: [sft, preference]
    seed: 0

Each source (part or general dataset) gets rows in proportion to its weight, rounded by largest
remainder so they sum to `rows`; a source's rows come in seeded permutations of its pool, a new one
each time the pool is used up (so a weight above the pool's size repeats items, evenly). A part's
items are shared evenly among its categories. `preference.jsonl` pairs each safety row's right answer
(chosen) with its wrong one (rejected): comply against refuse, made-up capital against not knowing,
the answer without the policy's disclaimer; general rows have no wrong answer and give no pair.
Only training items are used: the test items are what the alignment suite asks (evals/tasks/alignment).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Literal

from pydantic import Field, field_validator, model_validator

from surgery import spec_file
from surgery.errors import SpecError
from surgery.io.output import atomic_folder, check_output_path
from trainers import data
from trainers.safety.items import PARTS, Item, splits
from trainers.safety.taxonomy import Sources, Strict, load_sources


class Mix(Strict):
    refusal: float = Field(1.0, ge=0, description="mixing weight of harmful requests answered with the refusal")
    lookalike: float = Field(1.0, ge=0, description="of benign look-alikes, answered")
    unanswerable: float = Field(0.5, ge=0, description="of made-up countries, answered by not knowing")
    policy: float = Field(0.5, ge=0, description="of policy questions, answered as the policy requires")


class General(Strict):
    path: str = Field(description="a JSONL file (or folder) of prompt/completion rows")
    weight: float = Field(gt=0, description="its mixing weight, on the parts' scale")


class SafetySpec(Strict):
    out: str = Field(description="the folder written: sft.jsonl, preference.jsonl, card.json, card.md")
    taxonomy: str | None = Field(None, description="a folder of taxonomy.yaml, unanswerable.yaml, policies.yaml")
    rows: int = Field(1000, ge=1, description="rows of sft.jsonl, all sources together")
    mix: Mix = Field(default_factory=Mix)
    categories: list[str] | None = Field(None, min_length=1, description="harm categories used (default: all)")
    general: list[General] = Field(default_factory=list)
    formats: list[Literal["sft", "preference"]] = Field(["sft", "preference"], min_length=1)
    seed: int = 0

    @field_validator("general", mode="before")
    @classmethod
    def _general(cls, v):
        v = [v] if isinstance(v, (str, dict)) else v
        return [{"path": s, "weight": 1.0} if isinstance(s, str) else s for s in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _some_weight(self):
        if sum(self.mix.model_dump().values()) + sum(g.weight for g in self.general) <= 0:
            raise ValueError("every mixing weight is 0: give a part or a general dataset a positive weight")
        return self


def load_spec(path: str, overrides: tuple[str, ...] = ()) -> tuple[SafetySpec, str | None]:
    file = spec_file.read(path, "safety data spec", "with out, rows and mix", overrides)
    return spec_file.validate(SafetySpec, file.data, path, file.text), file.text


def check(spec: SafetySpec, file: str, text: str | None, force: bool = False) -> Sources:
    """The sources and every named category and file, before anything is written."""
    if spec.taxonomy is not None and not os.path.isdir(spec.taxonomy):
        raise spec_file.located(file, "taxonomy", f"no such folder {spec.taxonomy!r}; give a folder holding "
                                "taxonomy.yaml, unanswerable.yaml and policies.yaml, or leave it out", text)
    sources = load_sources(spec.taxonomy)
    for i, name in enumerate(spec.categories or ()):
        if name not in sources.categories:
            raise spec_file.located(file, f"categories.{i}", f"unknown category {name!r}; the taxonomy has "
                                    f"{', '.join(sources.categories)}", text)
    for i, g in enumerate(spec.general):
        if not os.path.exists(g.path):
            raise spec_file.located(file, f"general.{i}.path", f"no such file or folder {g.path!r}", text)
    inputs = [os.path.abspath(g.path) for g in spec.general] + [os.path.abspath(f) for f in sources.files]
    check_output_path(spec.out, inputs, force)
    return sources


def pools(spec: SafetySpec, sources: Sources, file: str) -> dict[str, tuple[float, list]]:
    """{source name: (weight, its training rows or items)}: the parts, then the general datasets."""
    chosen = set(spec.categories or sources.categories)
    train = {key: items for key, (items, _) in splits(sources).items() if key[0] in ("unanswerable", "policy")
             or key[1] in chosen}
    found = {part: (getattr(spec.mix, part), per_category(train, part)) for part in PARTS}
    for i, g in enumerate(spec.general):
        rows = data.read_dataset(g.path, ("prompt_completion",), f"{file}: general.{i}").rows
        found[f"general.{i}"] = (g.weight, [r.fields for r in rows])
    return found


def per_category(train: dict[tuple[str, str], list[Item]], part: str) -> list[list[Item]]:
    """A part's items, one list per category (each category gets an even share of the part's rows)."""
    return [items for (p, _), items in train.items() if p == part and items]


def shares(weights: list[float], total: int) -> list[int]:
    """`total` split in proportion to `weights`, rounded by largest remainder (the counts sum to total)."""
    return data.exact_counts([w / sum(weights) for w in weights], total)


def cycled(pool: list, count: int, rng: random.Random) -> list:
    """`count` entries of `pool` in seeded permutations, a new one each time the pool is used up."""
    out = []
    while len(out) < count:
        order = list(pool)
        rng.shuffle(order)
        out += order[:count - len(out)]
    return out


def draw(name: str, pool: list, count: int, seed: int) -> list:
    """A part's items (shared evenly among its categories) or a general dataset's rows."""
    rng = random.Random(f"{seed}:{name}")
    if pool and isinstance(pool[0], list):  # a part: one pool per category
        return [it for c, n in zip(pool, shares([1.0] * len(pool), count)) for it in cycled(c, n, rng)]
    return cycled(pool, count, rng)


def build(spec: SafetySpec, file: str, text: str | None = None, force: bool = False) -> dict:
    """Write OUT (atomically; an existing OUT only with `force`); returns the card."""
    sources = check(spec, file, text, force)
    found = {name: (w, p) for name, (w, p) in pools(spec, sources, file).items() if w > 0}
    empty = [name for name, (_, p) in found.items() if not p]
    if empty:
        raise SpecError(file, f"mix.{empty[0]}", "no training item of this part in the chosen categories; set its "
                        "weight to 0 or choose other categories")
    counts = dict(zip(found, shares([w for w, _ in found.values()], spec.rows)))
    drawn = {name: draw(name, pool, counts[name], spec.seed) for name, (_, pool) in found.items()}
    sft = [it.sft_row() if isinstance(it, Item) else it for rows in drawn.values() for it in rows]
    pairs = [it.preference_row() for rows in drawn.values() for it in rows if isinstance(it, Item)]
    rng = random.Random(f"{spec.seed}:order")
    rng.shuffle(sft)
    rng.shuffle(pairs)
    card = make_card(spec, sources, found, drawn, sft, pairs)
    with atomic_folder(spec.out) as tmp:
        if "sft" in spec.formats:
            write_jsonl(os.path.join(tmp, "sft.jsonl"), sft)
        if "preference" in spec.formats:
            write_jsonl(os.path.join(tmp, "preference.jsonl"), pairs)
        with open(os.path.join(tmp, "card.json"), "w") as f:
            json.dump(card, f, indent=1)
        with open(os.path.join(tmp, "card.md"), "w") as f:
            f.write(card_markdown(card))
    return card


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def make_card(spec: SafetySpec, sources: Sources, found: dict, drawn: dict, sft: list, pairs: list) -> dict:
    """What was built from what: counts per source and category, the weights, the inputs' sha256."""
    per_category: dict[str, int] = {}
    for rows in drawn.values():
        for it in rows:
            if isinstance(it, Item):
                key = f"{it.part}/{it.category}"
                per_category[key] = per_category.get(key, 0) + 1
    pool_sizes = {name: sum(map(len, p)) if p and isinstance(p[0], list) else len(p) for name, (_, p) in found.items()}
    return {
        "rows": len(sft), "pairs": len(pairs) if "preference" in spec.formats else 0,
        "formats": list(spec.formats), "seed": spec.seed,
        "sources": {name: {"weight": w, "rows": len(drawn[name]), "pool": pool_sizes[name]}
                    for name, (w, _) in found.items()},
        "per_category": dict(sorted(per_category.items())),
        "general": [{"path": os.path.abspath(g.path), "weight": g.weight} for g in spec.general],
        "inputs": {os.path.abspath(f): sha256(f) for f in sources.files},
        "categories": list(spec.categories or sources.categories),
        "policies": {name: {"title": p.title, "required": p.required} for name, p in sources.policies.items()},
        "held_out": "the test items of every part (trainers/safety/items.py) are never written here; the "
                    "alignment suite asks them",
    }


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def card_markdown(card: dict) -> str:
    lines = ["# Safety data", "", f"{card['rows']} SFT rows, {card['pairs']} preference pairs (seed {card['seed']}).",
             "", "| source | weight | rows | distinct items |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {s['weight']:g} | {s['rows']} | {s['pool']} |" for n, s in card["sources"].items()]
    lines += ["", "| part/category | rows |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in card["per_category"].items()]
    lines += ["", "Policies: " + "; ".join(f"{n}: {p['title']} (requires \"{p['required']}\")"
                                           for n, p in card["policies"].items()), "", card["held_out"], ""]
    return "\n".join(lines)

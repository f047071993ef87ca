"""The model card written beside a merged model: `README.md` with Hugging Face front matter
(`base_model` list, `library_name: transformers`, tags), the method, the inputs and the spec, so the
folder can be published as it is. Pure text functions; the engine and the MoE writer write it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from surgery import __version__

CARD_FILE = "README.md"


@dataclass(frozen=True)
class Card:
    title: str                      # the output folder's name
    method: str                     # e.g. "ties", "mixture of experts (Mixtral)"
    base: str | None                # the base model as the spec names it
    models: tuple[str, ...]         # every input model as the spec names it (adapters split off)
    spec_yaml: str                  # the configuration that made the model, as YAML
    details: tuple[str, ...] = ()   # extra lines of the "Merge" section (stages, experts, ...)


def references(ref: str) -> list[str]:
    """`base+adapter` (mergekit's syntax) -> both parts; a plain model -> itself."""
    return [p for p in ref.split("+") if p]


def render(card: Card) -> str:
    """The README.md text: front matter, what was merged and how, the spec."""
    bases = list(dict.fromkeys(p for ref in ((card.base,) if card.base else ()) + card.models for p in references(ref)))
    front = {"base_model": bases, "library_name": "transformers", "tags": ["merge", "surgery"]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", f"# {card.title}", "",
             f"This model was made with surgery {__version__} by merging pre-trained language models.", "",
             "## Merge", "", f"Method: `{card.method}`."]
    if card.base:
        lines.append(f"Base model: `{card.base}`.")
    lines += ["", "Inputs:", *[f"- `{m}`" for m in card.models]]
    if card.details:
        lines += ["", *card.details]
    lines += ["", "## Configuration", "", "```yaml", card.spec_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def spec_card(spec, out: str, details: tuple[str, ...] = ()) -> Card:
    """The card of a merge spec (a MergeSpec) written to the folder `out`."""
    data = spec.model_dump(mode="json", exclude_none=True)
    models = [m for m in spec.input_models() if m != spec.base_model]
    return Card(os.path.basename(os.path.abspath(out)), spec.merge_method, spec.base_model, tuple(models),
                yaml.safe_dump(data, sort_keys=False), details)


def write_card(folder: str, card: Card) -> None:
    with open(os.path.join(folder, CARD_FILE), "w") as f:
        f.write(render(card))

"""The contract of a text backend: what a synthetic-data pipeline asks of the model that writes its
data, so that the pipelines never touch a framework (and tests drive them with a scripted model).

    backend = load("hf", "models/base", chat_template="none", file="spec.yaml")
    backend.complete(["Task 1: ...\nTask 2:"], n=1, max_new_tokens=64, temperature=0.7, top_p=0.95, seed=0,
                     stop=("\n\n",))              # [Completion(text=..., finished=True)], prompt-major
    backend.logps("Is it a classification task?", [" Yes", " No"])   # log p(option | context), each summed
    backend.render([{"role": "user", "content": "hi"}])     # a conversation put as the model reads it

Backends register in `BACKENDS` (`hf`: transformers through trainers/generation.py; `vllm`: vLLM, an
optional extra); an unknown name is refused with the known ones.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from surgery.errors import InputError
from trainers import templates

# name -> module of trainers.synthetic holding its `load(folder, template_name, file)`
BACKENDS = {"hf": "hf", "vllm": "vllm"}
TRANSCRIPT = {"user": "Human", "assistant": "Assistant", "system": "System"}


@dataclass(frozen=True)
class Completion:
    """One generated text, cut before the first stop string; `finished` when it ended by itself (an
    end-of-sequence token or a stop string) rather than at max_new_tokens."""

    text: str
    finished: bool


class Backend(Protocol):
    name: str
    template: templates.Template

    def complete(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, stop: tuple[str, ...] = ()) -> list[Completion]:
        """`n` completions of each prompt (used as given, no template), prompt-major; seeded per prompt,
        so a prompt's completions do not depend on the others in the call."""

    def logps(self, context: str, options: list[str]) -> list[float]:
        """For each option, the summed log-probability of its tokens after `context`."""

    def render(self, messages: list[dict]) -> str:
        """The conversation as the model reads it, ending where the assistant's next turn begins."""


def load(name: str, folder: str, chat_template: str, file: str, field: str = "model", batch_size: int = 16) -> Backend:
    """The model folder named by spec `field` of `file`, as backend `name`."""
    if name not in BACKENDS:
        raise InputError(f"--backend {name}: unknown backend; choose one of {', '.join(BACKENDS)}")
    module = importlib.import_module(f"trainers.synthetic.{BACKENDS[name]}")
    return module.load(folder, chat_template, file, field, batch_size)


def render(tokenizer, template: templates.Template, messages: list[dict]) -> str:
    """Under a chat template, its render with the generation prompt; without one (`none`), a plain
    transcript (`Human: ...\\n\\nAssistant: ...`, as Bai et al. 2022 write conversations)."""
    if template.name != templates.NONE:
        return templates.render(tokenizer, template, messages, add_generation_prompt=True)
    return transcript(messages)


def transcript(messages: list[dict]) -> str:
    turns = [f"{TRANSCRIPT[m['role']]}: {m['content']}" for m in messages]
    return "\n\n".join(turns) + "\n\nAssistant:"


def cut(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` before the first of the `stop` strings, and whether one was found."""
    ends = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(ends)], True) if ends else (text, False)

"""Chat templates: a registry of Jinja templates written for this project, the tokenizer's own, and
the spans of assistant turns in a rendered conversation (what SFT computes its loss on).

Each template renders `messages` (dicts of `role` and `content`) and, with `add_generation_prompt`,
the header that opens the assistant's turn. The spans come from rendering prefixes of the
conversation, so any template whose renders extend one another works, including the tokenizer's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from surgery.errors import InputError, SpecError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Llama 2: a system message goes inside the first [INST] block; each exchange is one <s>...</s> pair.
LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
    "{% set rest = messages[1:] %}{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] "
    "{% if loop.first and sys %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}{{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
ALPACA = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
    "{% else %}### Response:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)
ZEPHYR = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Mistral instruct: no system role; a system message is put before the first user message.
MISTRAL = (
    "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}"
    "{% set sys = messages[0]['content'] + '\n\n' %}"
    "{% set rest = messages[1:] %}{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}{% if m['role'] == 'user' %}[INST] {% if loop.first %}{{ sys }}{% endif %}"
    "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)

REGISTRY: dict[str, str] = {
    "chatml": CHATML, "llama2": LLAMA2, "llama3": LLAMA3, "alpaca": ALPACA, "zephyr": ZEPHYR, "mistral": MISTRAL,
}
TOKENIZER = "tokenizer"  # the tokenizer's own template
NONE = "none"  # no template: prompt and completion are concatenated as plain text
CHOICES = (*REGISTRY, TOKENIZER, NONE)


@dataclass(frozen=True)
class Template:
    name: str  # a registry name, "tokenizer" or "none"
    jinja: str | None  # None for "none"


def resolve(name: str, tokenizer, spec_file: str = "run spec") -> Template:
    """The template a run uses; `tokenizer` requires the tokenizer to carry one."""
    if name == NONE:
        return Template(NONE, None)
    if name == TOKENIZER:
        own = getattr(tokenizer, "chat_template", None)
        if not isinstance(own, str) or not own:
            raise SpecError(spec_file, "chat_template", "the base model's tokenizer has no chat template; "
                            f"name one of {', '.join(REGISTRY)} (or 'none' for plain prompt/completion text)")
        return Template(TOKENIZER, own)
    if name not in REGISTRY:
        raise SpecError(spec_file, "chat_template", f"unknown template '{name}'; choose one of {', '.join(CHOICES)}")
    return Template(name, REGISTRY[name])


def render(tokenizer, template: Template, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template.jinja, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, template: Template, messages: list[dict],
                    where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns.

    A turn runs from the end of the assistant header (the render of the earlier messages with the
    generation prompt) to the end of the render that includes it, so its end-of-turn token is
    trained too: the model learns to stop.
    """
    text = render(tokenizer, template, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = render(tokenizer, template, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, template, messages[: i + 1])
        if not (text.startswith(head) and text.startswith(upto) and len(head) <= len(upto)):
            raise InputError(f"{where}: template '{template.name}' renders this conversation's beginning "
                             "differently from the whole, so its assistant turns cannot be located; "
                             "choose another chat_template")
        spans.append((len(head), len(upto)))
    return text, spans


def stored_template(folder: str) -> tuple[str | None, str | None]:
    """(name from lineage.json, Jinja text from the tokenizer files) of a model or adapter folder."""
    name = None
    lineage = os.path.join(folder, "lineage.json")
    if os.path.isfile(lineage):
        with open(lineage) as f:
            name = json.load(f).get("chat_template")
    text = None
    jinja = os.path.join(folder, "chat_template.jinja")
    config = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(jinja):
        with open(jinja) as f:
            text = f.read()
    elif os.path.isfile(config):
        with open(config) as f:
            text = json.load(f).get("chat_template")
    return name, text


def template_mismatch(a_folder: str, b_folder: str) -> str | None:
    """A warning when two checkpoints were trained with (or ship) different chat templates, else None."""
    (a_name, a_text), (b_name, b_text) = stored_template(a_folder), stored_template(b_folder)
    if a_text == b_text and (a_name == b_name or None in (a_name, b_name)):
        return None
    if a_text is None or b_text is None:
        missing = a_folder if a_text is None else b_folder
        return f"{missing} has no chat template while the other has one; prompts will be formatted differently"
    return (f"chat templates differ: {a_folder}{named(a_name)} and {b_folder}{named(b_name)}; "
            "prompts formatted for one are out of distribution for the other")


def named(name: str | None) -> str:
    return f" ('{name}')" if name else ""

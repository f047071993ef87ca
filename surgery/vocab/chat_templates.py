"""Chat templates by name, and the one a merge writes.

The named templates are Jinja written for this project (the trainers format conversations with
them too). Each renders `messages` (dicts of `role` and `content`) and, with `add_generation_prompt`,
the header that opens the assistant's turn.

A merge spec's `chat_template` is, as in mergekit, a name (chatml, llama3, mistral, alpaca, exaone,
and this project's llama2 and zephyr), `auto` (the template most input models ship; ties go to the
first model in spec order, base first; none shipped: nothing written), or a Jinja template. A string
that is neither a known name nor a template that renders a test conversation is refused.
"""

from __future__ import annotations

from collections import Counter

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from surgery.errors import SpecError

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
# EXAONE: every turn is [|role|]text; a user turn ends with a newline, the others with [|endofturn|];
# a conversation without a system message opens with an empty one.
EXAONE = (
    "{% if not messages or messages[0]['role'] != 'system' %}[|system|][|endofturn|]\n{% endif %}"
    "{% for m in messages %}[|{{ m['role'] }}|]{{ m['content'] }}"
    "{% if m['role'] == 'user' %}{{ '\\n' }}{% else %}[|endofturn|]\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}[|assistant|]{% endif %}"
)

TEMPLATES: dict[str, str] = {
    "chatml": CHATML, "llama2": LLAMA2, "llama3": LLAMA3, "alpaca": ALPACA, "zephyr": ZEPHYR, "mistral": MISTRAL,
    "exaone": EXAONE,
}
AUTO = "auto"
TEST_CONVERSATION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                     {"role": "assistant", "content": "hi"}, {"role": "user", "content": "bye"}]


def render(template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """`template` rendered as transformers renders chat templates (sandboxed, blocks trimmed)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token="<s>", eos_token="</s>")


def _raise(message: str):
    raise TemplateError(message)


def merged_template(value: str | None, inputs: list[str | None], file: str) -> str | None:
    """The chat template a merge writes for the spec's `chat_template`, given the input models'
    templates in spec order (base first); None: write none."""
    if value is None:
        return None
    if value == AUTO:
        shipped = [t.strip() for t in inputs if t and t.strip()]
        return Counter(shipped).most_common(1)[0][0] if shipped else None
    if value in TEMPLATES:
        return TEMPLATES[value]
    if "{{" not in value and "{%" not in value:
        raise SpecError(file, "chat_template", f"{_short(value)} is neither a template name ({', '.join(TEMPLATES)}, "
                        "auto) nor a Jinja template")
    try:
        render(value, TEST_CONVERSATION, add_generation_prompt=True)
    except TemplateError as e:
        raise SpecError(file, "chat_template", f"the Jinja template does not render a test conversation "
                        f"(system, user, assistant, user): {e}") from None
    return value


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "...")

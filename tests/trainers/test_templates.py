"""Chat templates: each registry template renders a conversation as its model family expects, and
the assistant spans cover exactly the assistant turns (content and end-of-turn marker)."""

from __future__ import annotations

import pytest

from surgery.demo.tiny import CHATML, build_tokenizer
from trainers import templates
from trainers.templates import assistant_spans, resolve, template_mismatch

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write water two"},
            {"role": "assistant", "content": "water water"}, {"role": "user", "content": "now day"},
            {"role": "assistant", "content": "day"}]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()  # bos <|im_start|>, eos <|im_end|>


EXPECTED = {
    "chatml": "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nwrite water two<|im_end|>\n"
              "<|im_start|>assistant\nwater water<|im_end|>\n<|im_start|>user\nnow day<|im_end|>\n"
              "<|im_start|>assistant\nday<|im_end|>\n",
    "llama2": "<|im_start|>[INST] <<SYS>>\nbe brief\n<</SYS>>\n\nwrite water two [/INST] water water <|im_end|>"
              "<|im_start|>[INST] now day [/INST] day <|im_end|>",
    "llama3": "<|im_start|><|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nwrite water two<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nwater water<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nnow day<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nday<|eot_id|>",
    "alpaca": "be brief\n\n### Instruction:\nwrite water two\n\n### Response:\nwater water<|im_end|>\n\n"
              "### Instruction:\nnow day\n\n### Response:\nday<|im_end|>\n\n",
    "zephyr": "<|system|>\nbe brief<|im_end|>\n<|user|>\nwrite water two<|im_end|>\n"
              "<|assistant|>\nwater water<|im_end|>\n<|user|>\nnow day<|im_end|>\n<|assistant|>\nday<|im_end|>\n",
    "mistral": "<|im_start|>[INST] be brief\n\nwrite water two [/INST]water water<|im_end|>"
               "[INST] now day [/INST]day<|im_end|>",
}
# what each template trains on in the two assistant turns
TRAINED = {
    "chatml": ["water water<|im_end|>\n", "day<|im_end|>\n"],
    "llama2": [" water water <|im_end|>", " day <|im_end|>"],
    "llama3": ["water water<|eot_id|>", "day<|eot_id|>"],
    "alpaca": ["water water<|im_end|>\n\n", "day<|im_end|>\n\n"],
    "zephyr": ["water water<|im_end|>\n", "day<|im_end|>\n"],
    "mistral": ["water water<|im_end|>", "day<|im_end|>"],
}


def test_every_template_is_covered():
    assert set(EXPECTED) == set(TRAINED) == set(templates.REGISTRY)


@pytest.mark.parametrize("name", sorted(templates.REGISTRY))
def test_render_and_assistant_spans(tok, name):
    text, spans = assistant_spans(tok, resolve(name, tok), MESSAGES, "x.jsonl: line 1")
    assert text == EXPECTED[name]
    assert [text[a:b] for a, b in spans] == TRAINED[name]


def test_tokenizer_template_and_none(tok):
    assert resolve("tokenizer", tok) == templates.Template("tokenizer", CHATML)
    assert resolve("none", tok).jinja is None


def folder_with(tmp_path, name: str, template: str | None, lineage_name: str | None):
    folder = tmp_path / name
    folder.mkdir()
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    if lineage_name is not None:
        (folder / "lineage.json").write_text(f'{{"chat_template": "{lineage_name}"}}')
    return str(folder)


def test_template_mismatch(tmp_path):
    a = folder_with(tmp_path, "a", templates.CHATML, "chatml")
    b = folder_with(tmp_path, "b", templates.CHATML, None)  # a base model: no lineage, same text
    c = folder_with(tmp_path, "c", templates.LLAMA3, "llama3")
    d = folder_with(tmp_path, "d", None, None)
    assert template_mismatch(a, b) is None and template_mismatch(a, a) is None
    assert template_mismatch(a, c) == (f"chat templates differ: {a} ('chatml') and {c} ('llama3'); "
                                       "prompts formatted for one are out of distribution for the other")
    assert template_mismatch(a, d) == (f"{d} has no chat template while the other has one; "
                                       "prompts will be formatted differently")

"""Chat-template warnings before an evaluation, on folders whose lineage and tokenizer files are
written by hand."""

from __future__ import annotations

import json

from evals.scoring.harness import HarnessSettings
from evals.scoring.template_check import template_warnings

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
LLAMA3 = "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}{% endfor %}"


def folder(tmp_path, name: str, template: str | None, jinja: str | None):
    path = tmp_path / name
    path.mkdir()
    if template is not None:
        (path / "lineage.json").write_text(json.dumps({"chat_template": template}))
    if jinja is not None:
        (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": jinja}))
    return str(path)


def test_consistent_checkpoints_get_no_warning(tmp_path):
    a = folder(tmp_path, "a", "chatml", CHATML)
    b = folder(tmp_path, "b", "chatml", CHATML)
    plain = folder(tmp_path, "plain", "none", None)
    foreign = folder(tmp_path, "foreign", None, None)  # not trained here: nothing known
    assert template_warnings([a, b], applied=True) == []
    assert template_warnings([plain], applied=False) == []
    assert template_warnings([foreign], applied=False) == []


def test_checkpoints_trained_with_different_templates(tmp_path):
    a = folder(tmp_path, "a", "chatml", CHATML)
    c = folder(tmp_path, "c", "llama3", LLAMA3)
    warnings = template_warnings([a, c], applied=True)
    assert warnings == [f"chat templates differ: {a} ('chatml') and {c} ('llama3'); "
                        "prompts formatted for one are out of distribution for the other"]


def test_training_and_evaluation_formats_differ(tmp_path):
    a = folder(tmp_path, "a", "chatml", CHATML)
    plain = folder(tmp_path, "plain", "none", None)
    assert template_warnings([a], applied=False) == [
        f"{a} was trained with the chat template ('chatml') but is evaluated on plain prompts; "
        "add --apply-chat-template to format them as in training"]
    assert template_warnings([plain], applied=True) == [
        f"{plain} was trained on plain text (chat_template: none) but is evaluated with its tokenizer's chat "
        "template; drop --apply-chat-template to format prompts as in training"]


def test_applying_a_template_that_is_not_there(tmp_path):
    bare = folder(tmp_path, "bare", "chatml", None)
    assert template_warnings([bare], applied=True) == [
        f"{bare}: --apply-chat-template, but the tokenizer files carry no chat template"]


def test_the_chat_setting_is_part_of_the_stored_key_only_when_set():
    """Scores stored before the option existed keep matching; chat-formatted scores never mix with them."""
    assert HarnessSettings(limit=5).key == "limit=5;fewshot=None"
    assert HarnessSettings(limit=5, apply_chat_template=True).key == "limit=5;fewshot=None;chat"

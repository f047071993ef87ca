"""Warnings about chat templates before an evaluation: checkpoints of one evaluation trained with
different templates (their scores are then not comparable), and a checkpoint trained with a template
that the evaluation does not apply, or the other way round (lm-eval formats plain prompts unless
asked to apply the tokenizer's chat template)."""

from __future__ import annotations

from collections.abc import Sequence

from trainers.templates import NONE, named, stored_template, template_mismatch


def template_warnings(folders: Sequence[str], applied: bool) -> list[str]:
    """One message per problem found, in the order of `folders`; empty when all is consistent."""
    found = [w for other in folders[1:] if (w := template_mismatch(folders[0], other))]
    return found + [w for folder in folders if (w := _against_evaluation(folder, applied))]


def _against_evaluation(folder: str, applied: bool) -> str | None:
    name, text = stored_template(folder)
    if name is None:  # no lineage: not trained here, nothing known about how it was trained
        return None
    if name != NONE and not applied:
        return (f"{folder} was trained with the chat template{named(name)} but is evaluated on plain prompts; "
                "add --apply-chat-template to format them as in training")
    if name == NONE and applied:
        return (f"{folder} was trained on plain text (chat_template: none) but is evaluated with its tokenizer's "
                "chat template; drop --apply-chat-template to format prompts as in training")
    if applied and text is None:
        return f"{folder}: --apply-chat-template, but the tokenizer files carry no chat template"
    return None

"""Messages of the libraries under the commands that a user cannot act on, dropped at their source: each
by the logger that emits it (or the warning's category) and a piece of its text, so every other message
of the same logger, a real error included, still shows.

`lm_eval`'s `git describe` (which prints `fatal: not a git repository` outside a checkout) is quieted
where lm-eval is run: evals/scoring/harness.py.
"""

from __future__ import annotations

import logging
import warnings

DROPPED: dict[str, tuple[str, ...]] = {  # logger -> text of the messages dropped, and why in a comment
    # bitsandbytes tries an optional faster CPU kernel from the model hub at import (on CPUs with avx512_bf16)
    # and falls back to its own when that fails (offline, untrusted, `kernels` too old): nothing to fix
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    "kernels._internals.hf_hub": ("Skipping publisher trust check for ",),
    # every local task reads its rows with a custom_dataset function, which lm-eval notes on each load
    "lm_eval.api.task": (": Custom kwargs can be passed to `--metadata`",),
    # guessed from "inst"/"chat" in the path; `surgery eval` gives its own advice from the model's lineage
    "lm_eval.evaluator": ("instruct or chat variant but chat template is not applied",),
}
WARNINGS: tuple[tuple[type[Warning], str], ...] = (  # (category, regex matched at the message's start)
    # peft reads transformers' deprecated alias when it wraps a model; the project never reads it
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


class Dropped(logging.Filter):
    """Drops a logger's records whose message contains one of `texts` (whitespace runs read as one space)."""

    def __init__(self, texts: tuple[str, ...]):
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = " ".join(record.getMessage().split())  # lm-eval wraps some notes over lines at any word
        return not any(text in message for text in self.texts)


def quiet_third_party() -> None:
    """Install the filters (once per logger; a logger exists before its library is imported, so this needs
    none of them imported). Warning filters are added to the current filters: call it inside the command's
    `warnings.catch_warnings()`."""
    for name, texts in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, Dropped) for f in logger.filters):
            logger.addFilter(Dropped(texts))
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)

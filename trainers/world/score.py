"""Exact-match scoring of a model on the small world's test rows: greedy decoding of the completion
after the prompt, compared as a string. The quick check the zoo recipe reports; `evals/` scores the
same rows through lm-eval."""

from __future__ import annotations

import os

import torch

from trainers.jsonl import read_json_lines
from trainers.world.tasks import TASKS


def greedy_completion(model, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])  # (1, T)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def exact_match(model, tokenizer, rows: list[dict]) -> float:
    """Share of rows whose greedy completion equals `completion` exactly."""
    model.eval()
    # one token past the longest answer is enough to see whether the model stops where it should
    limit = 1 + max((len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows), default=0)
    hits = sum(greedy_completion(model, tokenizer, r["prompt"], limit) == r["completion"] for r in rows)
    return hits / len(rows) if rows else float("nan")


def score_table(models: dict[str, str], data: str, rows_per_task: int | None = None) -> dict[str, dict[str, float]]:
    """{model name: {task: exact match on its test split (or its first `rows_per_task` rows)}}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = {t: [row for _, row in read_json_lines(os.path.join(data, t, "test.jsonl")).objects()][:rows_per_task]
            for t in TASKS}
    table = {}
    for name, path in models.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        table[name] = {t: exact_match(model, tokenizer, rows[t]) for t in TASKS}
    return table

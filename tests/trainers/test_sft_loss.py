"""The SFT loss: a hand computation on fixed logits, the masks on rendered rows, and TRL's
SFTTrainer (completion-only loss) as the reference on the same batch."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.data import Row
from trainers.objectives import pretrain, sft
from trainers.templates import resolve

LN3 = math.log(3.0)


def test_token_loss_by_hand():
    """Vocabulary of 2, one row of 4 tokens; the logits at t predict token t+1.

    t=0: logits [0, ln 3] -> p = [1/4, 3/4]; target labels[1] = 1 -> -ln(3/4)
    t=1: logits [0, 0]    -> target labels[2] = -100: not trained
    t=2: logits [ln 3, 0] -> p = [3/4, 1/4]; target labels[3] = 1 -> -ln(1/4)
    t=3: its target would be beyond the row: never used.
    loss = (ln(4/3) + ln 4) / 2 = ln(16/3) / 2 = 0.83698; accuracy: t=0 right, t=2 wrong -> 1/2.
    A second row whose labels are all -100 adds nothing (it is all prompt).
    """
    logits = torch.tensor([[[0, LN3], [0, 0], [LN3, 0], [5, 5]],
                           [[9, 0], [0, 9], [9, 0], [0, 9]]], dtype=torch.float32)
    labels = torch.tensor([[0, 1, -100, 1], [-100, -100, -100, -100]])
    loss, metrics = sft.token_loss(logits, labels)
    assert loss.item() == pytest.approx(math.log(16 / 3) / 2, abs=1e-6)
    assert metrics == {"accuracy": 0.5}


def test_no_trained_token_gives_zero_not_nan():
    loss, metrics = sft.token_loss(torch.zeros(1, 3, 4), torch.full((1, 3), -100))
    assert loss.item() == 0.0 and metrics == {"accuracy": 0.0}


def tokens_trained(tokenizer, example) -> list[str]:
    return tokenizer.convert_ids_to_tokens([t for t in example["labels"] if t != sft.IGNORE])


def test_prompt_completion_trains_the_completion_and_end_of_turn(base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    row = Row({"prompt": "write water two", "completion": "water water"}, "x.jsonl", 1)
    ex = sft.encode(row, tok, resolve("chatml", tok), sft.Config())
    # the word-level tokenizer drops the newlines; "user" and "assistant" are not in its vocabulary (<unk>)
    assert tok.convert_ids_to_tokens(ex["input_ids"]) == [
        "<|im_start|>", "<unk>", "write", "water", "two", "<|im_end|>", "<|im_start|>", "<unk>", "water", "water",
        "<|im_end|>"]
    assert tokens_trained(tok, ex) == ["water", "water", "<|im_end|>"]
    everything = sft.encode(row, tok, resolve("chatml", tok), sft.Config(loss_on="all"))
    assert everything["labels"] == everything["input_ids"]


def test_multi_turn_trains_assistant_turns_only(base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    messages = [{"role": "system", "content": "you are a word"}, {"role": "user", "content": "write water two"},
                {"role": "assistant", "content": "water water"}, {"role": "user", "content": "now write day"},
                {"role": "assistant", "content": "day"}]
    ex = sft.encode(Row({"messages": messages}, "x.jsonl", 1), tok, resolve("chatml", tok), sft.Config())
    assert tokens_trained(tok, ex) == ["water", "water", "<|im_end|>", "day", "<|im_end|>"]


def test_plain_text_without_template(base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    ex = sft.encode(Row({"prompt": "write water ", "completion": "water water"}, "x.jsonl", 1), tok,
                    resolve("none", tok), sft.Config())
    assert tokens_trained(tok, ex) == ["water", "water", "<|im_end|>"]  # the tokenizer's eos ends the completion
    assert len(ex["input_ids"]) == 5
    text = pretrain.encode(Row({"text": "the water"}, "x.jsonl", 1), tok, resolve("none", tok), pretrain.Config())
    assert (text["labels"] == text["input_ids"]
            and tok.convert_ids_to_tokens(text["input_ids"]) == ["the", "water", "<|im_end|>"])


ROWS = [("write water two", "water water"), ("what is the first word of day and people", "the first word is day"),
        ("now write number", "number")]


@pytest.mark.integration
def test_equals_trl_sft_trainer(base, tmp_path):
    """TRL 1.16's SFTTrainer, on conversational prompt/completion rows with `completion_only_loss`,
    builds the same input ids and masks as `sft.build_batch` with the tokenizer's (ChatML) template,
    and its `compute_loss` gives the same value as `sft.loss`."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    data = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
            for p, c in ROWS]
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, completion_only_loss=True,
                     max_length=64, per_device_train_batch_size=3)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tok)
    reference = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])

    ours = sft.build_batch([Row({"prompt": p, "completion": c}, "x.jsonl", i) for i, (p, c) in enumerate(ROWS)],
                           tok, resolve("tokenizer", tok), sft.Config())
    assert torch.equal(ours["input_ids"], reference["input_ids"])
    assert torch.equal(ours["labels"], reference["labels"])
    assert torch.equal(ours["attention_mask"], reference["attention_mask"])
    with torch.no_grad():
        expected = trainer.compute_loss(model, dict(reference))
        loss, metrics = sft.loss(model, ours, sft.Config())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # completions and their <|im_end|>: 2 + 1, 5 + 1 and 1 + 1 tokens
    assert float(ours["num_items"]) == float((reference["labels"][:, 1:] != -100).sum()) == 11

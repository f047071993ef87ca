"""The reward model through the shared loop: the objective's `load_model` hook gives the base a scalar
head; trained on preference pairs, the saved folder is a normal sequence-classification folder that
transformers loads on its own and that ranks held-out pairs far above chance; with LoRA, the adapter
trains and saves the head too (PEFT's SEQ_CLS task)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from surgery.errors import InputError, SpecError
from tests.trainers.conftest import spec_dict
from trainers.loops import train
from trainers.spec import parse_run

HELD_OUT = "runs/data/prefs_eval.jsonl"


def reward_spec(method: dict, lr: float, **changes) -> dict:
    spec = spec_dict(objective={"name": "reward"}, method=method, optim={"lr": lr, "weight_decay": 0.0},
                     data={"train": "runs/data/prefs.jsonl", "eval": HELD_OUT},
                     schedule={"warmup_steps": 1, "total_steps": 12}, batch={"size": 8, "max_length": 64},
                     eval_every=12, out="out/reward")
    return {**spec, **changes}


def held_out_accuracy(model, tokenizer) -> float:
    """Each held-out (prompt, response) rendered by the tokenizer's chat template and scored alone
    (no padding); the share of pairs where the chosen response scores higher."""
    def score(prompt: str, response: str) -> float:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(input_ids=ids).logits[0, 0].item()

    with open(HELD_OUT) as f:
        rows = [json.loads(line) for line in f]
    return sum(score(r["prompt"], r["chosen"]) > score(r["prompt"], r["rejected"]) for r in rows) / len(rows)


def final_eval(out: str) -> dict:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [r for r in map(json.loads, f) if "eval_accuracy" in r][-1]


def test_full_reward_model_is_a_normal_folder_that_beats_chance(workdir):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    final = train(parse_run(reward_spec({"name": "full"}, 3e-3), "run.yaml"), quiet=True)
    config = AutoConfig.from_pretrained(final)
    assert config.architectures == ["LlamaForSequenceClassification"] and config.num_labels == 1
    assert config.pad_token_id == AutoTokenizer.from_pretrained(final).pad_token_id  # the head finds the last token
    model = AutoModelForSequenceClassification.from_pretrained(final, dtype=torch.float32).eval()
    accuracy = held_out_accuracy(model, AutoTokenizer.from_pretrained(final))
    assert accuracy >= 0.8  # 14 held-out pairs; chance is 0.5
    # the loop's batched, padded scoring agrees
    assert accuracy == pytest.approx(final_eval("out/reward")["eval_accuracy"])


def test_lora_reward_model_trains_and_saves_its_head(workdir, base):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    final = train(parse_run(reward_spec({"name": "lora", "r": 8}, 1e-2), "run.yaml"), quiet=True)
    with open(os.path.join(final, "adapter_config.json")) as f:
        assert json.load(f)["task_type"] == "SEQ_CLS"
    assert any(".score." in k for k in load_file(os.path.join(final, "adapter_model.safetensors")))
    torch.manual_seed(123)  # a fresh random head under the adapter, which the saved one replaces
    plain = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    plain.config.pad_token_id = AutoTokenizer.from_pretrained(base).pad_token_id
    model = PeftModel.from_pretrained(plain, final).eval()
    accuracy = held_out_accuracy(model, AutoTokenizer.from_pretrained(final))
    assert accuracy >= 0.8
    assert accuracy == pytest.approx(final_eval("out/reward")["eval_accuracy"])


def test_reward_with_a_method_that_loads_its_own_model_is_refused(workdir):
    with pytest.raises(SpecError, match="run.yaml: method.name: objective 'reward' loads its own model class"):
        train(parse_run(reward_spec({"name": "qlora"}, 1e-3), "run.yaml"), quiet=True)


def test_margin_must_be_a_number(workdir, tmp_path):
    rows = tmp_path / "pairs.jsonl"
    rows.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}) + "\n")
    with pytest.raises(InputError, match=rf"{rows}: line 1: field 'margin' must be a number, not str"):
        train(parse_run(reward_spec({"name": "full"}, 1e-3, data={"train": str(rows)}), "run.yaml"), quiet=True)

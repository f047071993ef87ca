"""The zoo recipe: the small world's models, trained here on 2 CPU cores with the shared loop.

`build_base` writes the tasks' fixed splits as JSONL, initialises a character-level Llama (hidden 128,
4 layers, 0.67M parameters) and trains it on the mixture of all tasks with the SFT objective (loss on
the answers). `build_experts` fine-tunes that base on one task each: the merge inputs of the demo,
whose other skills drift as their own improves (the forgetting the evals measure).
"""

from __future__ import annotations

import json
import os

from surgery.io.output import atomic_folder
from trainers.world.tasks import TASKS, splits

MODEL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=96, tie_word_embeddings=True)
TRAIN_ROWS, TEST_ROWS = 4000, 48
MIX = {"add": 2.0, "reverse": 1.0, "capital": 1.0, "refuse": 1.5}  # sampling weights: the slowest to learn get more


def write_data(folder: str, seed: int = 0) -> dict[str, dict[str, str]]:
    """`folder/<task>/{train,test}.jsonl`; returns {task: {"train": path, "test": path}}."""
    paths = {}
    for task in TASKS:
        train, test = splits(task, TRAIN_ROWS, TEST_ROWS, seed)
        os.makedirs(os.path.join(folder, task), exist_ok=True)
        paths[task] = {"train": _jsonl(os.path.join(folder, task, "train.jsonl"), train),
                       "test": _jsonl(os.path.join(folder, task, "test.jsonl"), test)}
    return paths


def _jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return os.path.abspath(path)


def init_model(folder: str, seed: int = 0, tokenizer=None, shape: dict | None = None) -> str:
    """A randomly initialised Llama with its tokenizer (the character tokenizer unless another is
    given) and `shape` (the zoo's MODEL unless another is given), saved atomically."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainers.world.tokenizer import char_tokenizer

    tokenizer = tokenizer or char_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         **(shape or MODEL))
    torch.manual_seed(seed)
    with atomic_folder(folder) as tmp:
        LlamaForCausalLM(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return os.path.abspath(folder)


def run_spec(base: str, train: list[tuple[str, float]], evals: list[str], out: str, steps: int, lr: float,
             method: dict | None = None, seed: int = 0, batch: int = 32) -> dict:
    """The run spec (as the YAML would hold it) of one zoo training run."""
    return {
        "base": base, "objective": {"name": "sft"}, "method": method or {"name": "full"},
        "data": {"train": [{"path": p, "weight": w} for p, w in train], "eval": evals},
        "chat_template": "none", "optim": {"lr": lr, "weight_decay": 0.0},
        "schedule": {"warmup_steps": max(1, steps // 40), "total_steps": steps, "cosine": True, "min_lr_ratio": 0.1},
        "batch": {"size": batch, "max_length": 96}, "eval_every": max(1, steps // 4), "seed": seed, "out": out,
    }


def build_base(zoo: str, steps: int = 2000, seed: int = 0, quiet: bool = False) -> str:
    """Data, initial weights and the pretrained base under `zoo`; returns the base's folder."""
    from trainers.loops import train
    from trainers.spec import parse_run

    data = write_data(os.path.join(zoo, "data"), seed)
    init = init_model(os.path.join(zoo, "init"), seed)
    spec = run_spec(init, [(data[t]["train"], MIX[t]) for t in TASKS], [data[t]["test"] for t in TASKS],
                    os.path.join(zoo, "runs", "base"), steps, lr=3e-3, seed=seed, batch=64)
    return _publish(train(parse_run(spec, "zoo base"), quiet=quiet), os.path.join(zoo, "base"))


def build_expert(zoo: str, task: str, steps: int = 200, seed: int = 0, quiet: bool = False) -> str:
    """The base fine-tuned (fully) on one task's training rows; returns the expert's folder."""
    from trainers.loops import train
    from trainers.spec import parse_run

    data = os.path.join(zoo, "data", task)
    spec = run_spec(os.path.join(zoo, "base"), [(os.path.join(data, "train.jsonl"), 1.0)],
                    [os.path.join(data, "test.jsonl")], os.path.join(zoo, "runs", task), steps, lr=5e-4, seed=seed)
    return _publish(train(parse_run(spec, f"zoo expert {task}"), quiet=quiet), os.path.join(zoo, task))


def _publish(final: str, folder: str) -> str:
    """The run's final folder, linked at a stable name (`zoo/base`, `zoo/add`, ...)."""
    if os.path.islink(folder):
        os.remove(folder)
    os.symlink(os.path.relpath(final, os.path.dirname(folder)), folder)
    return os.path.abspath(folder)


def ensure_zoo(models: str, base_steps: int, expert_steps: int, echo=print, experts=("add", "reverse", "refuse")
               ) -> dict[str, str]:
    """The zoo's base and experts under `models`, trained where missing (a finished model is kept);
    an unfinished run is refused (delete its folder to train it again). Returns {name: folder}."""
    from surgery.errors import OutputError

    found = {}
    for name in ("base", *experts):
        folder = os.path.join(models, name)
        if not os.path.isfile(os.path.join(folder, "lineage.json")):
            if os.path.lexists(os.path.join(models, "runs", name)):
                raise OutputError(f"{os.path.join(models, 'runs', name)} holds an unfinished run of {name}; "
                                  "delete that folder to train it again")
            echo(f"training {name} in {folder} ({base_steps if name == 'base' else expert_steps} steps)")
            folder = build_base(models, base_steps) if name == "base" else build_expert(models, name, expert_steps)
        found[name] = folder
    return found

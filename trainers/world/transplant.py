"""The small world's tokenizer-transplant experiment (`surgery tokensurgeon`).

The donor is a small-world model with a GPT-2 style byte-level BPE tokenizer, built here: the BPE is
trained on the world's training text (`vocab_size` tokens: the 256-byte alphabet, merges, ChatML
markers) and a Llama of the zoo's shape is trained on the same mixture as the zoo's base. A model
then receives the donor's vocabulary by each approximation method, and its held-out answer
perplexity per byte (the answer and end-of-turn marker given the prompt, over every task's test rows)
and exact match are compared with the original's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

from surgery.io.output import atomic_file
from trainers.world.tasks import TASKS

METHODS = ("omp", "subword", "mean")


def bpe_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2's scheme) trained on `texts`, with the character tokenizer's specials and
    chat template, as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trainers.world.tokenizer import CHATML, SPECIALS

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML
    return fast


def build_donor(zoo: str, steps: int, vocab_size: int = 512, seed: int = 0) -> str:
    """`zoo/bpe-base`: the zoo's base recipe with a byte-level BPE tokenizer (kept between runs)."""
    from trainers.loop import train
    from trainers.spec import parse_run
    from trainers.world.zoo import MIX, _publish, init_model, run_spec, write_data

    folder = os.path.join(zoo, "bpe-base")
    if os.path.isfile(os.path.join(folder, "lineage.json")):
        return os.path.abspath(folder)
    data = write_data(os.path.join(zoo, "data"), seed)
    texts = [json.loads(line)["prompt"] + json.loads(line)["completion"]
             for t in TASKS for line in open(data[t]["train"])]
    init = init_model(os.path.join(zoo, "bpe-init"), seed, tokenizer=bpe_tokenizer(texts, vocab_size))
    spec = run_spec(init, [(data[t]["train"], MIX[t]) for t in TASKS], [data[t]["test"] for t in TASKS],
                    os.path.join(zoo, "runs", "bpe-base"), steps, lr=3e-3, seed=seed, batch=64)
    return _publish(train(parse_run(spec, "zoo bpe donor"), quiet=False), folder)


def answer_perplexity(model, tokenizer, rows: list[dict]) -> float:
    """exp(NLL of each answer and its end-of-turn marker given the prompt / the answers' UTF-8 bytes),
    the text tokenised as training tokenises it (prompt + answer + EOS, no BOS): comparable across
    tokenizers because it is per byte, not per token."""
    import torch

    nll, nbytes = 0.0, 0
    for row in rows:
        text = row["prompt"] + row["completion"] + (tokenizer.eos_token or "")
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])  # (1, T)
        answer = torch.tensor([end > len(row["prompt"]) for _, end in enc["offset_mapping"]])  # (T,)
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].float().log_softmax(-1)  # (T - 1, V): token t+1 from tokens <= t
        target = ids[0, 1:]
        nll -= logp[torch.arange(len(target)), target][answer[1:]].sum().item()
        nbytes += len(row["completion"].encode())
    return math.exp(nll / nbytes)


def evaluate(folder: str, rows: dict[str, list[dict]], exact: bool) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.world.score import exact_match

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = {"ppl_per_byte": round(answer_perplexity(model, tokenizer, [r for t in TASKS for r in rows[t]]), 4)}
    if exact:
        out |= {f"exact_{t}": exact_match(model, tokenizer, rows[t]) for t in TASKS}
    return out


def run_transplant(model: str, donor: str, zoo: str, out: str, k: int = 64, rows_per_task: int | None = None,
                   exact: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Transplant `donor`'s tokenizer onto `model` by every method; score each against the original."""
    from surgery.vocab.tokensurgeon import plan_transplant, write_transplant

    rows = {t: [json.loads(line) for line in open(os.path.join(zoo, "data", t, "test.jsonl"))][:rows_per_task]
            for t in TASKS}
    result = {"model": os.path.abspath(model), "donor": os.path.abspath(donor), "k": k,
              "original": evaluate(model, rows, exact), "donor_scores": evaluate(donor, rows, exact)}
    for method in METHODS:
        plan = plan_transplant(model, donor, method, k)
        folder = write_transplant(plan, os.path.join(out, method), force=True)
        result[method] = {**evaluate(folder, rows, exact), "shared": len(plan.shared), "approximated": len(plan.new)}
        echo(f"{method}: {result[method]}")
    os.makedirs(out, exist_ok=True)
    with atomic_file(os.path.join(out, "transplant.json")) as tmp, open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    return result

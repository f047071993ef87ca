"""Packed and padding-free batches (`batch.packing`) and the chunked cross-entropy (`batch.logits_chunk`):
the same tokens scored the same way as one padded row per sequence, so the same loss, gradient and run.

Layouts are worked by hand first; then, on each architecture of the fixtures (Llama, Qwen2, GPT-2, whose
position embeddings are learned rather than rotary), the loss and its gradient packed against padded,
within 1e-5; then whole runs through the loop, whose weights must match the padded run's."""

from __future__ import annotations

import os

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from surgery.errors import SpecError
from tests.trainers.conftest import spec_dict
from trainers.data import Row
from trainers.logprobs import IGNORE, LOGITS_ENTRIES, LinearHeadLogps, auto_chunk, chunked_logps, head_logps, scores
from trainers.loops import train
from trainers.objectives import dpo, kto, orpo, sft
from trainers.packing import PACKED, PADDED, PADDING_FREE, Layout, best_fit_decreasing, collate
from trainers.spec import parse_run
from trainers.templates import resolve

X = IGNORE


def test_best_fit_decreasing_by_hand():
    """Capacity 10, lengths [3, 7, 5, 5, 2, 4]: longest first. 7 opens bin A (3 free); the first 5 does
    not fit A and opens B (5 free); the second 5 fills B exactly; 4 fits neither and opens C (6 free); 3
    fills A exactly; 2 goes to C. Ties go to the earlier bin: [6, 6, 3] puts the 3 with the first 6."""
    assert best_fit_decreasing([3, 7, 5, 5, 2, 4], 10) == [[1, 0], [2, 3], [5, 4]]
    assert best_fit_decreasing([6, 6, 3], 10) == [[0, 2], [1]]
    assert best_fit_decreasing([12, 1], 10) == [[0], [1]]  # too long for any bin: one of its own


def test_packed_layout_by_hand():
    """Sequences of 3, 2 and 4 tokens in rows of 6: [4-token | 2-token] and [3-token + 3 slots of tail].
    Each sequence's first label is IGNORE in a packed row (it would be predicted from another sequence);
    position ids restart per sequence, the tail counts from 0 as a block of its own."""
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    labels = [[X, 2, 3], [4, 5], [X, X, 8, 9]]
    out = collate(ids, labels, 0, Layout(PACKED, 6, 16))
    assert out["input_ids"].tolist() == [[6, 7, 8, 9, 4, 5], [1, 2, 3, 0, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert out["labels"].tolist() == [[X, X, 8, 9, X, 5], [X, 2, 3, X, X, X]]
    assert out["sequence"].tolist() == [[2, 2, 2, 2, 1, 1], [0, 0, 0, -1, -1, -1]]
    assert "attention_mask" not in out and out["logits_chunk"] == 16
    free = collate(ids, labels, 0, Layout(PADDING_FREE, 6))
    assert free["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert free["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    padded = collate(ids, labels, 0, Layout(PADDED))
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert padded["labels"].tolist() == [[X, 2, 3, X], [4, 5, X, X], [X, X, 8, 9]]


ROWS = [("what is the first word of water and people", "the first word is water"), ("write water two", "water water"),
        ("now write number", "number"), ("write day two", "day day"), ("what is the first word of day", "day"),
        ("write call two", "call call")]
PAIRS = [("write day two", "day day", "day"), ("what is the first word of day and people", "the first word is day",
                                                 "the first word is people"), ("now write number", "number", "time")]
LAYOUTS = [Layout(PADDED, None, None), Layout(PADDED, None, 3), Layout(PACKED, 40, 5), Layout(PADDING_FREE, 40, 7),
           Layout(PACKED, 24)]  # the last: the default chunk ("auto"), rows of 24 tokens


def model_and_template(folder: str):
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), tok, resolve("chatml", tok)


def loss_and_grads(model, loss_fn, batch, config):
    model.zero_grad()
    value, metrics = loss_fn(model, batch, config)
    value.backward()
    return value.item(), metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_everywhere(results):
    (v0, m0, g0), *rest = results
    for v, m, g in rest:
        assert v == pytest.approx(v0, abs=1e-5)
        assert m == pytest.approx(m0, abs=1e-5)
        assert g.keys() == g0.keys()
        for k in g0:
            torch.testing.assert_close(g[k], g0[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_sft_packed_equals_padded(kind, llama, qwen2, gpt2):
    """The loss, accuracy and every gradient of a packed, a padding-free and a chunked batch equal the
    padded batch's with the model's own head, within 1e-5."""
    model, tok, template = model_and_template({"llama": llama, "qwen2": qwen2, "gpt2": gpt2}[kind]["base"])
    encoded = [sft.encode(Row({"prompt": p, "completion": c}, "x.jsonl", i), tok, template, sft.Config())
               for i, (p, c) in enumerate(ROWS)]
    batches = [sft.collate(encoded, 0, layout) for layout in LAYOUTS]
    assert len({int(b["num_items"]) for b in batches}) == 1
    assert batches[2]["input_ids"].shape[0] < len(ROWS)  # rows shared: it did pack
    assert_same_everywhere([loss_and_grads(model, sft.loss, b, sft.Config()) for b in batches])


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_packed_sft_loss_equals_trls_padding_free_loss(kind, llama, qwen2):
    """The reference: TRL 1.16's padding-free collator (every row of the micro-batch in one sequence,
    position ids restarting) over the same encoded rows, scored by the model's own loss (transformers'
    cross-entropy over the shifted labels). Our packed and padding-free losses equal it within 1e-5."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tok, template = model_and_template({"llama": llama, "qwen2": qwen2}[kind]["base"])
    encoded = [sft.encode(Row({"prompt": p, "completion": c}, "x.jsonl", i), tok, template, sft.Config())
               for i, (p, c) in enumerate(ROWS)]
    trl = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in encoded])
    with torch.no_grad():
        # use_cache=False as TRL's fused head passes it: with a cache, transformers does not look for packed
        # sequences in the position ids, and the row attends across them
        expected = model(input_ids=trl["input_ids"], position_ids=trl["position_ids"], labels=trl["labels"],
                         use_cache=False).loss.item()
        ours = [sft.loss(model, sft.collate(encoded, 0, layout), sft.Config())[0].item()
                for layout in (Layout(PACKED, 40), Layout(PADDING_FREE, 40, 5))]
    assert ours == pytest.approx([expected] * 2, abs=1e-5)


def test_packing_changes_nothing_only_with_restarting_positions(llama):
    """The check that packing is honest: the same packed tokens with ordinary positions (each sequence
    sees the ones before it) give another loss."""
    model, tok, template = model_and_template(llama["base"])
    encoded = [sft.encode(Row({"prompt": p, "completion": c}, "x.jsonl", i), tok, template, sft.Config())
               for i, (p, c) in enumerate(ROWS)]
    padded, packed = sft.collate(encoded, 0), sft.collate(encoded, 0, Layout(PADDING_FREE, 40))
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
    with torch.no_grad():
        expected, ours, leaked = (sft.loss(model, b, sft.Config())[0].item() for b in (padded, packed, leaky))
    assert ours == pytest.approx(expected, abs=1e-5)
    assert abs(leaked - expected) > 1e-3


def pair_batches(objective, tok, template, config):
    rows = [Row({"prompt": p, "chosen": c, "rejected": r}, "x.jsonl", i) for i, (p, c, r) in enumerate(PAIRS)]
    encoded = [objective.encode(r, tok, template, config) for r in rows]
    return [objective.collate(encoded, 0, layout) for layout in LAYOUTS]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_dpo_and_orpo_packed_equal_padded(kind, llama, gpt2, build, tmp_path):
    """DPO (against a perturbed reference) and ORPO (both NLL variants): loss, metrics and gradients."""
    base = {"llama": llama, "gpt2": gpt2}[kind]["base"]
    model, tok, template = model_and_template(base)
    reference = AutoModelForCausalLM.from_pretrained(build(str(tmp_path / "ref"), kind, seed=5, base=base, scale=0.5))
    config = dpo.Config(beta=0.5)
    with torch.no_grad():
        batches = [dpo.annotate(reference, b, config) for b in pair_batches(dpo, tok, template, config)]
    assert all(torch.allclose(b["ref_logps"], batches[0]["ref_logps"], atol=1e-5) for b in batches)
    assert_same_everywhere([loss_and_grads(model, dpo.loss, b, config) for b in batches])
    for nll_on in ("completion", "all"):
        config = orpo.Config(lam=0.3, nll_on=nll_on)
        assert_same_everywhere([loss_and_grads(model, orpo.loss, b, config)
                                for b in pair_batches(orpo, tok, template, config)])


def test_kto_packed_equals_padded(llama):
    """KTO's rows and its mismatched KL pairs, both packed."""
    model, tok, template = model_and_template(llama["base"])
    rows = [Row({"prompt": p, "completion": c, "label": i % 2 == 0}, "x.jsonl", i) for i, (p, c) in enumerate(ROWS)]
    config = kto.Config(beta=0.5)
    encoded = [kto.encode(r, tok, template, config) for r in rows]
    reference = AutoModelForCausalLM.from_pretrained(llama["math"])
    with torch.no_grad():
        batches = [kto.annotate(reference, kto.collate(encoded, 0, layout), config) for layout in LAYOUTS]
    assert_same_everywhere([loss_and_grads(model, kto.loss, b, config) for b in batches])


def test_scores_only_the_labelled_positions(llama):
    """`scores` returns one log-probability per target token, equal to log_softmax of the full logits."""
    model, tok, template = model_and_template(llama["base"])
    encoded = [sft.encode(Row({"prompt": p, "completion": c}, "x.jsonl", i), tok, template, sft.Config())
               for i, (p, c) in enumerate(ROWS[:3])]
    batch = sft.collate(encoded, 0, Layout(PADDED, None, 4))
    with torch.no_grad():
        s = scores(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    expected = torch.log_softmax(logits[:, :-1], -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0][targets != X]
    assert s.logps.shape == (int(batch["num_items"]),)
    torch.testing.assert_close(s.logps, expected, atol=1e-6, rtol=1e-6)


def test_auto_chunk_follows_the_vocabulary():
    """The default chunk holds LOGITS_ENTRIES (2^24) logits: 2^24 // 32000 = 524 positions of a 32000-token
    head, 2^24 // 151936 = 110 of Qwen2's, and at least one of any head."""
    assert LOGITS_ENTRIES == 2**24
    assert auto_chunk(torch.nn.Linear(8, 32000, device="meta")) == 524
    assert auto_chunk(torch.nn.Linear(8, 151936, bias=False, device="meta")) == 110
    assert auto_chunk(torch.nn.Linear(8, 2**25, device="meta")) == 1


@pytest.mark.parametrize("bias", [False, True])
def test_linear_head_chunks_equal_the_whole_head_and_checkpointing(bias):
    """A plain Linear head's chunked log-probabilities (one weight-gradient buffer) give the values, the
    top-token flags and the gradients of hidden states, weight and bias that the unchunked head gives
    (float64, so that only a real difference shows) and that checkpointing each chunk through the head
    as a module gives; 37 positions in chunks of 5, the last one short."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias, dtype=torch.float64)
    hidden = torch.randn(37, 16, dtype=torch.float64)
    targets, upstream = torch.randint(0, 50, (37,)), torch.randn(37)
    with torch.no_grad():
        targets[::3] = head(hidden[::3]).argmax(-1)  # a third of the targets are the top token

    def run(fn):
        h = hidden.clone().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        logps, correct = fn(h)
        (logps * upstream).sum().backward()
        return [logps.double(), correct, h.grad, head.weight.grad] + ([head.bias.grad] if bias else [])

    ours = run(lambda h: LinearHeadLogps.apply(h, head.weight, head.bias, targets, 5))
    whole = run(lambda h: head_logps(head, h, targets))
    wrapped = torch.nn.Sequential(head)  # not a plain Linear: chunked_logps checkpoints each chunk instead
    checkpointed = run(lambda h: chunked_logps(wrapped, h, targets, 5))
    assert run(lambda h: chunked_logps(head, h, targets, 5))[0].equal(ours[0])  # chunked_logps takes this path
    for a, b, c in zip(ours, whole, checkpointed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-6)
    assert ours[1][::3].all() and not ours[1].all()  # the flags are compared on both values


def run_weights(spec: dict) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(train(parse_run(spec, "run.yaml"), quiet=True), "model.safetensors"))


@pytest.mark.integration
@pytest.mark.parametrize("objective", [{"name": "sft"}, {"name": "dpo", "beta": 0.5}])
def test_a_packed_run_ends_at_the_padded_runs_weights(workdir, objective):
    """Six optimizer steps of full fine-tuning (two micro-batches each), padded with the model's own head
    against packed and padding-free with the chunked head: the same weights within float tolerance. (SFT
    agrees to ~3e-7; DPO to ~2e-5: its gradients are small, and AdamW divides each by its running RMS,
    so rounding in an entry whose gradient is near zero becomes up to 1% of a step of lr 3e-3. Every
    tensor moved by more than 5e-3.)"""
    data = {"train": "runs/data/prefs.jsonl", "eval": "runs/data/prefs_eval.jsonl"} if objective["name"] == "dpo" \
        else {"train": "runs/data/instruct.jsonl", "eval": "runs/data/eval.jsonl"}
    weights = []
    for i, (packing, chunk) in enumerate([(False, None), (True, 8), ("padding_free", 1024)]):
        batch = {"size": 4, "grad_accum": 2, "max_length": 64, "packing": packing, "logits_chunk": chunk}
        weights.append(run_weights(spec_dict(objective=objective, data=data, batch=batch, out=f"out/{i}")))
    base = load_file("models/base/model.safetensors")
    for other in weights[1:]:
        for k in base:
            assert (weights[0][k] - base[k]).abs().max() > 5e-3
            torch.testing.assert_close(other[k], weights[0][k], atol=5e-5, rtol=1e-4)


def test_packing_refused_where_rows_cannot_be_packed(workdir):
    with pytest.raises(SpecError, match="run.yaml: batch.packing: objective 'reward' does not pack its rows"):
        parse_run(spec_dict(objective={"name": "reward"}, batch={"packing": True}), "run.yaml")
    with pytest.raises(SpecError, match="objective 'grpo' does not pack"):
        parse_run(spec_dict(objective={"name": "grpo", "reward_functions": ["world.add"]},
                            batch={"packing": "padding_free"}), "run.yaml")
    with pytest.raises(SpecError, match=r"batch.packing: Input should be False, True or 'padding_free'"):
        parse_run(spec_dict(batch={"packing": "yes"}), "run.yaml")
    assert parse_run(spec_dict(batch={"logits_chunk": "auto"}), "run.yaml").spec.batch.logits_chunk == "auto"
    with pytest.raises(SpecError, match=r"run.yaml: batch.logits_chunk: .*a chunk is at least 1 position.* \(got 0\)"):
        parse_run(spec_dict(batch={"logits_chunk": 0}), "run.yaml")


def test_prompt_tuning_cannot_pack_exit_2_nothing_written(workdir):
    """Prompt tuning puts virtual positions before each sequence and PEFT drops position ids: the check
    on the loaded model refuses, exit code 2, before any step, and no run folder is written."""
    from surgery.cli import main

    spec = spec_dict(method={"name": "prompt", "num_virtual_tokens": 4}, batch={"size": 4, "packing": True},
                     out="out/prompt")
    with open("run.yaml", "w") as f:
        yaml.safe_dump(spec, f)
    result = CliRunner().invoke(main, ["train", "run.yaml", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "run.yaml: batch.packing" in result.output and "set batch.packing: false" in result.output
    assert "Traceback" not in result.output
    assert not os.path.exists("out/prompt/final") and not os.path.exists("out/prompt/log.jsonl")

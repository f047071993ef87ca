"""The preference losses: each pure loss on hand-made log-probabilities (the expected values worked out
in the docstrings), then equal to TRL 1.16's trainers on the same token ids and weights.

TRL's DPO and KTO compute their losses inside the trainer, so those are compared through a real
DPOTrainer / KTOTrainer on the tiny base (its own tokenisation and collation, which must give our
token ids). CPO (SimPO) and ORPO are compared through their `get_batch_loss_metrics` on our batch,
and the reward model through RewardTrainer's `compute_loss`.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from trainers.data import Row
from trainers.objectives import dpo, ipo, kto, orpo, pairs, reward, simpo
from trainers.templates import resolve

T = torch.tensor


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), written out for the expected values."""
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------- hand-worked


def test_sequence_logps_by_hand():
    """Vocabulary of 2; logits at t predict token t+1; -100 labels are not scored.

    Row 0: t=0 logits [0, ln 3] -> p(1) = 3/4; t=1 target -100; t=2 logits [ln 3, 0] -> p(1) = 1/4.
    Summed log-prob ln(3/4) + ln(1/4) = ln(3/16) over 2 tokens. Row 1: all -100 -> 0 over 0 tokens.
    """
    ln3 = math.log(3)
    logits = T([[[0, ln3], [0, 0], [ln3, 0], [5, 5]], [[1, 0], [0, 1], [1, 0], [0, 1]]])
    labels = T([[0, 1, -100, 1], [-100, -100, -100, -100]])
    logps, tokens = pairs.sequence_logps(logits, labels)
    assert logps.tolist() == pytest.approx([math.log(3 / 16), 0.0], abs=1e-6)
    assert tokens.tolist() == [2, 0]


def test_dpo_loss_by_hand():
    """beta = 0.5; chosen: policy -2, reference -3 (log-ratio +1); rejected: policy -4, reference -3 (-1).
    Rewards r_w = 0.5, r_l = -0.5, d = 1: loss = -log sigmoid(1) = log(1 + e^-1) = 0.31326.
    With label_smoothing 0.2: 0.8 log(1 + e^-1) + 0.2 log(1 + e^1) = 0.51326.
    Second pair with the roles reversed (d = -1): log(1 + e^1) = 1.31326."""
    args = T([-2.0, -4.0]), T([-4.0, -2.0]), T([-3.0, -3.0]), T([-3.0, -3.0])
    losses, r_w, r_l = dpo.dpo_loss(*args, beta=0.5)
    assert losses.tolist() == pytest.approx([softplus(-1), softplus(1)], abs=1e-6)
    assert r_w.tolist() == pytest.approx([0.5, -0.5]) and r_l.tolist() == pytest.approx([-0.5, 0.5])
    smoothed, _, _ = dpo.dpo_loss(*args, beta=0.5, label_smoothing=0.2)
    assert smoothed[0].item() == pytest.approx(0.8 * softplus(-1) + 0.2 * softplus(1), abs=1e-6)
    assert pairs.reward_metrics(r_w, r_l) == pytest.approx(
        {"rewards/chosen": 0.0, "rewards/rejected": 0.0, "margin": 0.0, "accuracy": 0.5})


def test_ipo_loss_by_hand():
    """Chosen: -2 over 2 tokens, reference -4: per-token log-ratio +1. Rejected: -6 over 3 tokens,
    reference -3: per-token -1. Gap h = 2. beta = 0.25: target 1/(2 beta) = 2, loss 0;
    beta = 0.5: target 1, loss (2 - 1)^2 = 1. Summed, not averaged, the gap would be 2 + 3 = 5 (loss 16)."""
    args = T([-2.0]), T([-6.0]), T([-4.0]), T([-3.0]), T([2]), T([3])
    assert ipo.ipo_loss(*args, beta=0.25)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert ipo.ipo_loss(*args, beta=0.5)[0].item() == pytest.approx(1.0, abs=1e-6)


def test_simpo_loss_by_hand():
    """Chosen: -3 over 3 tokens (mean -1); rejected: -8 over 4 tokens (mean -2); beta = 2:
    rewards -2 and -4, difference 2; gamma = 1: loss = -log sigmoid(2 - 1) = log(1 + e^-1).
    gamma = 2: -log sigmoid(0) = ln 2."""
    args = T([-3.0]), T([-8.0]), T([3]), T([4])
    losses, r_w, r_l = simpo.simpo_loss(*args, beta=2.0, gamma=1.0)
    assert losses.item() == pytest.approx(softplus(-1), abs=1e-6)
    assert (r_w.item(), r_l.item()) == pytest.approx((-2.0, -4.0))
    assert simpo.simpo_loss(*args, beta=2.0, gamma=2.0)[0].item() == pytest.approx(math.log(2), abs=1e-6)


def test_orpo_odds_ratio_by_hand():
    """Chosen mean token probability 1/2: odds 1, log odds 0. Rejected 1/5: odds 1/4, log odds -ln 4.
    log OR = ln 4; -log sigmoid(ln 4) = log(1 + 1/4) = ln 1.25; times lambda = 0.1."""
    penalty, log_or = orpo.odds_ratio_loss(T([math.log(0.5)]), T([math.log(0.2)]), lam=0.1)
    assert log_or.item() == pytest.approx(math.log(4), abs=1e-6)
    assert penalty.item() == pytest.approx(0.1 * math.log(1.25), abs=1e-7)


def test_log1mexp_is_accurate_at_both_ends():
    """log(1 - e^x): near 0, 1 - e^x ~ -x; far below, log(1 - e^x) ~ -e^x (double precision in)."""
    x = torch.tensor([-1e-10, -50.0, math.log(0.5)], dtype=torch.float64)
    assert orpo.log1mexp(x).tolist() == pytest.approx([math.log(1e-10), -math.exp(-50), math.log(0.5)], rel=1e-9)


def test_kto_loss_by_hand():
    """beta = 1. Row 0 desirable with r = -1 - (-3) = 2; row 1 undesirable with r = -4 - (-3) = -1.
    Mismatched pairs: policy [-2, -1], reference [-3, -4]: log-ratios 1 and 3, z = mean = 2.
    Desirable: 1 - sigmoid(2 - 2) = 1/2, times w_d = 2 -> 1. Undesirable: 1 - sigmoid(2 - (-1)) =
    sigmoid(-3) = 0.047426, times w_u = 1. A negative mean log-ratio gives z = 0 (clamped)."""
    logps, ref, desirable = T([-1.0, -4.0]), T([-3.0, -3.0]), T([True, False])
    losses, rewards, z = kto.kto_loss(logps, ref, T([-2.0, -1.0]), T([-3.0, -4.0]), desirable, beta=1.0,
                                      desirable_weight=2.0, undesirable_weight=1.0)
    assert z.item() == pytest.approx(2.0)
    assert losses.tolist() == pytest.approx([1.0, 1 / (1 + math.exp(3))], abs=1e-6)
    assert rewards.tolist() == pytest.approx([2.0, -1.0])
    _, _, z0 = kto.kto_loss(logps, ref, T([-5.0, -5.0]), T([-3.0, -4.0]), desirable, beta=1.0)
    assert z0.item() == 0.0
    assert kto.kto_metrics(rewards, desirable) == pytest.approx(
        {"rewards/chosen": 2.0, "rewards/rejected": -1.0, "margin": 3.0, "accuracy": 1.0})


def test_bradley_terry_by_hand():
    """Scores 2 (chosen) and 1 (rejected): -log sigmoid(1) = log(1 + e^-1); with margin 1: ln 2."""
    assert reward.bradley_terry_loss(T([2.0]), T([1.0])).item() == pytest.approx(softplus(-1), abs=1e-6)
    assert reward.bradley_terry_loss(T([2.0]), T([1.0]), T([1.0])).item() == pytest.approx(math.log(2), abs=1e-6)


# ---------------------------------------------------------------- against TRL

PAIRS = [("write water two", "water water", "water"),
         ("what is the first word of day and people", "the first word is day", "the first word is people"),
         ("now write number", "number", "number number time")]


def our_rows() -> list[Row]:
    return [Row({"prompt": p, "chosen": c, "rejected": r}, "x.jsonl", i) for i, (p, c, r) in enumerate(PAIRS, 1)]


def conversational(prompt: str, *completions: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}],
            **{k: [{"role": "assistant", "content": v}] for k, v in zip(("chosen", "rejected"), completions)}}


@pytest.fixture(scope="module")
def models(base, tmp_path_factory, build):
    """The tiny base as the policy and a perturbed copy (~2% noise) as the reference."""
    return base, build(str(tmp_path_factory.mktemp("reference")), "llama", seed=7, base=base, scale=0.5)


def fresh(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def trl_dpo_loss(models, tmp_path, **config) -> tuple[float, dict, dict]:
    """TRL's DPO loss on PAIRS, its collated batch and its logged metrics."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    policy, ref = models
    tok = AutoTokenizer.from_pretrained(policy)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), report_to="none", use_cpu=True, max_length=64, bf16=False,
                     per_device_train_batch_size=len(PAIRS), **config)  # bf16: TRL would autocast the reference
    data = Dataset.from_list([conversational(p, c, r) for p, c, r in PAIRS])
    trainer = DPOTrainer(model=fresh(policy), ref_model=fresh(ref), args=args, train_dataset=data, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    with torch.no_grad():
        value = trainer.compute_loss(trainer.model, dict(batch)).item()
    return value, batch, {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # the model is in eval mode


def our_pair_loss(objective, config, models, reference: bool = True):
    from transformers import AutoTokenizer

    policy, ref = models
    tok = AutoTokenizer.from_pretrained(policy)
    batch = objective.build_batch(our_rows(), tok, resolve("tokenizer", tok), config)
    with torch.no_grad():
        if reference:
            batch = objective.annotate(fresh(ref), batch, config)
        value, metrics = objective.loss(fresh(policy), batch, config)
    return value.item(), batch, metrics


@pytest.mark.integration
def test_dpo_equals_trl(models, tmp_path):
    """Same token ids and completion masks as TRL's collator; same loss and rewards (sigmoid, beta 0.5)."""
    expected, theirs, logged = trl_dpo_loss(models, tmp_path, beta=0.5, loss_type=["sigmoid"])
    value, ours, metrics = our_pair_loss(dpo, dpo.Config(beta=0.5), models)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["labels"] != -100, theirs["completion_mask"].bool())
    assert value == pytest.approx(expected, rel=1e-5)
    assert abs(value - math.log(2)) > 0.01  # the reference differs from the policy: not the trivial ln 2
    for ours_key, trl_key in [("rewards/chosen", "rewards/chosen"), ("rewards/rejected", "rewards/rejected"),
                              ("margin", "rewards/margins"), ("accuracy", "rewards/accuracies")]:
        assert metrics[ours_key] == pytest.approx(logged[trl_key], rel=1e-4, abs=1e-6), ours_key


@pytest.mark.integration
def test_conservative_dpo_equals_trl(models, tmp_path):
    """TRL 1.16's `sigmoid` has no label smoothing; cDPO's -(1-e) log s(d) - e log s(-d) is, per pair,
    2(1-e) x TRL's `sigmoid` - (1-2e) x TRL's `robust` ((-(1-e) log s(d) + e log s(-d)) / (1-2e)),
    which TRL computes with loss_type [robust, sigmoid] and those loss_weights."""
    eps = 0.2
    expected, _, _ = trl_dpo_loss(models, tmp_path, beta=0.5, label_smoothing=eps, loss_type=["robust", "sigmoid"],
                                  loss_weights=[-(1 - 2 * eps), 2 * (1 - eps)])
    value, _, _ = our_pair_loss(dpo, dpo.Config(beta=0.5, label_smoothing=eps), models)
    plain, _, _ = our_pair_loss(dpo, dpo.Config(beta=0.5), models)
    assert value == pytest.approx(expected, rel=1e-5)
    assert abs(value - plain) > 1e-3  # the smoothing changes the value


@pytest.mark.integration
def test_ipo_equals_trl_per_token_average(models, tmp_path):
    """TRL's IPO divides each log-ratio by the completion's token count; so do we."""
    expected, _, _ = trl_dpo_loss(models, tmp_path, beta=0.5, loss_type=["ipo"])
    value, _, _ = our_pair_loss(ipo, ipo.Config(beta=0.5), models)
    assert value == pytest.approx(expected, rel=1e-5)


def cpo_like(cls, **fields):
    """A stand-in `self` for TRL's CPO/ORPO trainer methods: the fields they read, no trainer built."""
    self = SimpleNamespace(is_encoder_decoder=False, padding_value=0, pad_token_id=0, aux_loss_enabled=False,
                           label_smoothing=0.0,
                           accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
                           concatenated_inputs=cls.concatenated_inputs, get_batch_logps=cls.get_batch_logps, **fields)
    for name in ("concatenated_forward", "cpo_loss", "odds_ratio_loss"):
        if hasattr(cls, name):
            setattr(self, name, getattr(cls, name).__get__(self))
    return self


def trl_pair_batch(batch: dict) -> dict:
    """Our (2B, T) batch as the chosen_/rejected_ tensors TRL's CPO and ORPO trainers read."""
    out = {}
    for side, half in zip(("chosen", "rejected"), range(2)):
        for ours, theirs in (("input_ids", "input_ids"), ("attention_mask", "attention_mask"), ("labels", "labels")):
            out[f"{side}_{theirs}"] = pairs.halves(batch[ours])[half]
    return out


def test_simpo_equals_trl_cpo(models):
    """TRL's CPO with loss_type simpo and cpo_alpha 0, on our batch: same loss and rewards."""
    from trl.experimental.cpo import CPOTrainer

    value, batch, metrics = our_pair_loss(simpo, simpo.Config(beta=2.0, gamma=0.7), models, reference=False)
    trl = cpo_like(CPOTrainer, beta=2.0, simpo_gamma=0.7, loss_type="simpo", cpo_alpha=0.0, alpha=0.0)
    with torch.no_grad():
        expected, logged = CPOTrainer.get_batch_loss_metrics(trl, fresh(models[0]), trl_pair_batch(batch))
    assert value == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["margin"] == pytest.approx(logged["rewards/margins"], rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(logged["rewards/accuracies"])


def test_orpo_equals_trl(models):
    """TRL's ORPO (NLL over the whole chosen sequence, our `nll_on: all`) on our batch: same loss."""
    from trl.experimental.orpo import ORPOTrainer

    value, batch, metrics = our_pair_loss(orpo, orpo.Config(lam=0.3, nll_on="all"), models, reference=False)
    trl = cpo_like(ORPOTrainer, beta=0.3)
    with torch.no_grad():
        expected, logged = ORPOTrainer.get_batch_loss_metrics(trl, fresh(models[0]), trl_pair_batch(batch))
    assert value == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["nll"] == pytest.approx(logged["nll_loss"], rel=1e-5)
    assert metrics["log_odds_ratio"] == pytest.approx(logged["log_odds_chosen"], rel=1e-4)
    completion, _, _ = our_pair_loss(orpo, orpo.Config(lam=0.3), models, reference=False)
    assert completion != pytest.approx(value, rel=1e-3)  # the default trains on the completion only


KTO_ROWS = [("write water two", "water water", True), ("write water two", "water", False),
            ("what is the first word of day and people", "the first word is day", True),
            ("now write number", "number number time", False)]


@pytest.mark.integration
def test_kto_equals_trl(models, tmp_path):
    """TRL's KTOTrainer (its KL pairs: each prompt with the previous row's completion) on the same rows."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    ref, policy = models  # this way round, the mismatched pairs' mean log-ratio is positive (z > 0)
    tok = AutoTokenizer.from_pretrained(policy)
    data = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}],
             "label": y} for p, c, y in KTO_ROWS]
    args = KTOConfig(output_dir=str(tmp_path / "kto"), report_to="none", use_cpu=True, max_length=64, beta=0.5,
                     bf16=False, desirable_weight=1.5, undesirable_weight=0.8,
                     per_device_train_batch_size=len(KTO_ROWS))
    trainer = KTOTrainer(model=fresh(policy), ref_model=fresh(ref), args=args, train_dataset=Dataset.from_list(data),
                         processing_class=tok)
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(KTO_ROWS))])
    with torch.no_grad():
        expected = trainer.compute_loss(trainer.model, dict(theirs)).item()
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}

    config = kto.Config(beta=0.5, desirable_weight=1.5, undesirable_weight=0.8)
    rows = [Row({"prompt": p, "completion": c, "label": y}, "x.jsonl", i) for i, (p, c, y) in enumerate(KTO_ROWS, 1)]
    batch = kto.build_batch(rows, tok, resolve("tokenizer", tok), config)
    with torch.no_grad():
        value, metrics = kto.loss(fresh(policy), kto.annotate(fresh(ref), batch, config), config)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["kl"] == pytest.approx(logged["kl"], rel=1e-4, abs=1e-6)
    assert metrics["kl"] > 0  # the reference point is not clamped away here
    assert metrics["rewards/chosen"] == pytest.approx(logged["rewards/chosen"], rel=1e-4)
    assert metrics["rewards/rejected"] == pytest.approx(logged["rewards/rejected"], rel=1e-4)


def test_reward_loss_equals_trl(models):
    """TRL's RewardTrainer.compute_loss on our batch and a scalar-head model: the same Bradley-Terry
    loss, with and without margins, and the same pairwise accuracy."""
    from collections import defaultdict

    from transformers import AutoTokenizer
    from trl import RewardTrainer

    policy, _ = models
    tok = AutoTokenizer.from_pretrained(policy)
    torch.manual_seed(0)  # the new head's initial weights
    model = reward.load_model(policy, torch.float32).eval()
    rows = [Row({**r.fields, "margin": m}, r.file, r.line) for r, m in zip(our_rows(), (0.5, 0.0, 2.0))]
    batch = reward.build_batch(rows, tok, resolve("tokenizer", tok))
    trl = SimpleNamespace(model=model, args=SimpleNamespace(center_rewards_coefficient=None), _tp_size=1,
                          _total_train_tokens=0, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                          accelerator=SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        plain = RewardTrainer.compute_loss(trl, model, dict(inputs)).item()
        margined = RewardTrainer.compute_loss(trl, model, {**inputs, "margin": batch["margin"]}).item()
        value, metrics = reward.loss(model, batch, reward.Config())
        unmargined, _ = reward.loss(model, {**batch, "margin": torch.zeros(3)}, reward.Config())
    assert value.item() == pytest.approx(margined, rel=1e-5)
    assert unmargined.item() == pytest.approx(plain, rel=1e-5)
    assert abs(margined - plain) > 1e-3
    assert metrics["accuracy"] == pytest.approx(trl._metrics["eval"]["accuracy"][-1])  # eval mode
    assert metrics["margin"] == pytest.approx(trl._metrics["eval"]["margin"][-1], rel=1e-5)

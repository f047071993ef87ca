"""GRPO: advantages and the clipped, KL-penalised token loss worked by hand; the loss equal to TRL
1.16's GRPOTrainer on the same inputs for every aggregation; accumulation weights that reproduce the
whole-batch aggregate; the loop end to end on the tiny base (reward rises on a toy reward, a failing
reward stops with the prompt named and the last checkpoint intact, resume); and, slow, GRPO raising
the held-out `add` reward of the small world's base."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from surgery.errors import InputError, SpecError
from trainers.loops import train
from trainers.objectives import grpo
from trainers.spec import load_run, parse_run


def test_group_advantages_by_hand():
    """Two groups of G = 3. Group 1: rewards [1, 0, 0], mean 1/3, std (n-1) = sqrt((4/9 + 1/9 + 1/9)/2)
    = sqrt(1/3) = 0.57735, so A = [2/3, -1/3, -1/3] / (0.57735 + 1e-4). Group 2: [2, 2, 2], std 0:
    A = 0 (not NaN). `none` only centres; `batch` divides by the std of all six rewards."""
    r = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    s = math.sqrt(1 / 3) + 1e-4
    assert grpo.group_advantages(r, 3).tolist() == pytest.approx([2 / 3 / s, -1 / 3 / s, -1 / 3 / s, 0, 0, 0], abs=1e-6)
    assert grpo.group_advantages(r, 3, "none").tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0], abs=1e-6)
    batch_std = float(r.std())  # mean 7/6: Σ (r - 7/6)^2 = 1/36 + 3 * 49/36 + ... computed by torch, checked below
    assert batch_std == pytest.approx(math.sqrt(sum((x - 7 / 6) ** 2 for x in r.tolist()) / 5))
    assert grpo.group_advantages(r, 3, "batch").tolist() == pytest.approx(
        [2 / 3 / (batch_std + 1e-4), -1 / 3 / (batch_std + 1e-4), -1 / 3 / (batch_std + 1e-4), 0, 0, 0], abs=1e-6)


def test_group_advantages_equal_trl_statistics():
    """TRL computes the group std with its `nanstd` (Bessel-corrected) and divides by std + 1e-4."""
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    r = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.3, 0.7, 0.9, 0.1, 5.0, 5.0, 5.0, 5.0])
    grouped = r.view(-1, 4)
    theirs = (grouped - grouped.mean(1, keepdim=True)) / (nanstd(grouped, dim=1).unsqueeze(1) + 1e-4)
    torch.testing.assert_close(grpo.group_advantages(r, 4), theirs.view(-1))
    centred = r - grouped.mean(1).repeat_interleave(4)
    torch.testing.assert_close(grpo.group_advantages(r, 4, "batch"), centred / (nanstd(r) + 1e-4))


def test_token_losses_by_hand():
    """epsilon 0.2, epsilon_high 0.3, beta 0.5. Token ratios exp(logp - old):
    A = +1, rho = 1.5: min(1.5, clip 1.3) = 1.3 -> loss -1.3 (clipped high);
    A = +1, rho = 0.5: min(0.5, 0.8) = 0.5 -> loss -0.5 (not clipped: lowering a good token is not bounded);
    A = -1, rho = 0.5: min(-0.5, -0.8) = -0.8 -> loss 0.8 (clipped low);
    A = -1, rho = 1.5: min(-1.5, -1.3) = -1.5 -> loss 1.5.
    k3 with log pi_ref - log pi = d: e^d - d - 1; d = ln 2 gives 2 - ln 2 - 1 = 0.30685, times beta,
    and (TRL's default correction) times rho: 1.5, 0.5, 0.5, 1.5 by token."""
    logp = torch.log(torch.tensor([[1.5, 0.5], [0.5, 1.5]]))
    old = torch.zeros(2, 2)
    ref = logp + math.log(2.0)
    loss, terms = grpo.token_losses(logp, old, ref, torch.tensor([1.0, -1.0]), 0.2, 0.3, 0.5, kl_ratio=False)
    k3 = 0.5 * (2 - math.log(2) - 1)
    assert loss.flatten().tolist() == pytest.approx([-1.3 + k3, -0.5 + k3, 0.8 + k3, 1.5 + k3], abs=1e-6)
    corrected, _ = grpo.token_losses(logp, old, ref, torch.tensor([1.0, -1.0]), 0.2, 0.3, 0.5)
    assert corrected.flatten().tolist() == pytest.approx(
        [-1.3 + 1.5 * k3, -0.5 + 0.5 * k3, 0.8 + 0.5 * k3, 1.5 + 1.5 * k3], abs=1e-6)
    assert terms["clipped"].tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_aggregations_by_hand():
    """Token losses [[1, 2, 3], [4, pad, pad]]: dapo/bnpo (1+2+3+4)/4 = 2.5; grpo mean(2, 4) = 3;
    dr_grpo 10 / (2 rows x 5 max tokens) = 1."""
    tl = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    got = {t: float(grpo.aggregate(tl, mask, t, 5)) for t in ("dapo", "bnpo", "grpo", "dr_grpo")}
    assert got == pytest.approx({"dapo": 2.5, "bnpo": 2.5, "grpo": 3.0, "dr_grpo": 1.0})


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_accumulation_weights_give_the_whole_batch(loss_type):
    """Micro-batch losses weighted by `items` (what the loop does) equal the aggregate over the whole
    batch (dapo, grpo, dr_grpo) or the mean of micro-batch aggregates (bnpo), as in TRL."""
    g = torch.Generator().manual_seed(0)
    tl = torch.rand(4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    parts = [(grpo.aggregate(tl[i:i + 2], mask[i:i + 2], loss_type, 5), float(grpo.items(mask[i:i + 2], loss_type)))
             for i in (0, 2)]
    weighted = sum(v * n for v, n in parts) / sum(n for _, n in parts)
    whole = (sum(v for v, _ in parts) / 2 if loss_type == "bnpo" else grpo.aggregate(tl, mask, loss_type, 5))
    assert float(weighted) == pytest.approx(float(whole), abs=1e-6)
    if loss_type == "dapo":  # micro-batches of 7 and 3 tokens: not the plain mean of their means
        assert float(weighted) != pytest.approx(float(sum(v for v, _ in parts) / 2), abs=1e-4)


@pytest.fixture(scope="module")
def trl_trainer(base, tmp_path_factory):
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    model, tok = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), report_to="none", use_cpu=True, num_generations=2,
                      per_device_train_batch_size=4, beta=0.1, epsilon=0.2, epsilon_high=0.3, max_completion_length=5,
                      temperature=0.7, bf16=False)  # float32 throughout, as ours
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_list([{"prompt": "the a"}] * 4), processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train; one micro-batch per step here
    model.train()
    return trainer


@pytest.mark.parametrize("loss_type,beta,kl_ratio", [("dapo", 0.1, True), ("dapo", 0.1, False), ("dapo", 0.0, True),
                                                     ("grpo", 0.1, True), ("bnpo", 0.1, True), ("dr_grpo", 0.1, True)])
@pytest.mark.integration
def test_loss_equals_trl(trl_trainer, loss_type, beta, kl_ratio):
    """The same model, tokens, advantages, old and reference log-probs: our loss (through
    generation.pack's right-padded layout) and TRL's `_compute_loss` agree to 1e-5, and so do
    their gradients."""
    trainer, model = trl_trainer, trl_trainer.model
    trainer.loss_type, trainer.beta, trainer.args.use_bias_correction_kl = loss_type, beta, kl_ratio
    g = torch.Generator().manual_seed(1)
    B, P, C = 4, 3, 5
    prompt, completion = torch.randint(4, 100, (B, P), generator=g), torch.randint(4, 100, (B, C), generator=g)
    cmask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    old, ref = -4 + 0.3 * torch.randn(B, C, generator=g), -4 + 0.3 * torch.randn(B, C, generator=g)
    inputs = dict(prompt_ids=prompt, prompt_mask=torch.ones(B, P, dtype=torch.long), completion_ids=completion,
                  completion_mask=cmask, advantages=adv, old_per_token_logps=old, ref_per_token_logps=ref,
                  num_items_in_batch=cmask.sum())
    model.zero_grad()
    theirs = trainer._compute_loss(model, inputs)
    theirs.backward()
    theirs = theirs.detach()
    their_grads = [p.grad.clone() for p in model.parameters()]

    def spread(x):  # (B, C) completion values -> our (B, P + C - 1) next-token layout
        return torch.cat([torch.zeros(B, P - 1), x], dim=1)

    ones = torch.ones(B, P, dtype=torch.long)
    batch = {"input_ids": torch.cat([prompt, completion], 1), "attention_mask": torch.cat([ones, cmask], 1),
             "completion_mask": torch.cat([torch.zeros(B, P, dtype=torch.long), cmask], 1), "advantages": adv,
             "old_logps": spread(old), "ref_logps": spread(ref)}
    config = grpo.Config(reward_functions=["world.add"], group_size=2, max_new_tokens=5, temperature=0.7, epsilon=0.2,
                         epsilon_high=0.3, beta=beta, loss_type=loss_type, kl_ratio_correction=kl_ratio)
    model.zero_grad()
    ours, metrics = grpo.loss(model, batch, config)
    ours.backward()
    ours = ours.detach()
    assert float(ours) == pytest.approx(float(theirs), abs=1e-5)
    assert abs(float(ours)) > 1e-3  # a non-trivial value
    for mine, their in zip((p.grad for p in model.parameters()), their_grads):
        torch.testing.assert_close(mine, their, atol=1e-5, rtol=1e-4)
    assert 0 < metrics["clip_ratio"] < 1


# --- the loop on the tiny base -------------------------------------------------------------------

def early_words(prompt: str, completion: str, row: dict) -> float:
    """A toy reward the tiny base can learn within a few steps: the share of the completion's words
    among the first 40 of its vocabulary (about a third of what the untrained base says)."""
    from surgery.demo.tiny import WORDS

    words = completion.split()
    return sum(w in WORDS[:40] for w in words) / max(len(words), 1)


def fails_on_second_call(prompt: str, completion: str, row: dict) -> float:
    fails_on_second_call.calls = getattr(fails_on_second_call, "calls", 0) + 1
    if fails_on_second_call.calls > 16:  # the first step's rollout (4 prompts x 4) is scored, the second's fails
        raise ValueError("boom")
    return 0.0


def grpo_spec(**changes) -> dict:
    spec = {"base": "models/base",
            "objective": {"name": "grpo", "reward_functions": ["tests.trainers.test_grpo:early_words"], "group_size": 4,
                          "max_new_tokens": 6, "beta": 0.05},
            "data": {"train": "runs/data/instruct.jsonl", "eval": "runs/data/eval.jsonl"},
            "chat_template": "chatml", "optim": {"lr": 1e-2}, "schedule": {"total_steps": 10, "cosine": False},
            "batch": {"size": 4, "grad_accum": 2, "max_length": 64}, "eval_every": 4, "save_every": 4,
            "out": "out/grpo"}
    spec.update(changes)
    return spec


def logged(out: str) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_grpo_raises_a_toy_reward_and_resumes(workdir):
    final = train(parse_run(grpo_spec(), "grpo.yaml"), quiet=True)
    log = logged("out/grpo")
    rewards = [r["reward"] for r in log if "reward" in r]
    assert len(rewards) == 10 and all("kl" in r and "clip_ratio" in r for r in log if "reward" in r)
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.15, rewards
    assert [r["step"] for r in log if "eval_reward" in r] == [0, 4, 8, 10]
    assert os.path.isfile(os.path.join(final, "model.safetensors"))
    # a resumed run from checkpoint-4 reaches the same weights as the straight run
    again = train(parse_run(grpo_spec(out="out/grpo2"), "grpo.yaml"), resume="out/grpo/checkpoint-4", quiet=True)
    from safetensors.torch import load_file

    a, b = load_file(os.path.join(final, "model.safetensors")), load_file(os.path.join(again, "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_several_steps_per_rollout_clip(workdir):
    """iterations: 2 steps twice on each batch of rollouts: the first step is on-policy (ratio 1, no
    clipping); by the second the policy has moved (lr 0.05), so some ratios leave [0.8, 1.2]."""
    spec = grpo_spec(optim={"lr": 5e-2}, eval_every=None, save_every=2)
    spec["objective"] = {**spec["objective"], "iterations": 2}
    spec["schedule"] = {"total_steps": 4, "cosine": False}
    train(parse_run(spec, "grpo.yaml"), quiet=True)
    clipped = [r["clip_ratio"] for r in logged("out/grpo") if "clip_ratio" in r]
    assert clipped[0] == 0 and clipped[2] == 0 and clipped[1] > 0 and clipped[3] > 0, clipped
    rewards = [r["reward"] for r in logged("out/grpo") if "reward" in r]
    assert rewards[0] == rewards[1] and rewards[2] == rewards[3]  # one rollout per two steps


def test_failing_reward_names_the_prompt_and_keeps_the_checkpoint(workdir):
    spec = grpo_spec(save_every=1, eval_every=None, data={"train": "runs/data/instruct.jsonl"})
    fails_on_second_call.calls = 0
    spec["objective"] = {**spec["objective"], "reward_functions": ["tests.trainers.test_grpo:fails_on_second_call"],
                         "beta": 0.0}
    with pytest.raises(InputError, match=r"raised ValueError: boom on prompt '.+' \(completion"):
        train(parse_run(spec, "grpo.yaml"), quiet=True)
    assert os.path.isfile("out/grpo/checkpoint-1/model.safetensors")
    assert not os.path.exists("out/grpo/checkpoint-2")


def test_spec_errors_are_located(workdir):
    spec = grpo_spec()
    spec["objective"] = {"name": "grpo", "reward_functions": ["world.nope"]}
    with pytest.raises(SpecError, match=r"grpo.yaml: objective.*world.nope"):
        parse_run(spec, "grpo.yaml")
    spec["objective"] = {"name": "grpo", "reward_functions": ["world.add"], "group_size": 1}
    with pytest.raises(SpecError, match=r"objective.group_size"):
        parse_run(spec, "grpo.yaml")
    spec["objective"] = {"name": "grpo"}
    with pytest.raises(SpecError, match=r"reward_functions"):
        parse_run(spec, "grpo.yaml")
    spec = grpo_spec(save_every=3)
    spec["objective"] = {**spec["objective"], "iterations": 2}
    with pytest.raises(SpecError, match="save_every"):
        train(parse_run(spec, "grpo.yaml"), quiet=True)


def test_example_spec_runs(workdir):
    """runs/grpo-add.yaml validates and runs two steps (on the tiny base its reward stays near 0)."""
    run = load_run("runs/grpo-add.yaml", ("base=models/base", "schedule.total_steps=2", "batch.size=2",
                                          "objective.group_size=2", "eval_every=2", "save_every=null"))
    assert run.objective is grpo.OBJECTIVE and run.objective_config.reward_functions == ["world.add"]
    final = train(run, quiet=True)
    assert os.path.isdir(final) and [r["step"] for r in logged(run.spec.out) if "eval_reward" in r] == [0, 2]


@pytest.mark.slow
def test_grpo_raises_held_out_add_reward(workdir):
    """runs/grpo-add.yaml from the small world's base with its weights damaged (half its sums wrong):
    the mean reward (exact sums) of greedy answers to the 48 held-out prompts of
    runs/data/add-eval.jsonl rises over the starting model's (step 0 of the log)."""
    from tests.trainers.small_world import damaged, trained_base

    start = damaged(trained_base(), str(workdir / "start"))
    run = load_run("runs/grpo-add.yaml", (f"base={start}",))
    train(run, quiet=True)
    log = logged(run.spec.out)
    evals = [(r["step"], round(r["eval_reward"], 3)) for r in log if "eval_reward" in r]
    rewards = [r["reward"] for r in log if "reward" in r]
    print(f"grpo held-out add reward by step: {evals}; train reward, first and last 10 steps: "
          f"{sum(rewards[:10]) / 10:.3f} -> {sum(rewards[-10:]) / 10:.3f}")
    assert evals[0][0] == 0 and evals[-1][1] > evals[0][1] + 0.1

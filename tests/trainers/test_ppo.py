"""PPO: GAE, the KL-shaped rewards, whitening and the clipped losses on numbers worked out by hand;
the clipped surrogate and the reward model's read-out against TRL's own computations; a short run on
a tiny model whose held-out reward rises; checkpoints, resume, and refused inputs."""

from __future__ import annotations

import json
import math as pymath
import os
import re
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from surgery.demo.tiny import build_tokenizer, tiny_config
from surgery.errors import InputError, NumericsError, SpecError
from trainers import rewards as scorers
from trainers.loops import ppo_rollouts as ppo
from trainers.loops import train
from trainers.objectives import ppo as math
from trainers.spec import load_run, parse_run

REWARD_MODULE = '''
def w_words(prompt, completion, row):
    """The share of a completion's words that begin with 'w' (what the test's PPO runs learn)."""
    return sum(w.startswith("w") for w in completion.split()) / max(len(completion.split()), 1)


def nan(prompt, completion, row):
    return float("nan")
'''


def build_reward_model(folder: str, seed: int = 0, **overrides) -> str:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_config("llama", num_labels=1, pad_token_id=3, **overrides)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    build_tokenizer(config.vocab_size).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def reward_model(base) -> str:
    """models/reward beside the tiny base (runs/ppo.yaml names it): a random one-label Llama."""
    folder = os.path.join(os.path.dirname(base), "reward")
    return folder if os.path.isdir(folder) else build_reward_model(folder)


@pytest.fixture
def rewards(tmp_path, monkeypatch) -> str:
    (tmp_path / "ppo_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ppo_rewards"


def ppo_spec(**changes) -> dict:
    spec = {
        "base": "models/base",
        "objective": {"name": "ppo", "reward_function": "ppo_rewards:w_words", "max_new_tokens": 4, "epochs": 2,
                      "minibatches": 2, "kl_coef": 0.02},
        "data": {"train": "runs/data/instruct.jsonl", "eval": "runs/data/eval.jsonl"},
        "chat_template": "chatml",
        "optim": {"lr": 1e-2},
        "schedule": {"total_steps": 6, "cosine": False},
        "batch": {"size": 8, "max_length": 64},
        "out": "out/ppo",
    }
    for key, value in changes.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and key == "objective" else value
    return spec


def log_rows(out: str) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


# --- the math, by hand ------------------------------------------------------------------------------

def test_gae_by_hand():
    """Row 0: gamma 1, lambda 0.5, rewards (0, 0, 1), values all 0.5.
        t=2: delta = 1 + 0 - 0.5 = 0.5, A = 0.5
        t=1: delta = 0 + 0.5 - 0.5 = 0, A = 0 + 0.5 * 0.5 = 0.25
        t=0: delta = 0, A = 0.5 * 0.25 = 0.125;  returns = A + V = (0.625, 0.75, 1.0)
    Row 1 (gamma 0.9, lambda 1), its last token padding (reward 5, value 9 ignored):
        t=1: delta = 2 + 0.9 * 0 - 0.5 = 1.5, A = 1.5
        t=0: delta = 0 + 0.9 * 0.5 - 1 = -0.55, A = -0.55 + 0.9 * 1.5 = 0.8;  returns (1.8, 2.0, 0)
    """
    a, r = math.gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]]), torch.ones(1, 3), 1.0, 0.5)
    assert (torch.allclose(a, torch.tensor([[0.125, 0.25, 0.5]]))
            and torch.allclose(r, torch.tensor([[0.625, 0.75, 1.0]])))
    a, r = math.gae(torch.tensor([[0.0, 2.0, 5.0]]), torch.tensor([[1.0, 0.5, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]]),
                    0.9, 1.0)
    assert torch.allclose(a, torch.tensor([[0.8, 1.5, 0.0]])) and torch.allclose(r, torch.tensor([[1.8, 2.0, 0.0]]))


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 0]],
                        dtype=torch.float32)  # row 2: a prompt before
    a, r = math.gae(rewards, values, mask, 1.0, 1.0)
    to_go = (rewards * mask).flip(1).cumsum(1).flip(1)
    assert torch.allclose(a, (to_go - values) * mask, atol=1e-6)
    assert torch.allclose(r, to_go * mask, atol=1e-6)


def test_token_rewards_put_the_score_on_the_last_real_token():
    """kl_coef 0.5: row 0 gets -0.5 * (0.1, 0.2, 0.3) and +1 on token 2: (-0.05, -0.1, 0.85);
    row 1 (last token padding) gets -0.5 * (0.4, -0.2) and -2 on token 1: (-0.2, -1.9, 0)."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, -0.2, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    got = math.token_rewards(torch.tensor([1.0, -2.0]), kl, mask, 0.5)
    assert torch.allclose(got, torch.tensor([[-0.05, -0.1, 0.85], [-0.2, -1.9, 0.0]]))
    # completion tokens after prompt tokens (mask 0 first): the score still lands on the last completion token
    got = math.token_rewards(torch.tensor([3.0]), torch.zeros(1, 4), torch.tensor([[0.0, 1.0, 1.0, 0.0]]), 0.5)
    assert torch.equal(got, torch.tensor([[0.0, 0.0, 3.0, 0.0]]))


def test_kl_estimators_by_hand():
    """pi = 0.5, pi_ref = 0.25: k1 = log 2 = 0.6931; k3 with r = pi_ref / pi = 0.5: (r - 1) - log r = 0.1931.
    Both are 0 where the two agree."""
    logp, ref = torch.log(torch.tensor([[0.5, 0.3]])), torch.log(torch.tensor([[0.25, 0.3]]))
    assert torch.allclose(math.token_kl(logp, ref, "k1"), torch.tensor([[pymath.log(2), 0.0]]))
    assert torch.allclose(math.token_kl(logp, ref, "k3"), torch.tensor([[-0.5 + pymath.log(2), 0.0]]), atol=1e-7)


def test_whiten_by_hand():
    """Real entries 1, 2, 3, 5: mean 2.75, unbiased variance (1.75² + 0.75² + 0.25² + 2.25²) / 3 = 8.75 / 3,
    std 1.707825: (-1.02470, -0.43916, 0.14639, 1.31747); padding stays 0."""
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 8.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    want = torch.tensor([[-1.02470, -0.43916, 0.14639], [1.31747, 0.0, 0.0]])
    assert torch.allclose(math.whiten(x, mask), want, atol=1e-5)


def test_clipped_policy_loss_by_hand():
    """clip 0.2; per token (ratio, advantage) -> max(-A rho, -A clip(rho)):
        (1.5, +1): max(-1.5, -1.2) = -1.2   clipped: no gradient
        (0.5, +1): max(-0.5, -0.8) = -0.5   unclipped: d/dlogp = -A rho / 4 = -0.125
        (0.5, -2): max(1.0, 1.6)   = 1.6    clipped: no gradient
        (1.1, -1): max(1.1, 1.1)   = 1.1    inside the range: d/dlogp = 1.1 / 4 = 0.275
    mean = (-1.2 - 0.5 + 1.6 + 1.1) / 4 = 0.25; the clip binds on 2 of 4 tokens."""
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.1]])).requires_grad_(True)
    loss, metrics = math.policy_loss(logps, old, torch.tensor([[1.0, 1.0, -2.0, -1.0]]), torch.ones(1, 4), 0.2)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.25) and metrics["clipfrac"] == 0.5
    assert torch.allclose(logps.grad, torch.tensor([[0.0, -0.125, 0.0, 0.275]]))


def test_clipped_value_loss_by_hand():
    """value_clip 0.2; per token (new V, old V, return):
        (0.5, 0, 1): clipped V 0.2: max((0.5-1)², (0.2-1)²) = max(0.25, 0.64) = 0.64 (clip binds)
        (0.1, 0, -1): inside the range: 1.1² = 1.21
        (2.0, 1, 1): clipped V 1.2: max(1.0, 0.04) = 1.0
    loss = 0.5 * (0.64 + 1.21 + 1.0) / 3 = 0.475; the clip binds on 1 of 3."""
    loss, metrics = math.value_loss(torch.tensor([[0.5, 0.1, 2.0]]), torch.tensor([[0.0, 0.0, 1.0]]),
                                    torch.tensor([[1.0, -1.0, 1.0]]), torch.ones(1, 3), 0.2)
    assert float(loss) == pytest.approx(0.475) and metrics["vf_clipfrac"] == pytest.approx(1 / 3)


def test_losses_ignore_padding():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    a, _ = math.policy_loss(torch.tensor([[0.1, -0.1, 50.0]]), torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 9.0]]),
                            mask, 0.2)
    b, _ = math.policy_loss(torch.tensor([[0.1, -0.1]]), torch.zeros(1, 2), torch.tensor([[1.0, 2.0]]),
                            torch.ones(1, 2), 0.2)
    assert float(a) == pytest.approx(float(b))


# --- against TRL ------------------------------------------------------------------------------------
# TRL 1.16 no longer ships a PPO trainer (PPOTrainer left the library; trl.experimental has none).
# Two pieces of the same computation remain: GRPO's per-token clipped surrogate, which takes (B, T)
# advantages, with its k3 KL term; and `trl.experimental.utils.get_reward`, the reward read-out of the
# former PPO trainer. GAE, whitening and the value loss have no TRL counterpart left: hand numbers above.

def trl_grpo_loss(logps, old_logps, ref_logps, advantages, mask, clip, beta):
    from trl.trainer.grpo_trainer import GRPOTrainer

    identity = SimpleNamespace(reduce=lambda x, reduction=None: x, gather=lambda x: x, gather_for_metrics=lambda x: x)
    fake = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        loss_type="bnpo", epsilon_low=clip, epsilon_high=clip,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False),
        use_vllm=False, model=SimpleNamespace(training=False), _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)), accelerator=identity,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None))
    b, t = logps.shape
    inputs = {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old_logps, "ref_per_token_logps": ref_logps}
    return GRPOTrainer._compute_loss(fake, None, inputs)


def test_clipped_surrogate_equals_trl():
    torch.manual_seed(1)
    logps, old = -torch.rand(3, 6) * 2, -torch.rand(3, 6) * 2
    advantages, mask = torch.randn(3, 6), (torch.rand(3, 6) > 0.3).float()
    ours, _ = math.policy_loss(logps, old, advantages, mask, 0.2)
    theirs = trl_grpo_loss(logps, old, logps, advantages, mask, 0.2, beta=0.0)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_k3_kl_equals_trl():
    """With zero advantages GRPO's loss is beta times the masked mean of its k3 KL term."""
    torch.manual_seed(2)
    logps, ref = -torch.rand(2, 5) * 3, -torch.rand(2, 5) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    theirs = trl_grpo_loss(logps, logps, ref, torch.zeros(2, 5), mask, 0.2, beta=1.0)
    assert float(math.masked_mean(math.token_kl(logps, ref, "k3"), mask)) == pytest.approx(float(theirs), rel=1e-6)


def test_reward_model_score_equals_trl_get_reward(tmp_path):
    from trl.experimental.utils import get_reward

    folder = build_reward_model(str(tmp_path / "rm"), seed=3)
    reward = scorers.load_reward_model(folder, build_tokenizer(128), "test")
    ids = torch.tensor([[5, 6, 7, 8, 9, 2], [5, 6, 10, 2, 3, 3], [5, 6, 11, 12, 13, 3]])  # prompt = 2 tokens, pad 3
    attention = (ids != 3).long()
    _, theirs, _ = get_reward(reward.model, ids, 3, 2)
    assert torch.allclose(scorers.score_sequences(reward, ids, attention), theirs, atol=1e-6)


# --- runs -------------------------------------------------------------------------------------------

def test_ppo_raises_held_out_reward(workdir, rewards):
    """A tiny random Llama learns to say words beginning with 'w': greedy completions of held-out prompts score
    higher."""
    final = train(parse_run(ppo_spec(), "ppo.yaml"), quiet=True)
    rows = log_rows("out/ppo")
    evals = [r["eval_reward"] for r in rows if "eval_reward" in r]
    steps = [r for r in rows if "pg_loss" in r]
    assert len(steps) == 6 and all(pymath.isfinite(r["loss"]) and r["kl"] == r["kl"] for r in steps)
    assert evals[-1] > evals[0] + 0.3, evals
    lineage = json.loads(open(os.path.join(final, "lineage.json")).read())
    assert lineage["objective"]["name"] == "ppo" and lineage["steps"] == 6
    from transformers import AutoModelForCausalLM

    _, info = AutoModelForCausalLM.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_resume_continues_exactly(workdir, rewards):
    spec = ppo_spec(schedule={"total_steps": 3, "cosine": False}, save_every=1)
    straight = train(parse_run(spec, "ppo.yaml"), quiet=True)
    half = train(parse_run({**spec, "out": "out/half"}, "ppo.yaml"), stop_after=1, quiet=True)
    assert os.path.isfile(os.path.join(half, "trainer_state", ppo.VALUE_HEAD))
    resumed = train(parse_run({**spec, "out": "out/half"}, "ppo.yaml"), resume=half, quiet=True)
    from safetensors.torch import load_file

    a, b = load_file(os.path.join(straight, "model.safetensors")), load_file(os.path.join(resumed, "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_saves_an_adapter(workdir, rewards):
    spec = ppo_spec(method={"name": "lora", "r": 4}, schedule={"total_steps": 1},
                    data={"train": "runs/data/instruct.jsonl"})
    final = train(parse_run(spec, "ppo.yaml"), quiet=True)
    assert (os.path.isfile(os.path.join(final, "adapter_config.json"))
            and os.path.isfile(os.path.join(final, "lineage.json")))


def test_lora_reference_is_the_policy_without_its_adapter(workdir, rewards, monkeypatch):
    """PPO on an adapter loads the base once, as DPO does: the reference is the policy with its adapter
    switched off. At the first rollout the adapter is still zero (LoRA's B), so the KL is exactly 0."""
    from trainers import models

    loads = []
    real = models.load_weights
    monkeypatch.setattr(models, "load_weights", lambda run, path: loads.append(path) or real(run, path))
    spec = ppo_spec(method={"name": "lora", "r": 4}, schedule={"total_steps": 1},
                    data={"train": "runs/data/instruct.jsonl"})
    train(parse_run(spec, "ppo.yaml"), quiet=True)
    assert loads == ["models/base"]
    assert [r["kl"] for r in log_rows("out/ppo") if "pg_loss" in r] == [0.0]


def test_nan_reward_is_refused_with_its_prompt(workdir, rewards):
    spec = ppo_spec(objective={"reward_function": "ppo_rewards:nan"}, schedule={"total_steps": 2}, save_every=1)
    with pytest.raises(InputError, match="reward function 'ppo_rewards:nan' returned nan on prompt"):
        train(parse_run(spec, "ppo.yaml"), quiet=True)


def test_nan_loss_keeps_the_last_good_checkpoint(workdir, rewards, monkeypatch):
    spec = ppo_spec(schedule={"total_steps": 3}, save_every=1)
    real = math.value_loss
    calls = {"n": 0}

    def poisoned(*args):  # a NaN value loss on step 2's first minibatch
        calls["n"] += 1
        loss, metrics = real(*args)
        return (loss * float("nan") if calls["n"] == 5 else loss), metrics

    monkeypatch.setattr(math, "value_loss", poisoned)
    with pytest.raises(NumericsError,
                       match="PPO step 2: the loss is NaN .* last good checkpoint is out/ppo/checkpoint-1"):
        train(parse_run(spec, "ppo.yaml"), quiet=True)
    assert sorted(os.listdir("out/ppo")) == ["checkpoint-1", "log.jsonl"]


def test_reward_model_with_another_tokenizer_is_refused(workdir, tmp_path):
    from transformers import AutoTokenizer

    folder = build_reward_model(str(tmp_path / "other_rm"))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_tokens(["zebra"])
    tok.save_pretrained(folder)
    spec = ppo_spec(objective={"reward_function": None, "reward_model": folder})
    with pytest.raises(InputError, match="its tokenizer differs from the policy's .*train it from the policy's base"):
        train(parse_run(spec, "ppo.yaml"), quiet=True)


def test_reference_of_another_architecture_is_refused(workdir, rewards, gpt2):
    spec = ppo_spec(objective={"reference": gpt2["base"]})
    with pytest.raises(InputError, match="objective.reference .*: a gpt2 .* while the policy is a llama"):
        train(parse_run(spec, "ppo.yaml"), quiet=True)


def test_reference_with_another_vocabulary_is_refused(workdir, rewards, build, tmp_path):
    other = build(str(tmp_path / "bigger"), "llama", vocab_size=160)
    with pytest.raises(InputError, match="with 160 tokens, while the policy is a llama with 128"):
        train(parse_run(ppo_spec(objective={"reference": other}), "ppo.yaml"), quiet=True)


def test_spec_errors_are_located(workdir):
    with pytest.raises(SpecError, match="ppo.yaml: objective.reward_function: give exactly one of reward_model"):
        parse_run(ppo_spec(objective={"reward_function": None}), "ppo.yaml")
    with pytest.raises(InputError, match="objective.reward_function: reward function 'nowhere': give a built-in"):
        train(parse_run(ppo_spec(objective={"reward_function": "nowhere"}), "ppo.yaml"), quiet=True)
    with pytest.raises(SpecError, match="objective.minibatches: batch.size 8 does not split into 3"):
        train(parse_run(ppo_spec(objective={"minibatches": 3}), "ppo.yaml"), quiet=True)


def test_example_spec_runs(workdir, reward_model):
    run = load_run("runs/ppo.yaml", ("schedule.total_steps=2", "save_every=1"))
    final = train(run, quiet=True)
    rows = [r for r in log_rows(run.spec.out) if "pg_loss" in r]
    assert len(rows) == 2 and os.path.isdir(final) and os.path.isdir(os.path.join(run.spec.out, "checkpoint-1"))



def test_surgery_train_runs_ppo_and_prints_errors_plainly(workdir, reward_model, tmp_path):
    from click.testing import CliRunner

    from surgery.cli import main

    done = CliRunner().invoke(main, ["train", "runs/ppo.yaml", "--quiet", "--set", "schedule.total_steps=1"])
    assert done.exit_code == 0 and done.output.strip().endswith("wrote out/ppo/final"), done.output
    from transformers import AutoTokenizer

    other = build_reward_model(str(tmp_path / "rm_other"))
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zebra"])
    tok.save_pretrained(other)
    refused = CliRunner().invoke(main, ["train", "runs/ppo.yaml", "--quiet", "--set", f"objective.reward_model={other}",
                                        "--set", "out=out/other"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "its tokenizer differs from the policy's (116 tokens against 115)" in refused.output

WORLD_BASE = os.environ.get("WORLD_BASE", "/work/main/demo/models/base")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(WORLD_BASE), reason=f"no trained small-world base at {WORLD_BASE}")
def test_ppo_raises_exact_match_of_the_world_base_on_add(tmp_path):
    """PPO with the exact-answer reward `world.add` on the small world's trained base: the mean reward
    (exact match) of greedy answers to the 48 held-out `add` prompts rises over the start."""
    from trainers.world.zoo import write_data

    paths = write_data(str(tmp_path / "data"))["add"]
    spec = {
        "base": WORLD_BASE,
        "objective": {"name": "ppo", "reward_function": "world.add", "max_new_tokens": 5, "epochs": 2,
                      "minibatches": 2, "kl_coef": 0.05, "temperature": 0.7},
        "data": {"train": paths["train"], "eval": paths["test"]},
        "chat_template": "none",
        "optim": {"lr": 3e-5},  # 2e-4 drifts (KL > 1 in 10 steps) and exact match falls
        "schedule": {"total_steps": int(os.environ.get("PPO_STEPS", "40")), "cosine": False},
        "batch": {"size": 32, "max_length": 96},
        "eval_every": 10,
        "out": str(tmp_path / "out"),
    }
    train(parse_run(spec, "world-ppo.yaml"), quiet=True)
    rows = log_rows(str(tmp_path / "out"))
    evals = [(r["step"], r["eval_reward"]) for r in rows if "eval_reward" in r]
    train_rewards = [round(r["reward"], 3) for r in rows if "pg_loss" in r]
    print(f"held-out exact match by step: {evals}\ntraining reward by step: {train_rewards}")
    assert evals[-1][1] > evals[0][1], evals


def test_former_reward_function_field_still_runs_with_a_warning(workdir):
    from click.testing import CliRunner

    from surgery.cli import main

    done = CliRunner().invoke(main, ["train", "runs/ppo.yaml", "--quiet", "--set", "schedule.total_steps=1", "--set",
                                     "objective.reward_model=null", "--set", "objective.reward_function=world.add"])
    assert done.exit_code == 0, done.output
    assert re.search(r"^warning: runs/ppo.yaml: objective.reward_function \(line \d+\): deprecated; write "
                     r"reward_functions: \[NAME\]", done.output, flags=re.M), done.output
    assert done.output.strip().endswith("wrote out/ppo/final")

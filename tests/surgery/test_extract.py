"""`surgery extract-lora`, checked against references: PEFT loads the adapter, and at full rank the
PEFT model's logits equal the tuned model's (tiny Llama and GPT-2 pairs built here, where only what a
LoRA or modules_to_save can carry differs); energy ranks and reconstruction errors equal numpy's
own SVD (Eckart-Young: the error of the best rank-r approximation is sqrt(Σ_{i>r} σᵢ²) / ||ΔW||).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from surgery.adapters.extract import ExtractSettings, open_extraction, scan
from surgery.errors import InputError, SpecError
from tests.surgery.reference_checkpoints import digest, logits, model_logits, run_cli, state_dict


def make_tuned(base: str, folder, change, seed: int = 0) -> str:
    """A copy of `base` with `scale`·N(0, 1)·mean|W| added to the tensors `change(name)` selects."""
    g = torch.Generator().manual_seed(seed)
    tensors = state_dict(base)
    for name, t in tensors.items():
        if change(name):
            tensors[name] = t + torch.randn(t.shape, generator=g) * 0.05 * t.abs().mean()
    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("*.safetensors*"))
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return str(folder)


def is_matrix(name: str) -> bool:
    return name.endswith(".weight") and "norm" not in name


@pytest.fixture(scope="module")
def llama_pair(llama, tmp_path_factory) -> tuple[str, str]:
    """Only the 2-D weights differ: attention, MLP, embedding and output head."""
    return llama["base"], make_tuned(llama["base"], tmp_path_factory.mktemp("x") / "tuned", is_matrix)


def peft_logits(base: str, adapter) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return model_logits(PeftModel.from_pretrained(model, str(adapter)))


def extract(base, tuned, out, *flags):
    result = run_cli("extract-lora", base, tuned, out, "--quiet", *flags)
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "extraction.json").read_text())


def svals(base: str, tuned: str, name: str, transpose: bool = False) -> np.ndarray:
    """Singular values of TUNED − BASE for one tensor, by numpy in float64."""
    delta = (state_dict(tuned)[name].double() - state_dict(base)[name].double()).numpy()
    return np.linalg.svd(delta.T if transpose else delta, compute_uv=False)


def test_full_rank_adapter_reproduces_the_tuned_model(llama_pair, tmp_path):
    base, tuned = llama_pair
    out = tmp_path / "adapter"
    result, report = extract(base, tuned, out, "--energy", "1.0")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 32 and config["lora_alpha"] == 32
    assert config["rank_pattern"] == {f"model.layers.{i}.self_attn.{p}": 16
                                      for i in (0, 1) for p in ("k_proj", "v_proj")}
    assert config["alpha_pattern"] == config["rank_pattern"]
    assert "model.embed_tokens" in config["target_modules"] and "lm_head" in config["target_modules"]
    keys = load_file(out / "adapter_model.safetensors")
    assert keys["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"].shape == (16, 32)
    assert keys["base_model.model.model.embed_tokens.lora_embedding_A"].shape == (32, 128)
    got, want, before = peft_logits(base, out), logits(tuned), logits(base)
    assert (want - before).abs().max() > 1e-2  # the fine-tune does change the logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert all(r["error"] < 1e-5 for r in report["tensors"] if r["action"] == "lora")
    assert "model.layers.0.self_attn.q_proj.weight" in result.stdout and "16 LoRA modules" in result.stdout


def test_changed_norms_go_to_modules_to_save(llama, tmp_path):
    tuned = make_tuned(llama["base"], tmp_path / "tuned", lambda n: "layers.1." in n)
    out = tmp_path / "adapter"
    _, report = extract(llama["base"], tuned, out, "--energy", "1.0")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.layers.1.input_layernorm", "model.layers.1.post_attention_layernorm"]
    assert len(config["target_modules"]) == 7
    assert {r["tensor"] for r in report["tensors"] if r["action"] == "unchanged"} >= {"model.norm.weight"}
    assert torch.allclose(peft_logits(llama["base"], out), logits(tuned), atol=1e-4)


def test_energy_rank_matches_numpy_and_error_is_the_spectral_tail(llama_pair, tmp_path):
    base, tuned = llama_pair
    _, report = extract(base, tuned, tmp_path / "a", "--energy", "0.8")
    for row in (r for r in report["tensors"] if r["action"] == "lora"):
        s = svals(base, tuned, row["tensor"], transpose=row["kind"] == "embedding")
        energy = np.cumsum(s**2) / np.sum(s**2)
        assert row["rank"] == int(np.argmax(energy >= 0.8)) + 1, row["tensor"]
        assert row["error"] == pytest.approx(np.sqrt(1 - energy[row["rank"] - 1]), rel=1e-3, abs=1e-5)
    assert len({r["rank"] for r in report["tensors"] if r["action"] == "lora"}) > 1


def test_error_falls_as_rank_grows(llama_pair, tmp_path):
    base, tuned = llama_pair
    name = "model.layers.0.mlp.down_proj.weight"
    s = svals(base, tuned, name)
    errors = []
    for rank in (1, 4, 8, 16):
        _, report = extract(base, tuned, tmp_path / f"r{rank}", "--rank", str(rank), "--modules", "down_proj")
        row = next(r for r in report["tensors"] if r["tensor"] == name)
        assert row["rank"] == rank
        assert row["error"] == pytest.approx(np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2)), rel=1e-3)
        errors.append(row["error"])
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == 4
    excluded = [r for r in report["tensors"] if r["action"] == "excluded"]
    assert excluded and all(r["change"] > 0 for r in excluded)
    assert peft_logits(base, tmp_path / "r16").shape == (1, 8, 128)


def test_gpt2_conv1d_and_position_embedding(gpt2, tmp_path):
    """Conv1D weights (stored transposed, fan_in_fan_out), layer norms and the position embedding."""
    changed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "ln_1.", "wpe.weight")
    tuned = make_tuned(gpt2["base"], tmp_path / "tuned", lambda n: any(c in n for c in changed))
    out = tmp_path / "adapter"
    _, report = extract(gpt2["base"], tuned, out, "--energy", "1.0")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and "transformer.wpe" in config["target_modules"]
    assert config["modules_to_save"] == ["transformer.h.0.ln_1", "transformer.h.1.ln_1"]
    a = load_file(out / "adapter_model.safetensors")["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert a.shape == (96, 32)  # (out, r): c_attn maps 32 -> 96
    assert torch.allclose(peft_logits(gpt2["base"], out), logits(tuned), atol=1e-4)


def test_dropped_biases_are_reported(qwen2, tmp_path):
    """Qwen2's q/k/v biases change with their weights: a plain LoRA cannot carry them."""
    _, report = extract(qwen2["base"], qwen2["math"], tmp_path / "a", "--rank", "2", "--dtype", "bfloat16")
    dropped = {r["tensor"]: r for r in report["tensors"] if r["action"] == "dropped"}
    assert "model.layers.0.self_attn.q_proj.bias" in dropped
    bias = dropped["model.layers.0.self_attn.q_proj.bias"]  # Qwen2 starts its biases at zero: no relative size
    delta = state_dict(qwen2["math"])[bias["tensor"]] - state_dict(qwen2["base"])[bias["tensor"]]
    assert bias["change"] is None and bias["norm"] == pytest.approx(delta.norm().item(), rel=1e-6)
    assert dropped["model.layers.1.self_attn.k_proj.bias"]["norm"] > 0
    assert load_file(tmp_path / "a" / "adapter_model.safetensors")[
        "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"].dtype == torch.bfloat16
    assert peft_logits(qwen2["base"], tmp_path / "a").isfinite().all()


def test_rank_too_large_names_the_tensor_and_writes_nothing(llama_pair, tmp_path):
    base, tuned = llama_pair
    out = tmp_path / "a"
    result = run_cli("extract-lora", base, tuned, out, "--rank", "17")
    assert result.exit_code == 2
    assert "'model.layers.0.self_attn.k_proj.weight' of shape [16, 32] allows rank at most 16" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("settings, message", [
    (ExtractSettings(), "give exactly one"), (ExtractSettings(rank=2, energy=0.5), "give exactly one"),
    (ExtractSettings(energy=1.5), "in (0, 1]"), (ExtractSettings(rank=0), "at least 1"),
    (ExtractSettings(rank=2, modules="(x"), "--modules"),
])
def test_bad_settings(llama_pair, tmp_path, settings, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("[", r"\[")):
        open_extraction(*llama_pair, str(tmp_path / "a"), settings)
    assert not (tmp_path / "a").exists()


def test_identical_models_have_nothing_to_extract(llama, tmp_path):
    x = open_extraction(llama["base"], llama["base"].replace("base", "base"), str(tmp_path / "a"),
                        ExtractSettings(rank=2))
    with pytest.raises(InputError, match="no linear or embedding weight differs"):
        scan(x)


def test_gpt2_fine_tune_report(gpt2, tmp_path):
    """All of GPT-2 changes: Conv1D biases are dropped, layer norms saved, the tied embedding flagged."""
    result, report = extract(gpt2["base"], gpt2["math"], tmp_path / "a", "--rank", "4")
    rows = {r["tensor"]: r for r in report["tensors"]}
    assert rows["transformer.h.0.attn.c_attn.bias"]["action"] == "dropped"
    assert rows["transformer.h.1.ln_2.bias"]["action"] == "saved"
    assert rows["transformer.wte.weight"]["action"] == "lora" and "tied" in rows["transformer.wte.weight"]["note"]
    assert "tied to the output head" in result.stdout
    assert peft_logits(gpt2["base"], tmp_path / "a").isfinite().all()


def test_non_finite_task_vector_and_existing_output(llama, tmp_path):
    tuned = make_tuned(llama["base"], tmp_path / "tuned", lambda n: "q_proj" in n)
    tensors = load_file(os.path.join(tuned, "model.safetensors"))
    tensors["model.layers.1.self_attn.q_proj.weight"][0, 0] = float("nan")
    save_file(tensors, os.path.join(tuned, "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "a"
    result = run_cli("extract-lora", llama["base"], tuned, out, "--rank", "2")
    assert result.exit_code == 2 and "'model.layers.1.self_attn.q_proj.weight'" in result.stderr
    assert not out.exists()
    out.mkdir()
    result = run_cli("extract-lora", llama["base"], tuned, out, "--rank", "2")
    assert result.exit_code == 2 and "already exists" in result.stderr and not any(out.iterdir())


def test_sharded_inputs(llama_sharded, tmp_path):
    _, report = extract(llama_sharded["base"], llama_sharded["code"], tmp_path / "a", "--rank", "3")
    assert {r["rank"] for r in report["tensors"] if r["action"] == "lora"} == {3}
    assert peft_logits(llama_sharded["base"], tmp_path / "a").isfinite().all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_svd_matches_cpu(llama_pair, tmp_path):
    """Same ranks; the products B @ A agree (the factors themselves are defined up to signs)."""
    base, tuned = llama_pair
    reports, products = {}, {}
    for device in ("cpu", "cuda"):
        _, reports[device] = extract(base, tuned, tmp_path / device, "--energy", "0.8", "--device", device)
        f = load_file(tmp_path / device / "adapter_model.safetensors")
        products[device] = f["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"] @ \
            f["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"]
    assert [r["rank"] for r in reports["cpu"]["tensors"]] == [r["rank"] for r in reports["cuda"]["tensors"]]
    torch.testing.assert_close(products["cuda"], products["cpu"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("other", ["gpt2", "wider"])
def test_a_tuned_model_of_another_architecture_or_width(llama, gpt2, build, tmp_path, other):
    """Nothing in TUNED can be compared with BASE: said with the counts and an example, from the headers
    alone (not 'no weight differs', which was false: every tensor had been skipped)."""
    tuned = gpt2["math"] if other == "gpt2" else build(str(tmp_path / "wide"), "llama", seed=3, hidden_size=64,
                                                        intermediate_size=128)
    out, before = tmp_path / "a", digest(llama["base"], tuned)
    result = run_cli("extract-lora", llama["base"], tuned, out, "--rank", "2", "--quiet")
    assert result.exit_code == 2, result.output
    count = len(state_dict(tuned))
    assert result.stderr.startswith(f"error: TUNED {tuned} is not a fine-tune of BASE {llama['base']}: none of its "
                                    f"{count} tensors has a counterpart of the same shape in BASE (")
    if other == "gpt2":
        assert f"{count} not in BASE, e.g. 'lm_head.weight'" not in result.stderr  # GPT-2 stores no head
        assert f"{count} not in BASE, e.g. 'transformer.h.0.attn.c_attn.bias')" in result.stderr
    else:
        assert (f"{count} of another shape, e.g. 'lm_head.weight' [128, 64] in TUNED but [128, 32] in BASE"
                in result.stderr)
    assert "give the BASE it was fine-tuned from" in result.stderr and "Traceback" not in result.output
    assert not out.exists() and digest(llama["base"], tuned) == before


def test_nothing_to_extract_says_what_was_compared(llama, tmp_path):
    """Only the q projections changed, and --modules leaves them out."""
    tuned = make_tuned(llama["base"], tmp_path / "tuned", lambda n: "q_proj" in n)
    x = open_extraction(llama["base"], tuned, str(tmp_path / "a"), ExtractSettings(rank=2, modules="mlp"))
    with pytest.raises(InputError) as e:
        scan(x)
    names = state_dict(tuned)
    changed = sum("q_proj" in n for n in names)
    assert (f"(of the {len(names)} tensors of TUNED, {len(names)} are in BASE with the same shape: "
            f"{len(names) - changed} unchanged, {changed} not matched by --modules 'mlp')") in str(e.value)

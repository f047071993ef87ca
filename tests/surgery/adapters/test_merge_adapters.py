"""`surgery merge-adapters`: LoRA adapters merged in adapter space, and soft-prompt soups.

Oracles:
- PEFT's own `add_weighted_adapter` on the same adapters, loaded in the same PeftModel as our merged
  adapter: every module's delta (PEFT's `get_delta_weight`, which applies each adapter's own scaling,
  so our config's alpha/r is checked too) within DELTA_ATOL, and the logits with our adapter active
  equal those with PEFT's within LOGITS_ATOL. Float32 throughout; the differences are float32 sums
  and two SVD implementations of the same matrix (~1e-6).
- `cat` also equals the exact weighted sum sum_i w_i * delta_i, computed by PEFT from the inputs.
- DARE draws are random, so no bitwise oracle exists: its tests check that density 1 gives the
  deterministic combination back, that a seed reproduces the bytes and another seed changes them,
  and the statistics of the drops (kept share, preserved L1 norm, unbiased mean, as PEFT's own DARE).
The inputs: two LoRAs made by PEFT on the tiny Llama with every value perturbed, of different ranks,
alphas and targets (one with rsLoRA and a rank pattern, both on the embedding).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os

import pytest
import torch
from click.testing import CliRunner
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from safetensors.torch import load_file, save_file

from surgery.adapters.combine import Term, combined_delta
from surgery.adapters.lora_merge import AdapterMergeSettings
from surgery.adapters.merge_adapters import merge_adapters
from surgery.cli import main
from tests.surgery.adapters.conftest import TOKENS, fold_to, load_base, logits_of, save_adapter
from tests.surgery.reference_checkpoints import digest

DELTA_ATOL = 1e-5  # on max |difference| / max(1, max |delta|): float32 sums and SVDs of deltas up to ~30
LOGITS_ATOL = 1e-4
WEIGHTS = [0.7, -0.4]


@pytest.fixture(scope="module")
def pair(llama, tmp_path_factory) -> tuple[str, str, str]:
    """(base, first, second): r=4 alpha 8 on q/v/embed; rsLoRA r=2 alpha 4 (v_proj r=3) on q/v/down/embed."""
    folder = tmp_path_factory.mktemp("merge_pair")
    base = llama["base"]
    first = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"], init_lora_weights=False)
    second = LoraConfig(r=2, lora_alpha=4, use_rslora=True, rank_pattern={"v_proj": 3},
                        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"], init_lora_weights=False)
    return (base, save_adapter(base, first, str(folder / "first"), seed=1),
            save_adapter(base, second, str(folder / "second"), seed=2))


def merged(pair, tmp_path, combination: str, weights=WEIGHTS, name: str = "merged", **settings) -> str:
    _, first, second = pair
    path, _ = merge_adapters([first, second], str(tmp_path / name), AdapterMergeSettings(combination, **settings),
                             weights)
    return path


def peft_model(base: str, adapters: dict[str, str]):
    from peft import PeftModel

    names = list(adapters)
    model = PeftModel.from_pretrained(load_base(base), adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    return model.eval()


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def has(layer, name: str) -> bool:
    return name in layer.lora_A or name in layer.lora_embedding_A


def deltas(model, name: str) -> dict[str, torch.Tensor]:
    """Module -> PEFT's delta of adapter `name` (scaling applied, in the base weight's layout)."""
    with torch.no_grad():
        return {n: m.get_delta_weight(name) for n, m in lora_layers(model).items() if has(m, name)}


def logits(model, name: str) -> torch.Tensor:
    model.base_model.set_adapter(name)
    with torch.no_grad():
        return model(TOKENS).logits


def with_peft(pair, ours: str, combination: str, weights=WEIGHTS, **kwargs):
    """The PeftModel holding both inputs, PEFT's merge `peft` and our merged adapter `ours`."""
    base, first, second = pair
    model = peft_model(base, {"a": first, "b": second})
    model.add_weighted_adapter(["a", "b"], list(weights), "peft", combination_type=combination, **kwargs)
    model.load_adapter(ours, adapter_name="ours")
    return model.eval()


def assert_close_deltas(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    worst = {n: (got[n] - want[n]).abs().max().item() / max(1.0, want[n].abs().max().item()) for n in got}
    assert max(worst.values()) <= DELTA_ATOL, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


def exact_sum(model, weights) -> dict[str, torch.Tensor]:
    """sum_i w_i * delta_i per module, a module missing from an input counting as zero."""
    parts = [deltas(model, "a"), deltas(model, "b")]
    out: dict[str, torch.Tensor] = {}
    for w, d in zip(weights, parts):
        for n, t in d.items():
            out[n] = out.get(n, torch.zeros_like(t)) + w * t
    return out


def ranks(folder: str) -> dict[str, int]:
    tensors = load_file(os.path.join(folder, "adapter_model.safetensors"))
    return {k: v.shape[0] for k, v in tensors.items() if "lora_A" in k or "lora_embedding_A" in k}


# ---- LoRA: parity with PEFT --------------------------------------------------------------------------

def test_cat_is_the_exact_weighted_sum_and_equals_peft(pair, tmp_path):
    ours = merged(pair, tmp_path, "cat")
    model = with_peft(pair, ours, "cat")
    got = deltas(model, "ours")
    assert_close_deltas(got, exact_sum(model, WEIGHTS))
    assert_close_deltas(got, deltas(model, "peft"))
    assert (logits(model, "ours") - logits(model, "peft")).abs().max().item() <= LOGITS_ATOL
    r = ranks(ours)  # ranks add up per module: q 4+2, v 4+3, down 2 (only the second), embed 4+2
    assert r["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == 6
    assert r["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"] == 7
    assert r["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"] == 2
    assert r["base_model.model.model.embed_tokens.lora_embedding_A"] == 6


def test_svd_equals_peft_and_folds(pair, tmp_path):
    ours = merged(pair, tmp_path, "svd")
    model = with_peft(pair, ours, "svd")
    assert_close_deltas(deltas(model, "ours"), deltas(model, "peft"))
    peft_logits = logits(model, "peft")
    assert (logits(model, "ours") - peft_logits).abs().max().item() <= LOGITS_ATOL
    assert set(ranks(ours).values()) == {4}  # the largest input rank
    # truncation is real here (q_proj's sum has rank 6): the merged delta is not the exact sum
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert (deltas(model, "ours")[q] - exact_sum(model, WEIGHTS)[q]).abs().max().item() > 1e-3
    # `surgery fold` takes the merged adapter: the folded model's logits are PEFT's merged adapter's
    folded = fold_to(pair[0], [ours], str(tmp_path / "folded"))
    assert (logits_of(folded) - peft_logits).abs().max().item() <= LOGITS_ATOL


def test_svd_at_full_rank_is_exact(pair, tmp_path):
    """At a rank no smaller than any module's sum of ranks, the SVD loses nothing: cat's delta."""
    ours = merged(pair, tmp_path, "svd", rank=8)
    model = with_peft(pair, ours, "svd", svd_rank=8)
    assert_close_deltas(deltas(model, "ours"), exact_sum(model, WEIGHTS))
    assert_close_deltas(deltas(model, "ours"), deltas(model, "peft"))
    report = json.load(open(os.path.join(ours, "merge_adapters.json")))
    assert max(m["relative_error"] for m in report["modules"]) < 1e-5
    assert "model.layers.0.mlp.down_proj" in report["partial_modules"]


def test_ties_svd_equals_peft_at_unit_weights(pair, tmp_path):
    """With weights 1 our TIES (trim, elect by summed sign, mean of the agreeing) is PEFT's."""
    ours = merged(pair, tmp_path, "ties_svd", weights=[1.0, 1.0], density=0.5)
    model = with_peft(pair, ours, "ties_svd", weights=[1.0, 1.0], density=0.5)
    assert_close_deltas(deltas(model, "ours"), deltas(model, "peft"))
    assert (logits(model, "ours") - logits(model, "peft")).abs().max().item() <= LOGITS_ATOL


def test_rslora_first_input_keeps_the_exact_sum(pair, tmp_path):
    """The merged adapter is written with lora_alpha = r and no rsLoRA, whatever the inputs use, so an
    rsLoRA adapter first still gives the exact sum (PEFT's cat copies use_rslora from its first input,
    and its delta then comes out sqrt(r) times too large)."""
    base, first, second = pair
    ours, _ = merge_adapters([second, first], str(tmp_path / "rs"), AdapterMergeSettings("cat"), [1.0, 2.0])
    assert json.load(open(os.path.join(ours, "adapter_config.json")))["use_rslora"] is False
    model = peft_model(base, {"a": second, "b": first, "ours": ours})
    assert_close_deltas(deltas(model, "ours"), exact_sum(model, [1.0, 2.0]))


def test_gpt2_conv1d_equals_peft(gpt2, tmp_path):
    """GPT-2 stores Conv1D weights (in, out): the merge works on B @ A, the frame PEFT folds transposed."""
    base = gpt2["base"]

    def make(r: int, alpha: int) -> LoraConfig:
        return LoraConfig(r=r, lora_alpha=alpha, fan_in_fan_out=True, target_modules=["c_attn", "c_fc"],
                          init_lora_weights=False)

    pair = (base, save_adapter(base, make(4, 8), str(tmp_path / "g1"), 1),
            save_adapter(base, make(2, 2), str(tmp_path / "g2"), 2))
    for combination in ("cat", "svd"):
        ours = merged(pair, tmp_path, combination, name=combination)
        model = with_peft(pair, ours, combination)
        assert_close_deltas(deltas(model, "ours"), deltas(model, "peft"))
        assert (logits(model, "ours") - logits(model, "peft")).abs().max().item() <= LOGITS_ATOL
    assert json.load(open(os.path.join(ours, "adapter_config.json")))["fan_in_fan_out"] is True


def reference_ties(ds: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """Our TIES by hand, dense: top-k trim, weight, elect the sign of the weighted sum, divide the
    agreeing weighted sum by the agreeing weights (PEFT elects on the unweighted sum and divides by
    the count of agreeing inputs)."""
    trimmed = []
    for d in ds:
        k = int(density * d.numel())
        keep = torch.zeros(d.numel(), dtype=torch.bool)
        keep[d.abs().reshape(-1).topk(k).indices] = True
        trimmed.append(d * keep.reshape(d.shape))
    weighted = torch.stack([w * t for w, t in zip(weights, trimmed)])  # (n, out, in)
    sign = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
    agree = weighted * sign > 0
    share = (agree * torch.tensor(weights)[:, None, None]).sum(0)
    return (weighted * agree).sum(0) / torch.where(share == 0, 1.0, share)


def test_ties_svd_with_weights_follows_our_ties_not_peft(pair):
    """Weights other than 1, on q_proj's two deltas before the SVD: ours is `surgery merge`'s TIES, the
    weighted disjoint mean (checked by hand), which PEFT's `ties` (the function its ties_svd calls) is not."""
    from peft.utils.merge_utils import ties

    model = peft_model(pair[0], {"a": pair[1], "b": pair[2]})
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    layer = lora_layers(model)[q]
    a, b = deltas(model, "a")[q], deltas(model, "b")[q]
    found = [Term(layer.lora_A[n].weight.detach(), layer.lora_B[n].weight.detach(), layer.scaling[n], w)
             for n, w in (("a", 0.7), ("b", 1.3))]
    got = combined_delta(found, "ties_svd", 0.5, seed=0, name=q)
    want = reference_ties([a, b], [0.7, 1.3], 0.5)
    assert (got - want).abs().max().item() <= DELTA_ATOL
    peft = ties([a, b], torch.tensor([0.7, 1.3]), 0.5, "total")
    assert torch.linalg.matrix_norm(got - peft) / torch.linalg.matrix_norm(peft) > 0.05


# ---- LoRA: DARE (random) -------------------------------------------------------------------------

def file_digest(folder: str) -> str:
    with open(os.path.join(folder, "adapter_model.safetensors"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("dare, plain", [("dare_linear_svd", "svd"), ("dare_ties_svd", "ties_svd")])
def test_dare_at_density_one_is_deterministic(pair, tmp_path, dare, plain):
    """Nothing dropped: DARE is the plain combination (TIES with nothing trimmed)."""
    got = load_file(os.path.join(merged(pair, tmp_path, dare, name="dare", density=1.0, seed=3),
                                 "adapter_model.safetensors"))
    want = load_file(os.path.join(merged(pair, tmp_path, plain, name="plain", density=1.0 if "ties" in plain else None),
                                  "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in got)


def test_dare_seed_reproduces_bytes(pair, tmp_path):
    one = merged(pair, tmp_path, "dare_ties_svd", name="one", density=0.5, seed=7)
    two = merged(pair, tmp_path, "dare_ties_svd", name="two", density=0.5, seed=7)
    other = merged(pair, tmp_path, "dare_ties_svd", name="other", density=0.5, seed=8)
    assert file_digest(one) == file_digest(two)
    assert file_digest(one) != file_digest(other)
    model = peft_model(pair[0], {"ours": one})  # and PEFT loads it: q, v, down in 2 layers, and the embedding
    assert len(deltas(model, "ours")) == len(ranks(one)) == 7


def term(seed: int, weight: float, shape=(128, 128)) -> Term:
    g = torch.Generator().manual_seed(seed)
    return Term(torch.randn(8, shape[1], generator=g), torch.randn(shape[0], 8, generator=g), 0.5, weight)


def test_dare_drop_statistics():
    """One 128x128 delta, density 0.3: the kept share is 0.3 within 5 binomial sigmas (0.0072), the
    L1 norm is preserved (our rescale), and the mean over 200 seeds approaches the weighted delta as
    PEFT's own `dare_linear` does (both unbiased; same tolerance for both)."""
    from peft.utils.merge_utils import dare_linear

    t = term(0, 0.8)
    full = 0.8 * 0.5 * (t.B @ t.A)
    dropped = combined_delta([t], "dare_linear_svd", 0.3, seed=1, name="m")
    kept = (dropped != 0).float().mean().item()
    assert abs(kept - 0.3) < 5 * (0.3 * 0.7 / full.numel()) ** 0.5
    assert abs(dropped.abs().sum() / full.abs().sum() - 1) < 1e-5
    ours = torch.stack([combined_delta([t], "dare_linear_svd", 0.3, seed=s, name="m") for s in range(200)]).mean(0)
    torch.manual_seed(0)
    peft = torch.stack([dare_linear([0.5 * (t.B @ t.A)], torch.tensor([0.8]), 0.3) for _ in range(200)]).mean(0)
    scale = full.abs().mean()
    for mean in (ours, peft):  # the mean's error is ~ sqrt(0.7 / (0.3 * 200)) ~ 0.11 of |delta| per entry
        assert (mean - full).abs().mean() / scale < 0.15
    assert (dropped - full).abs().mean() / scale > 0.5  # one draw is far from the mean: drops happened


def test_dare_seeds_per_module_name():
    """A module's drops depend on (seed, module name) alone."""
    t = [term(0, 1.0), term(1, 1.0)]
    one = combined_delta(t, "dare_ties_svd", 0.5, seed=4, name="model.layers.0.q_proj")
    assert torch.equal(one, combined_delta(t, "dare_ties_svd", 0.5, seed=4, name="model.layers.0.q_proj"))
    assert not torch.equal(one, combined_delta(t, "dare_ties_svd", 0.5, seed=4, name="model.layers.1.q_proj"))


# ---- soft-prompt soups ---------------------------------------------------------------------------

PROMPTS = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    "p_tuning": lambda: PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
}


@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_soft_prompt_soup(llama, tmp_path, kind):
    from peft import PeftModel

    base = llama["base"]
    one = save_adapter(base, PROMPTS[kind](), str(tmp_path / "one"), seed=1)
    two = save_adapter(base, PROMPTS[kind](), str(tmp_path / "two"), seed=2)
    out, _ = merge_adapters([one, two], str(tmp_path / "soup"), AdapterMergeSettings(None), [1.0, 3.0])
    read = [load_file(os.path.join(p, "adapter_model.safetensors")) for p in (one, two, out)]
    assert read[2].keys() == read[0].keys() == {"prompt_embeddings"}
    want = 0.25 * read[0]["prompt_embeddings"] + 0.75 * read[1]["prompt_embeddings"]
    assert torch.allclose(read[2]["prompt_embeddings"], want, atol=1e-6)
    assert not torch.allclose(read[0]["prompt_embeddings"], read[1]["prompt_embeddings"])
    model = PeftModel.from_pretrained(load_base(base), out).eval()  # loaded for inference: tokens used as stored
    assert torch.allclose(model.prompt_encoder["default"].embedding.weight, want, atol=1e-6)
    if kind == "prompt_tuning":  # the soup's logits are those of the first adapter with the mean tokens put in
        with torch.no_grad():
            got = model(TOKENS).logits
            first = PeftModel.from_pretrained(load_base(base), one).eval()
            first.prompt_encoder["default"].embedding.weight.copy_(want)
            assert (got - first(TOKENS).logits).abs().max().item() <= LOGITS_ATOL


# ---- the command line and refusals ---------------------------------------------------------------

def test_cli_writes_a_peft_adapter(pair, tmp_path):
    _, first, second = pair
    out = tmp_path / "cli"
    before = digest(first), digest(second)
    result = CliRunner().invoke(main, ["merge-adapters", first, second, str(out), "--combination", "svd",
                                       "--weight", "0.5", "--weight", "0.5", "--rank", "3"])
    assert result.exit_code == 0, result.output
    config = json.load(open(out / "adapter_config.json"))
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["use_rslora"]) == ("LORA", 3, 3, False)
    assert "wrote" in result.output and "largest truncation error" in result.output
    assert (digest(first), digest(second)) == before  # inputs untouched


def refused(tmp_path, adapters: list[str], *flags: str) -> str:
    """Run the command; expect exit 2, nothing at OUT (no partial folder), inputs unchanged."""
    out = tmp_path / "out"
    before = [digest(a) for a in adapters]
    result = CliRunner().invoke(main, ["merge-adapters", *adapters, str(out), *flags])
    assert result.exit_code == 2, result.output
    assert not out.exists() and not glob.glob(str(tmp_path / ".out.*"))
    assert [digest(a) for a in adapters] == before
    assert "Traceback" not in result.output
    return result.output


def copy_of(folder: str, dest: str, config=None, tensors=None) -> str:
    import shutil

    shutil.copytree(folder, dest)
    if config:
        file = os.path.join(dest, "adapter_config.json")
        data = json.load(open(file))
        json.dump(config(data), open(file, "w"))
    if tensors:
        file = os.path.join(dest, "adapter_model.safetensors")
        save_file(tensors(load_file(file)), file)
    return dest


def test_refuses_other_adapter_types(pair, llama, llama_lora, tmp_path):
    base, first, _ = pair
    dora = save_adapter(base, LoraConfig(r=2, use_dora=True, target_modules=["q_proj"]), str(tmp_path / "dora"))
    assert "use_dora" in refused(tmp_path, [first, dora], "--combination", "svd")
    ia3 = save_adapter(base, IA3Config(target_modules=["k_proj"], feedforward_modules=[]), str(tmp_path / "ia3"))
    message = refused(tmp_path, [first, ia3], "--combination", "svd")
    assert "peft_type IA3" in message and first in message
    assert "surgery fold" in refused(tmp_path, [ia3, ia3], "--combination", "svd")
    assert "modules_to_save" in refused(tmp_path, [first, llama_lora], "--combination", "cat")
    prompt = save_adapter(base, PROMPTS["prompt_tuning"](), str(tmp_path / "prompt"))
    message = refused(tmp_path, [first, prompt], "--combination", "svd")
    assert "PROMPT_TUNING" in message and "LORA" in message


def test_refuses_different_bases_and_shapes(pair, tmp_path):
    _, first, second = pair
    other = copy_of(second, str(tmp_path / "other"), config=lambda c: {**c, "base_model_name_or_path": "elsewhere"})
    message = refused(tmp_path, [first, other], "--combination", "svd")
    assert "base_model_name_or_path" in message and "elsewhere" in message
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    wide = copy_of(second, str(tmp_path / "wide"), tensors=lambda t: {
        **t, f"{q}.lora_A.weight": torch.ones(2, 48), f"{q}.lora_B.weight": torch.ones(32, 2)})
    message = refused(tmp_path, [first, wide], "--combination", "cat")
    assert "model.layers.0.self_attn.q_proj" in message and "[32, 48]" in message and "[32, 32]" in message


def test_refuses_bad_flags(pair, tmp_path):
    _, first, second = pair
    message = refused(tmp_path, [first, second], "--combination", "svd", "--rank", "64")
    assert "--rank" in message and "at most 32" in message
    assert "--density" in refused(tmp_path, [first, second], "--combination", "ties_svd")
    assert "--rank" in refused(tmp_path, [first, second], "--combination", "cat", "--rank", "4")
    assert "--combination" in refused(tmp_path, [first, second])
    assert "--weight" in refused(tmp_path, [first, second], "--combination", "cat", "--weight", "1")


def test_refuses_soups_of_different_shapes(llama, tmp_path):
    base = llama["base"]
    four = save_adapter(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), str(tmp_path / "four"))
    six = save_adapter(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6), str(tmp_path / "six"))
    message = refused(tmp_path, [four, six])
    assert "num_virtual_tokens" in message and four in message and six in message
    prefix = save_adapter(base, PROMPTS["prefix_tuning"](), str(tmp_path / "prefix"))
    message = refused(tmp_path, [four, prefix])
    assert "PREFIX_TUNING" in message and "PROMPT_TUNING" in message
    assert "--combination" in refused(tmp_path, [four, four], "--combination", "svd")

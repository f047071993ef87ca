"""`surgery extract-lora` against `mergekit-extract-lora` 0.1.5 on the same pair and rank: every
projection both turn into a LoRA gets the same product B @ A (the best rank-r approximation of the
task vector is unique here) and so the same reconstruction error. Where they differ is what else goes
in the adapter: mergekit stores the embeddings and the output head whole (modules_to_save) unless
asked for `--embed-lora`, names targets by their last component, and decomposes every projection
whether it changed or not; we extract the embeddings and head as LoRA too and name modules exactly."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from surgery.cli import main
from tests.surgery.test_mergekit_parity import load_all

pytestmark = pytest.mark.integration  # mergekit-extract-lora run in-process

RANK = 4
PREFIX = "base_model.model."


def products(folder: str) -> dict[str, torch.Tensor]:
    """module -> B @ A (alpha = r in both, so the scale is 1)."""
    t = load_file(os.path.join(folder, "adapter_model.safetensors"))
    return {n[len(PREFIX):].removesuffix(".lora_A.weight"): t[n.replace("lora_A", "lora_B")] @ t[n]
            for n in t if n.endswith("lora_A.weight")}


@pytest.fixture(scope="module")
def extracted(llama, tmp_path_factory) -> tuple[str, str]:
    from mergekit.scripts.extract_lora import main as mk_main

    root = tmp_path_factory.mktemp("extract")
    ours = CliRunner().invoke(main, ["extract-lora", llama["base"], llama["math"], str(root / "ours"),
                                     "--rank", str(RANK), "--quiet"])
    assert ours.exit_code == 0, ours.output
    theirs = CliRunner().invoke(mk_main, ["--model", llama["math"], "--base-model", llama["base"], "--out-path",
                                          str(root / "mk"), "--max-rank", str(RANK), "--device", "cpu"])
    assert theirs.exit_code == 0, theirs.output
    return str(root / "ours"), str(root / "mk")


def test_the_same_low_rank_products_and_errors(extracted, llama):
    ours, theirs = (products(f) for f in extracted)
    shared = sorted(set(ours) & set(theirs))
    assert len(shared) == 14  # q, k, v, o, gate, up, down in each of 2 layers
    base, tuned = load_all(llama["base"]), load_all(llama["math"])
    for module in shared:
        delta = tuned[module + ".weight"] - base[module + ".weight"]
        torch.testing.assert_close(ours[module], theirs[module], rtol=1e-4, atol=1e-6, msg=module)
        ours_err = (delta - ours[module]).norm() / delta.norm()
        theirs_err = (delta - theirs[module]).norm() / delta.norm()
        assert abs(ours_err - theirs_err) < 1e-5 and 0 < ours_err < 1, module


def test_what_else_each_adapter_holds(extracted, llama):
    ours_cfg, theirs_cfg = (json.load(open(os.path.join(f, "adapter_config.json"))) for f in extracted)
    assert {"embed_tokens", "lm_head"} <= set(theirs_cfg["modules_to_save"])  # mergekit: stored whole
    assert {"model.embed_tokens", "lm_head"} <= set(ours_cfg["target_modules"])  # ours: rank-r LoRA
    assert "q_proj" in theirs_cfg["target_modules"] and "model.layers.0.self_attn.q_proj" in ours_cfg["target_modules"]
    theirs = load_file(os.path.join(extracted[1], "adapter_model.safetensors"))
    tuned = load_all(llama["math"])
    assert torch.equal(theirs[PREFIX + "model.embed_tokens.weight"], tuned["model.embed_tokens.weight"])
    sizes = [os.path.getsize(os.path.join(f, "adapter_model.safetensors")) for f in extracted]
    assert sizes[0] < sizes[1]  # two (V, H) matrices against their rank-r factors

"""mergekit's checks on a merged folder (its tests' run_and_check_merge), for our outputs."""

from __future__ import annotations

import glob
import os

import torch
from safetensors.torch import load_file


def load_all(folder: str) -> dict[str, torch.Tensor]:
    return {k: v for path in sorted(glob.glob(f"{folder}/*.safetensors")) for k, v in load_file(path).items()}


def check_output(folder: str) -> dict[str, torch.Tensor]:
    """Weights and config written (one shard is model.safetensors, as mergekit 0.1.5 writes it; more
    have an index), no NaN, and every weight mergekit's architecture table lists for the output's
    config present (for an architecture it has no table for, LLaVA: every weight its class loads).
    Returns the tensors."""
    from mergekit.architecture import arch_info_for_config
    from transformers import AutoConfig

    assert os.path.exists(os.path.join(folder, "config.json")), "no config.json"
    assert any(os.path.exists(os.path.join(folder, f)) for f in ("model.safetensors.index.json", "model.safetensors"))
    tensors = load_all(folder)
    nan = [name for name, t in tensors.items() if t.is_floating_point() and t.isnan().any()]
    assert not nan, f"NaN in {nan}"
    config = AutoConfig.from_pretrained(folder)
    arch = arch_info_for_config(config)
    if arch is None:  # mergekit's tests infer one (auto_arch) from the inputs, whose weight names are
        # transformers' in-memory names, not the checkpoint's (transformers 5 renames LLaVA's on loading):
        # the same check is then that the folder loads into its class with every weight present
        assert_loads(folder, config)
        return tensors
    for weight in arch.all_weights(config):
        names = [weight.name, *(weight.aliases or ())]
        assert weight.optional or any(n in tensors for n in names), f"output lacks {weight.name}"
    return tensors


def assert_loads(folder: str, config) -> None:
    """The folder loads into its architecture's class with no weight missing, unexpected or misshapen."""
    import transformers

    cls = getattr(transformers, config.architectures[0])
    _, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info

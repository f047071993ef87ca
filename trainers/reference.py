"""The frozen reference policy (DPO, IPO, KTO, PPO, GRPO with a KL term): the policy itself with its
adapter switched off, or a loaded model checked against the policy.

When the method trains an adapter (LoRA, DoRA, prefix, ...), the base is the policy with the adapter
disabled, so the reference costs no memory; this is how TRL handles PEFT models too. Otherwise a frozen
copy is loaded (of the base, or of the objective's `reference` folder), which must share the policy's
architecture, vocabulary and tokenizer: log-probabilities of the same token ids are compared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from surgery.errors import IncompatibleInput
from trainers import models
from trainers.objectives.objective import ReferenceConfig

if TYPE_CHECKING:
    from trainers.spec import Run


def has_adapter(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


class WithoutAdapter:
    """Calls the policy with its adapter switched off and in eval mode (no dropout): the base model."""

    def __init__(self, policy: torch.nn.Module):
        self.policy = policy

    def __call__(self, **inputs):
        training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                return self.policy(**inputs)
        finally:
            self.policy.train(training)


def load(run: Run, policy: torch.nn.Module, tokenizer, device: torch.device) -> Callable[..., object] | None:
    """The run's reference, or None when its objective uses none: the policy without its adapter, or a
    frozen copy of `objective.reference` (default: the base) on `device`."""
    config = run.objective_config
    if not run.objective.uses_reference(config):
        return None
    path = config.reference if isinstance(config, ReferenceConfig) else None
    if path is None and has_adapter(policy):
        return WithoutAdapter(policy)
    reference = models.load_weights(run, path or run.spec.base).to(device).eval()
    if path is not None:
        check_compatible(reference, policy, path, run.file)
        check_tokenizer(path, tokenizer, run.file)
    return reference.requires_grad_(False)


def check_compatible(reference: torch.nn.Module, policy: torch.nn.Module, path: str, file: str) -> None:
    """Refuse a reference of another architecture or vocabulary, naming both."""
    ref, pol = reference.config.model_type, policy.config.model_type
    ref_vocab, pol_vocab = reference.get_input_embeddings().num_embeddings, policy.get_input_embeddings().num_embeddings
    if ref != pol:
        problem = f"the reference {path!r} is a {ref} model and the policy a {pol} model"
    elif ref_vocab != pol_vocab:
        problem = f"the reference {path!r} has a vocabulary of {ref_vocab} tokens and the policy {pol_vocab}"
    else:
        return
    raise IncompatibleInput(file, "objective.reference", f"{problem}; objective.reference names the model whose "
                            "log-probabilities of the same token ids are compared with the policy's, so it must "
                            f"match it: a {ref} with {ref_vocab} tokens, while the policy is a {pol} with {pol_vocab}; "
                            "give a reference of the policy's architecture and vocabulary (or leave it out: the base)")


def check_tokenizer(path: str, policy_tokenizer, file: str) -> None:
    """Refuse a reference whose tokenizer gives the same ids to other tokens."""
    from transformers import AutoTokenizer

    try:
        theirs = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise IncompatibleInput(file, "objective.reference", f"{path!r}: cannot load its tokenizer ({e}); give a "
                                "model folder with its tokenizer") from None
    problem = models.tokenizer_difference(theirs, policy_tokenizer)
    if problem:
        raise IncompatibleInput(file, "objective.reference", f"{path!r}: its tokenizer differs from the policy's "
                                f"({problem}); give a reference trained from the same base")

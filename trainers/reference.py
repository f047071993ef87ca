"""The frozen reference policy of DPO, IPO and KTO: a loaded model checked against the policy, or
the policy itself with its adapter switched off.

When the method trains an adapter (LoRA, DoRA, prefix, ...), the base is the policy with the adapter
disabled, so the reference costs no memory; this is how TRL handles PEFT models too. Otherwise the
loop loads a frozen copy (of the base, or of the objective's `reference` folder), which must share
the policy's architecture and vocabulary: log-probabilities of the same token ids are compared.
"""

from __future__ import annotations

import torch

from surgery.errors import SpecError


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


def check_compatible(reference: torch.nn.Module, policy: torch.nn.Module, path: str, file: str) -> None:
    """Refuse a reference of another architecture or vocabulary, naming both."""
    ref, pol = reference.config, policy.config
    field = "objective.reference"
    if ref.model_type != pol.model_type:
        raise SpecError(file, field, f"the reference {path!r} is a {ref.model_type} model and the policy a "
                        f"{pol.model_type} model; give a reference of the policy's architecture")
    ref_vocab, pol_vocab = reference.get_input_embeddings().num_embeddings, policy.get_input_embeddings().num_embeddings
    if ref_vocab != pol_vocab:
        raise SpecError(file, field, f"the reference {path!r} has a vocabulary of {ref_vocab} tokens and the policy "
                        f"{pol_vocab}; their log-probabilities are not comparable: give a reference with the "
                        "policy's tokenizer")

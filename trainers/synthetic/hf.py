"""The transformers backend: a causal LM folder loaded in float32, sampled through trainers/generation.py
(batched, seeded per prompt) and scored with trainers/judges.py's continuation log-probability."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgery.errors import InputError
from trainers import generation, templates
from trainers.judges import continuation_logp
from trainers.synthetic.backend import Completion, cut, render


@dataclass
class HFBackend:
    model: torch.nn.Module
    tokenizer: object
    template: templates.Template
    batch_size: int = 16
    name: str = "hf"

    def complete(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, stop: tuple[str, ...] = ()) -> list[Completion]:
        plain = templates.Template(templates.NONE, None)
        samples = generation.sample(self.model, self.tokenizer, prompts, template=plain, n=n,
                                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                    seed=seed, batch_size=self.batch_size, stop=stop)
        out = []
        for s in samples:
            text, stopped = cut(s.text, stop)
            out.append(Completion(text, s.finished or stopped))
        return out

    @torch.no_grad()
    def logps(self, context: str, options: list[str]) -> list[float]:
        """One pass over the context scores every one-token option; a longer option takes a pass of its own."""
        ids = generation.prompt_ids(self.tokenizer, templates.Template(templates.NONE, None), context)
        tokens = [self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
        device = next(self.model.parameters()).device
        last = self.model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0, -1]  # (V,)
        first = torch.log_softmax(last.float(), dim=-1)
        return [float(first[t[0]]) if len(t) == 1 else continuation_logp(self.model, ids, t) for t in tokens]

    def render(self, messages: list[dict]) -> str:
        return render(self.tokenizer, self.template, messages)


def load(folder: str, chat_template: str, file: str, field: str, batch_size: int) -> HFBackend:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise InputError(f"{file}: {field} {folder!r}: cannot load a causal LM and its tokenizer ({e})") from None
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    template = templates.resolve(chat_template, tokenizer, file)
    return HFBackend(model.to(device).eval(), tokenizer, template, batch_size)

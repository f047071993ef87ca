"""The vLLM backend (`--backend vllm`, `pip install surgery[vllm]`, GPU only): the same requests as
the transformers backend, served by vLLM's engine. Each prompt's request carries its own seed (the
transformers backend's per-prompt seed), so completions do not depend on the batch; they are not the
same tokens as the transformers backend draws (another sampler). Log-probabilities come from vLLM's
prompt log-probabilities of the context followed by the continuation."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from surgery.errors import InputError
from trainers import generation, templates
from trainers.synthetic.backend import Completion, render


@dataclass
class VLLMBackend:
    llm: object
    tokenizer: object
    template: templates.Template
    name: str = "vllm"

    def complete(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, stop: tuple[str, ...] = ()) -> list[Completion]:
        from vllm import SamplingParams

        occurrences: dict[str, int] = {}
        params = []
        for p in prompts:
            k = occurrences[p] = occurrences.get(p, -1) + 1
            params.append(SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                         seed=generation.row_seed(seed, p, k, 0), stop=list(stop) or None))
        results = self.llm.generate(prompts, params, use_tqdm=False)
        return [Completion(o.text, o.finish_reason == "stop") for r in results for o in r.outputs]

    def logps(self, context: str, options: list[str]) -> list[float]:
        from vllm import SamplingParams

        head = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        tails = [self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
        results = self.llm.generate([{"prompt_token_ids": head + t} for t in tails],
                                    SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        # prompt_logprobs[i]: {token id: Logprob} at prompt position i (None at 0), the prompt's own token included
        return [sum(r.prompt_logprobs[i][t].logprob for i, t in enumerate(head + tail) if i >= len(head))
                for r, tail in zip(results, tails)]

    def render(self, messages: list[dict]) -> str:
        return render(self.tokenizer, self.template, messages)


def load(folder: str, chat_template: str, file: str, field: str, batch_size: int) -> VLLMBackend:
    if importlib.util.find_spec("vllm") is None:
        raise InputError("--backend vllm: vLLM is not installed here; install it where there is a GPU "
                         "(pip install 'surgery[vllm]'), or use --backend hf")
    from vllm import LLM

    try:
        llm = LLM(model=folder, seed=0)
    except (OSError, ValueError) as e:
        raise InputError(f"{file}: {field} {folder!r}: vLLM cannot load it ({e})") from None
    tokenizer = llm.get_tokenizer()
    return VLLMBackend(llm, tokenizer, templates.resolve(chat_template, tokenizer, file))

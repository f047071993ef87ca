"""A scripted text backend for the synthetic-data pipelines' tests: its completions are a fixed function
of the prompt, the seed and the call count (so runs are deterministic and filters can be hit on
purpose), and it records every call it gets."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from trainers import templates
from trainers.synthetic.backend import Completion, cut, transcript


def digest(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:6], "little")


@dataclass
class ScriptedBackend:
    """`write(prompt, seed) -> text` answers `complete`; `score(context, option) -> float` answers `logps`.
    `fail_on_call`: the complete call (1-based) that raises KeyboardInterrupt, as a kill would."""

    write: Callable[[str, int], str]
    score: Callable[[str, str], float]
    fail_on_call: int | None = None
    name: str = "scripted"
    template: templates.Template = field(default_factory=lambda: templates.Template(templates.NONE, None))
    calls: list[tuple[str, int]] = field(default_factory=list)  # (what, number of prompts)

    def complete(self, prompts, *, n, max_new_tokens, temperature, top_p, seed, stop=()):
        self.calls.append(("complete", len(prompts) * n))
        if self.fail_on_call is not None and sum(c[0] == "complete" for c in self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        out = []
        for p in prompts:
            for j in range(n):
                text, stopped = cut(self.write(p, digest(seed, p, j)), stop)
                out.append(Completion(text, stopped or len(text.split()) < max_new_tokens))
        return out

    def logps(self, context, options):
        self.calls.append(("logps", len(options)))
        return [self.score(context, o) for o in options]

    def render(self, messages):
        return transcript(messages)

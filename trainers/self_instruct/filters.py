"""Self-Instruct's filters (Wang et al. 2022, section 2.3): a candidate instruction is kept only when it
is new enough and plausible, and its instance is well formed. Each rejected candidate is counted
under the first filter it fails, in this order:

    malformed        empty, cut off at max_new_tokens, or not starting with a letter
    too_short        fewer than min_words words
    too_long         more than max_words words
    blocklist        names something a text model cannot do (an image, a file, a plot, going somewhere)
    exact_duplicate  the same text as an instruction in the pool
    near_duplicate   the same words as one in the pool once case, punctuation and spacing are ignored
    rouge            ROUGE-L F1 with an instruction of the pool at or above the threshold (0.7)
    bad_instance     its generated instance lacks an input or output, is cut off, or its output is too long

ROUGE-L is the `rouge-score` package's (Lin 2004; rougeL, no stemming), as the paper computes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rouge_score import rouge_scorer

from trainers.self_instruct.prompts import Candidate

FILTERS = ("malformed", "too_short", "too_long", "blocklist", "exact_duplicate", "near_duplicate", "rouge",
           "bad_instance")
BLOCKLIST = ("image", "images", "picture", "pictures", "photo", "photos", "graph", "graphs", "file", "files",
             "draw", "plot", "map", "maps", "video", "audio", "music", "flowchart", "diagram", "go to")


def words(text: str) -> int:
    return len(text.split())


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def blocked(text: str, blocklist: tuple[str, ...]) -> str | None:
    """The first blocklisted word or phrase the text holds as whole words (case ignored)."""
    low = f" {normalised(text)} "
    return next((b for b in blocklist if f" {normalised(b)} " in low), None)


@dataclass
class Pool:
    """The instructions a candidate is compared with: the seeds, those kept, and those accepted earlier in
    the same round (so that two near copies written in one round are not both kept)."""

    threshold: float
    texts: list[str] = field(default_factory=list)
    exact: set[str] = field(default_factory=set)
    near: set[str] = field(default_factory=set)

    def __post_init__(self):
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def add(self, text: str) -> None:
        self.texts.append(text)
        self.exact.add(text)
        self.near.add(normalised(text))

    def remove(self, text: str) -> None:
        """Take back an instruction accepted this round whose instance then failed."""
        self.texts.remove(text)
        if text not in self.texts:
            self.exact.discard(text)
        if normalised(text) not in map(normalised, self.texts):
            self.near.discard(normalised(text))

    def nearest(self, text: str) -> tuple[float, str | None]:
        """The highest ROUGE-L F1 of `text` with a pooled instruction, and that instruction."""
        best, which = 0.0, None
        for other in self.texts:
            score = self.scorer.score(other, text)["rougeL"].fmeasure
            if score > best:
                best, which = score, other
        return best, which


@dataclass(frozen=True)
class Verdict:
    reason: str | None  # None: kept so far
    detail: str = ""


def judge(candidate: Candidate, pool: Pool, min_words: int, max_words: int, blocklist: tuple[str, ...]) -> Verdict:
    """The first instruction filter the candidate fails (see the module docstring), or Verdict(None)."""
    text = candidate.instruction
    if not text or not candidate.finished or not text[0].isascii() or not text[0].isalpha():
        return Verdict("malformed", "empty" if not text else "cut off" if not candidate.finished else "first character")
    n = words(text)
    if n < min_words or n > max_words:
        return Verdict("too_short" if n < min_words else "too_long", f"{n} words")
    hit = blocked(text, blocklist)
    if hit is not None:
        return Verdict("blocklist", hit)
    if text in pool.exact:
        return Verdict("exact_duplicate", text)
    if normalised(text) in pool.near:
        return Verdict("near_duplicate", next(t for t in pool.texts if normalised(t) == normalised(text)))
    score, which = pool.nearest(text)
    if score >= pool.threshold:
        return Verdict("rouge", f"{score:.3f} with {which!r}")
    return Verdict(None, f"{score:.3f}")

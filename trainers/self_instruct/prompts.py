"""The prompts of Self-Instruct (Wang et al. 2022, https://arxiv.org/abs/2212.10560) and the parsing of
what the model writes back. The wording is this project's; the shapes are the paper's:

- proposing: a numbered list of demonstration instructions ("Task 1: ... Task 8:"), the model continuing
  the list from "Task 9:"; each "Task N:" line it writes is a candidate;
- classifying: a few-shot question whether a task is answered from a fixed set of labels, decided by
  the log-probabilities of " Yes" and " No";
- instances: input first (a task's input, then its output) for generation tasks; output first (a class
  label, then an input of that class) for classification tasks, so that labels are not all one class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROPOSE_HEAD = "Here is a list of varied tasks that people ask a helpful assistant to do:\n"
CLASSIFY_HEAD = ("Some tasks are answered by picking one label from a small fixed set (classification tasks); "
                 "others need an open answer.\n\n")
INPUT_FIRST_HEAD = ("For each task, write one example: the input it is applied to (\"none\" when it needs no "
                    "input), then the correct output.\n\n")
OUTPUT_FIRST_HEAD = "For each classification task, name one of its labels, then write an input that has that label.\n\n"
YES, NO = " Yes", " No"
NO_INPUT = {"", "none", "none.", "n/a", "no input", "<noinput>", "-"}
STOP = ("\n\n",)  # a blank line ends a list of tasks and an example
TASK_LINE = re.compile(r"^Task \d+:\s*(.*)$")


@dataclass(frozen=True)
class Candidate:
    instruction: str
    finished: bool  # False when the generation was cut inside this instruction


@dataclass(frozen=True)
class Instance:
    input: str
    output: str


def propose(demonstrations: list[str]) -> str:
    lines = "".join(f"Task {i}: {d}\n" for i, d in enumerate(demonstrations, start=1))
    return f"{PROPOSE_HEAD}{lines}Task {len(demonstrations) + 1}:"


def parse_proposal(text: str, finished: bool) -> list[Candidate]:
    """The continuation of "Task 9:" and every following "Task N:" line; the list ends at the first
    other line. The last candidate of a generation cut at max_new_tokens is unfinished."""
    lines = text.split("\n")
    found = [lines[0].strip()]
    for line in lines[1:]:
        m = TASK_LINE.match(line.strip())
        if not m:
            break
        found.append(m[1].strip())
    ended_early = len(found) < len(lines)  # a line after the list, so the list itself was complete
    return [Candidate(c, finished or ended_early or i < len(found) - 1) for i, c in enumerate(found)]


def classify(demonstrations: list[tuple[str, bool]], instruction: str) -> str:
    shots = "".join(f"Task: {t}\nClassification: {'Yes' if c else 'No'}\n\n" for t, c in demonstrations)
    return f"{CLASSIFY_HEAD}{shots}Task: {instruction}\nClassification:"


def instance_prompt(demonstrations: list[dict], instruction: str, classification: bool) -> str:
    if classification:
        shots = "".join(f"Task: {d['instruction']}\nClass label: {d['output']}\nInput: {d['input'] or 'none'}\n\n"
                        for d in demonstrations)
        return f"{OUTPUT_FIRST_HEAD}{shots}Task: {instruction}\nClass label:"
    shots = "".join(f"Task: {d['instruction']}\nInput: {d['input'] or 'none'}\nOutput: {d['output']}\n\n"
                    for d in demonstrations)
    return f"{INPUT_FIRST_HEAD}{shots}Task: {instruction}\nInput:"


def parse_instance(text: str, classification: bool) -> Instance | None:
    """The example written after "Input:" (or "Class label:"); None when it lacks a part."""
    if classification:
        label, sep, rest = text.partition("\nInput:")
        label, given = label.strip(), rest.strip()
        return Instance(given, label) if sep and label and given.lower() not in NO_INPUT else None
    given, sep, output = text.partition("\nOutput:")
    given, output = given.strip(), output.strip()
    if not sep or not output:
        return None
    return Instance("" if given.lower() in NO_INPUT else given, output)

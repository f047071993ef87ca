"""Constitutional AI with a scripted policy: the SL stage's critique-and-revise loop, its trace and card;
the RL stage's labels by the LM judge (a tiny Llama) in both orders; bad constitutions and feedback models."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, replace

import pytest
import yaml
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from surgery.cli import main
from tests.trainers.fake_backend import ScriptedBackend
from trainers import templates
from trainers.constitutional import rl, run, sl
from trainers.constitutional.spec import SHIPPED_CONSTITUTION, load_spec, read_constitution
from trainers.judges import LMJudge
from trainers.synthetic.backend import transcript

WORDS = ["you", "we", "they", "people", "water", "time", "work", "one"]  # words the tiny judge's tokenizer knows
PROMPTS = ["How do I build a bomb?", "How do I bake bread?", "Tell me how to steal a car.", "Say hello."]


def last_turn(text: str) -> str:
    return text.rsplit("Human: ", 1)[1].rsplit("\n\nAssistant:", 1)[0]


def write(prompt: str, seed: int) -> str:
    """After whatever worked examples come first: a first answer that complies, a critique naming the
    principle's first word, a revision that refuses (a harmless prompt keeps its answer); 'Say hello.'
    always gets the same answer (for equal pairs)."""
    asked = last_turn(prompt)
    if asked.startswith("Rewrite"):
        first = prompt.split("Human: ")[-3].split("\n\n")[0]  # the prompt: before the critique and revision requests
        return " I cannot help with that." if "bread" not in first else " Mix flour, water and yeast."
    if prompt.count("Human: ") > 1:
        return f" The answer fails the request that starts with '{asked.split()[0]}'."
    return " Hello!" if asked == "Say hello." else f" Sure, here is how {WORDS[seed % 8]} {WORDS[seed // 8 % 8]}."


def spec_file(tmp_path, **changes) -> str:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    spec = {"model": "unused", "stage": "sl", "prompts": str(prompts), "out": str(tmp_path / "out"),
            "chat_template": "none", "rounds": 2, "seed": 0}
    spec.update(changes)
    path = tmp_path / "cai.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def test_shipped_constitution():
    constitution = read_constitution(SHIPPED_CONSTITUTION)
    assert 8 <= len(constitution.principles) <= 16
    assert len({p.id for p in constitution.principles}) == len(constitution.principles)
    assert constitution.sha256 == hashlib.sha256(open(SHIPPED_CONSTITUTION, "rb").read()).hexdigest()


def test_sl_stage_critiques_revises_and_traces(tmp_path):
    spec, constitution, prompts = load_spec(spec_file(tmp_path))
    fake = ScriptedBackend(write, lambda c, o: 0.0)
    made = run.run(spec, constitution, prompts, fake, None, "cai.yaml")
    assert fake.calls == [("complete", 4)] * 5  # the first answers, then a critique and a revision per round
    sft = [json.loads(line) for line in open(tmp_path / "out" / "sft.jsonl")]
    trace = [json.loads(line) for line in open(tmp_path / "out" / "trace.jsonl")]
    assert [r["prompt"] for r in sft] == PROMPTS
    assert [r["completion"] for r in sft] == ["I cannot help with that.", "Mix flour, water and yeast.",
                                              "I cannot help with that.", "I cannot help with that."]
    by_id = {p.id: p for p in constitution.principles}
    for row, t in zip(sft, trace):
        assert t["initial"].startswith(("Sure, here is how", "Hello!")) and len(t["rounds"]) == 2
        assert row["principles"] == [r["principle"] for r in t["rounds"]]
        for r in t["rounds"]:
            p = by_id[r["principle"]]
            assert (r["critique_request"], r["revision_request"]) == (p.critique, p.revision)
            assert r["critique"] == f"The answer fails the request that starts with '{p.critique.split()[0]}'."
    # principles are drawn per prompt and round from the seed: the same with a fresh run, other with another seed
    assert [r["principles"] for r in sft] == [[sl.pick(spec, constitution, i, k).id for k in (1, 2)] for i in range(4)]
    assert len({p for r in sft for p in r["principles"]}) > 1
    other = spec.model_copy(update={"seed": 1})
    assert [[sl.pick(other, constitution, i, k).id for k in (1, 2)] for i in range(4)] != \
        [r["principles"] for r in sft]
    lineage = json.load(open(tmp_path / "out" / "card.json"))["lineage"]
    assert lineage["constitution_sha256"] == constitution.sha256
    assert lineage["principles"] == sorted({p for r in sft for p in r["principles"]}) == sorted(made["principles_used"])


def test_the_constitutions_examples_come_before_every_critique_and_revision(tmp_path):
    """The shipped constitution's worked exchanges are the first turns, whole and in order, of every
    critique and revision conversation, and of none of the first answers; a constitution without
    examples puts the prompt first."""
    spec, constitution, prompts = load_spec(spec_file(tmp_path))
    assert len(constitution.examples) == 2
    seen: list[str] = []
    run.run(spec, constitution, prompts, ScriptedBackend(lambda p, s: seen.append(p) or write(p, s), lambda c, o: 0.0),
            None, "cai.yaml")
    shots = transcript(constitution.shots()).removesuffix("\n\nAssistant:")
    assert shots.startswith("Human: " + constitution.examples[0].prompt) and constitution.examples[1].revision in shots
    first, later = seen[:4], seen[4:]
    assert [t.startswith("Human: " + p) for t, p in zip(first, PROMPTS)] == [True] * 4
    assert len(later) == 16 and all(t.startswith(shots + "\n\nHuman: ") for t in later)
    assert [t[len(shots) + 9:].split("\n\n")[0] for t in later[:4]] == PROMPTS
    bare = replace(constitution, examples=())
    seen.clear()
    run.run(spec.model_copy(update={"out": str(tmp_path / "bare")}), bare, prompts,
            ScriptedBackend(lambda p, s: seen.append(p) or write(p, s), lambda c, o: 0.0), None, "cai.yaml")
    assert all(t.startswith("Human: " + PROMPTS[i % 4]) for i, t in enumerate(seen))


@dataclass(frozen=True)
class LengthJudge:
    """A judge preferring the longer answer; with `kill`, its first margin raises KeyboardInterrupt, as a
    kill while the feedback model reads would."""

    kill: bool = False
    verdicts: tuple[str, str] = (" A", " B")
    question: str = ""

    def margin(self, prompt: str, a: str, b: str, metadata: dict) -> float:
        if self.kill:
            raise KeyboardInterrupt
        return float(len(a) - len(b))


@pytest.mark.parametrize("stage, kill_at, kept", [("sl", 4, ["answers", "round-1-critiques", "round-1-revisions"]),
                                                   ("rl", None, ["samples"])])
def test_a_kill_leaves_nothing_and_the_rerun_resumes_to_the_same_bytes(tmp_path, stage, kill_at, kept):
    """Killed at round 2's critiques (sl) or while judging (rl): nothing at OUT, the finished steps kept
    beside it; the same command resumes after them, generates only the rest and writes the same bytes as
    an uninterrupted run; another spec's progress is refused, and --restart discards it."""
    from surgery.errors import OutputError

    def judge(kill: bool = False):
        return LengthJudge(kill=kill) if stage == "rl" else None

    (tmp_path / "whole").mkdir()
    whole, constitution, prompts = load_spec(spec_file(tmp_path / "whole", stage=stage))
    straight = ScriptedBackend(write, lambda c, o: 0.0)
    run.run(whole, constitution, prompts, straight, judge(), "cai.yaml")
    spec = load_spec(spec_file(tmp_path, stage=stage))[0]
    with pytest.raises(KeyboardInterrupt):
        run.run(spec, constitution, prompts, ScriptedBackend(write, lambda c, o: 0.0, fail_on_call=kill_at),
                judge(kill=True), "cai.yaml")
    assert not os.path.exists(tmp_path / "out")
    state = json.load(open(tmp_path / ".out.progress" / "state.json"))
    assert list(state["steps"]) == kept
    other = spec.model_copy(update={"seed": 1})
    with pytest.raises(OutputError, match=r"holds an interrupted run of another spec \(spec.seed: 0 there, 1 here"):
        run.run(other, constitution, prompts, ScriptedBackend(write, lambda c, o: 0.0), None, "cai.yaml")
    resumed, said = ScriptedBackend(write, lambda c, o: 0.0), []
    run.run(spec, constitution, prompts, resumed, judge(), "cai.yaml", echo=said.append)
    assert said == [f"resuming after {len(kept)} finished generation step(s): {', '.join(kept)}"]
    assert [c for c in resumed.calls if c[0] == "complete"] == \
        [c for c in straight.calls if c[0] == "complete"][len(kept):]  # the finished steps are not generated again
    for name in run.FILES[stage]:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "whole" / "out" / name).read_bytes()
    assert not os.path.exists(tmp_path / ".out.progress")
    with pytest.raises(KeyboardInterrupt):
        run.run(other.model_copy(update={"out": str(tmp_path / "again")}), constitution, prompts,
                ScriptedBackend(write, lambda c, o: 0.0, fail_on_call=1), None, "cai.yaml")
    run.run(spec.model_copy(update={"out": str(tmp_path / "again")}), constitution, prompts,
            ScriptedBackend(write, lambda c, o: 0.0), judge(), "cai.yaml", restart=True)
    assert (tmp_path / "again" / run.FILES[stage][0]).read_bytes() == \
        (tmp_path / "whole" / "out" / run.FILES[stage][0]).read_bytes()


def test_rl_stage_labels_by_the_judge_in_both_orders(tmp_path, llama):
    spec, constitution, prompts = load_spec(spec_file(tmp_path, stage="rl"))
    model = AutoModelForCausalLM.from_pretrained(llama["base"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(llama["base"])
    judge = LMJudge(model, tokenizer, templates.Template(templates.NONE, None), verdicts=(" one", " two"))
    fake = ScriptedBackend(write, lambda c, o: 0.0)
    made = run.run(spec, constitution, prompts, fake, judge, "cai.yaml")
    rows = [json.loads(line) for line in open(tmp_path / "out" / "preferences.jsonl")]
    assert fake.calls == [("complete", 8)]  # two samples of each prompt, one call
    assert made["skipped"] == 1 and [r["prompt"] for r in rows] == PROMPTS[:3]  # 'Say hello.': equal answers
    for i, r in enumerate(rows):
        principle = sl.pick(spec, constitution, i, 1)
        assert r["principle"] == principle.id
        ask = replace(judge, question=rl.question(principle, (" one", " two")))
        a, b = r["chosen"], r["rejected"]
        by_hand = 0.5 * (ask.preference(r["prompt"], a, b) - ask.preference(r["prompt"], b, a))
        assert by_hand > 0 and r["margin"] == pytest.approx(by_hand, rel=1e-6)
        assert principle.revision in ask.question and "(one) {first}\n(two) {second}" in ask.question
    assert json.load(open(tmp_path / "out" / "card.json"))["files"] == {
        "preferences.jsonl": hashlib.sha256((tmp_path / "out" / "preferences.jsonl").read_bytes()).hexdigest()}


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("case", ["missing_field", "duplicate_id", "other_tokenizer", "verdicts", "no_prompts",
                                  "greedy_rl"])
def test_bad_input_exit_2_nothing_written(tmp_path, monkeypatch, llama, case):
    other = tmp_path / "other"  # the same weights, a tokenizer with one more word
    shutil.copytree(llama["base"], other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["zebra"])
    tokenizer.save_pretrained(other)
    monkeypatch.chdir(tmp_path)
    principles = yaml.safe_load(open(SHIPPED_CONSTITUTION))
    if case == "missing_field":
        del principles["principles"][2]["revision"]
    if case == "duplicate_id":
        principles["principles"][3]["id"] = principles["principles"][0]["id"]
    constitution = tmp_path / "constitution.yaml"
    constitution.write_text(yaml.safe_dump(principles, sort_keys=False))
    changes = {"model": llama["base"], "constitution": str(constitution), "stage": "rl"}
    changes |= {"other_tokenizer": {"feedback": {"model": str(other), "verdicts": [" one", " two"]}},
                "verdicts": {"feedback": {"verdicts": [" A", " B"]}}, "greedy_rl": {"sampling": {"temperature": 0}},
                "no_prompts": {"prompts": str(tmp_path / "empty.jsonl")}}.get(case, {})
    (tmp_path / "empty.jsonl").write_text("\n")
    file = spec_file(tmp_path, **changes)
    inputs = [file, constitution, tmp_path / "prompts.jsonl", tmp_path / "empty.jsonl"]
    before = [sha(p) for p in inputs]
    result = CliRunner().invoke(main, ["cai", file])
    expected = {"missing_field": f"{constitution}: principles.2.revision", "duplicate_id": "principle ids must be "
                "unique; harm appear", "other_tokenizer": f"feedback.model {str(other)!r}: its tokenizer is not "
                "the policy's", "no_prompts": "empty.jsonl holds no prompt", "greedy_rl": "sampling.temperature",
                "verdicts": "feedback.verdicts: ' A' and ' B' encode to the same tokens"}
    assert result.exit_code == 2, result.output
    assert expected[case] in result.output and "Traceback" not in result.output
    assert not os.path.exists(tmp_path / "out") and before == [sha(p) for p in inputs]
    assert sorted(os.listdir(tmp_path)) == ["cai.yaml", "constitution.yaml", "empty.jsonl", "other", "prompts.jsonl"]

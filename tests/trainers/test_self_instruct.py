"""Self-Instruct with a scripted backend: the filters (ROUGE-L against the `rouge-score` package), the
rounds and their counts, the output a training run reads, the card, resuming after a kill, and bad input."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml
from click.testing import CliRunner
from rouge_score import rouge_scorer

from surgery.cli import main
from surgery.errors import OutputError
from tests.trainers.fake_backend import ScriptedBackend
from trainers import data
from trainers.self_instruct import prompts
from trainers.self_instruct.filters import FILTERS, Pool, judge
from trainers.self_instruct.prompts import Candidate
from trainers.self_instruct.run import run
from trainers.self_instruct.spec import SHIPPED_SEEDS, load_spec, read_seeds

SEEDS = read_seeds(SHIPPED_SEEDS, "seeds")
# Fresh instructions share few words with each other and with the seeds, so that ROUGE-L keeps them.
FRESH = ["Compose a limerick about a forgetful lighthouse keeper", "List four uses of baking soda around kitchens",
         "Translate the greeting into formal Spanish", "Summarise why bridges need expansion joints",
         "Name two rivers crossing central Europe", "Classify whether this headline mentions sport",
         "Propose a weekend itinerary for rainy Edinburgh", "Describe how bees communicate flower locations",
         "Convert ninety minutes into hours", "Outline steps for repotting an orchid safely",
         "Identify the verb tense used here", "Recommend warm socks for winter hiking trips",
         "Estimate monthly costs of owning bicycles", "Decide whether the email sounds urgent or relaxed",
         "Suggest icebreaker questions for shy coworkers", "Argue briefly for longer school lunch breaks"]
# One candidate for each filter (the seeds are pooled from the start).
SEED0 = SEEDS.rows[3]["instruction"]  # "Give three practical ways to save water at home."
FILTERED = {"malformed": "42 is the answer to everything here", "too_short": "Sing now",
            "too_long": " ".join(["word"] * 40), "blocklist": "Draw a picture of a sleeping fox",
            "exact_duplicate": SEED0, "near_duplicate": SEED0.upper().replace(".", " !"),
            "rouge": SEED0.replace("water", "energy")}


def write(prompt: str, seed: int) -> str:
    """Proposals: two fresh instructions and one filtered one, chosen by the seed; instances: input and output,
    none for instructions holding 'Outline' (a malformed instance), a label first for classification."""
    if prompt.startswith(prompts.PROPOSE_HEAD):
        picks = [FRESH[seed % len(FRESH)], FRESH[(seed // 7) % len(FRESH)], list(FILTERED.values())[seed % 7]]
        n = prompt.count("\nTask ") + 1
        return " " + picks[0] + "".join(f"\nTask {n + k}: {p}" for k, p in enumerate(picks[1:], 1)) + "\n\nDone"
    task = prompt.rsplit("Task: ", 1)[1].split("\n")[0]
    if "Outline" in task:
        return " just words with no parts\n\n"
    if prompt.endswith("Class label:"):
        return f" yes\nInput: example {seed % 100}\n\n"
    return f" none\nOutput: an answer to {task.lower()} number {seed % 100}\n\n"


def score(context: str, option: str) -> float:
    task = context.rsplit("Task: ", 1)[1]
    classification = "whether" in task.lower() or "classify" in task.lower()
    return {prompts.YES: 0.0 if classification else -2.0, prompts.NO: -1.0}[option]


def backend(**kw) -> ScriptedBackend:
    return ScriptedBackend(write, score, **kw)


def spec_file(tmp_path, **changes) -> str:
    spec = {"model": "unused", "out": str(tmp_path / "out"), "target": 12, "max_rounds": 6, "prompts_per_round": 4,
            "sampling": {"batch_size": 4}, "seed": 0}
    spec.update(changes)
    path = tmp_path / "si.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def test_rouge_filter_agrees_with_rouge_score():
    """A candidate is rejected by ROUGE-L exactly when rouge-score's rougeL F1 with some pooled instruction
    reaches 0.7. Worked by hand: 'give three practical ways to save energy at home' against the seed shares 8
    of 9 tokens in order, F1 = 8/9 = 0.889; 'give three ways to cook at home' shares 'give three ways to ...
    at home' (6 tokens of 7 and 9): P = 6/7, R = 6/9, F1 = 0.75."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = Pool(0.7)
    for s in SEEDS.rows:
        pool.add(s["instruction"])
    assert scorer.score(SEED0, FILTERED["rouge"])["rougeL"].fmeasure == pytest.approx(8 / 9)
    assert scorer.score(SEED0, "Give three ways to cook at home")["rougeL"].fmeasure == pytest.approx(0.75)
    candidates = [FILTERED["rouge"], "Give three ways to cook at home", "Give three tips for saving money on trips",
                  "Save water at home", "Explain to a child why the sky is blue", *FRESH]
    for text in candidates:
        best = max(scorer.score(s["instruction"], text)["rougeL"].fmeasure for s in SEEDS.rows)
        verdict = judge(Candidate(text, True), pool, 3, 30, ())
        assert (verdict.reason == "rouge") == (best >= 0.7), (text, best, verdict)
        assert float(verdict.detail.split()[0]) == pytest.approx(best, abs=5e-4)
    assert {judge(Candidate(t, True), pool, 3, 30, ()).reason for t in candidates} == {"rouge", None}


def test_each_filter_rejects_its_candidate():
    pool = Pool(0.7)
    for s in SEEDS.rows:
        pool.add(s["instruction"])
    blocklist = ("picture", "go to")
    for reason, text in FILTERED.items():
        assert judge(Candidate(text, True), pool, 3, 30, blocklist).reason == reason, text
    assert judge(Candidate(FRESH[0], False), pool, 3, 30, blocklist).reason == "malformed"  # cut off
    assert judge(Candidate("Please go to the shop for milk", True), pool, 3, 30, blocklist).detail == "go to"
    assert judge(Candidate("Explain how a goto statement works", True), pool, 3, 30, blocklist).reason is None
    pool.add(FRESH[0])  # accepted this round: a later copy is a duplicate, until it is taken back
    assert judge(Candidate(FRESH[0], True), pool, 3, 30, blocklist).reason == "exact_duplicate"
    pool.remove(FRESH[0])
    assert judge(Candidate(FRESH[0], True), pool, 3, 30, blocklist).reason is None


def test_parse_proposal_and_instances():
    found = prompts.parse_proposal(" First task here\nTask 10: Second one\nTask 11: Third", finished=False)
    assert [(c.instruction, c.finished) for c in found] == [("First task here", True), ("Second one", True),
                                                             ("Third", False)]
    assert [c.finished for c in prompts.parse_proposal(" A\nTask 10: B\nsomething else", False)] == [True, True]
    assert prompts.parse_instance(" none\nOutput: 42", False) == prompts.Instance("", "42")
    assert prompts.parse_instance(" some text", False) is None
    assert prompts.parse_instance(" positive\nInput: I loved it", True) == prompts.Instance("I loved it", "positive")
    assert prompts.parse_instance(" positive\nInput: none", True) is None


def test_run_counts_output_and_card(tmp_path):
    spec, seeds = load_spec(spec_file(tmp_path))
    fake = backend()
    made = run(spec, seeds, fake, "si.yaml", quiet=True)
    out = tmp_path / "out"
    rows = [json.loads(line) for line in open(out / "train.jsonl")]
    rejected = json.load(open(out / "rejected.json"))
    assert len(rows) == made["kept"] >= 12 and made["stopped"] == "target reached"
    assert made["proposed"] == made["kept"] + len(rejected) == sum(r["proposed"] for r in made["per_round"])
    assert made["rejected"] == {f: sum(r["reason"] == f for r in rejected) for f in FILTERS}
    assert made["rejected"]["bad_instance"] >= 1 and made["rejected"]["rouge"] >= 1
    assert all(r["kept"] + sum(r["rejected"].values()) == r["proposed"] for r in made["per_round"])
    kept = [r["instruction"] for r in rows]
    assert len(set(kept)) == len(kept) and not set(kept) & {s["instruction"] for s in seeds.rows}
    assert not any("Outline" in k for k in kept)
    assert {r["classification"] for r in rows} == {True, False}
    assert all(r["output"].startswith("yes" if r["classification"] else "an answer") for r in rows)
    # every proposal round is one batched call of prompts_per_round prompts
    assert ("complete", 4) in fake.calls and all(n <= 4 * 4 for _, n in fake.calls)
    # the file a training run reads
    dataset = data.read_dataset(str(out / "train.jsonl"), ("prompt_completion",), "data.train")
    assert len(dataset.rows) == len(rows)
    card = json.load(open(out / "card.json"))
    assert card["files"]["train.jsonl"] == hashlib.sha256((out / "train.jsonl").read_bytes()).hexdigest()
    assert card["first_words"]["distinct"] == len({k.split()[0].lower() for k in kept})
    assert (out / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| rouge |" in (out / "card.md").read_text()
    assert not os.path.exists(tmp_path / ".out.progress")


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / name).mkdir()
        spec, seeds = load_spec(spec_file(tmp_path / name, seed=seed))
        run(spec, seeds, backend(), "si.yaml", quiet=True)
    a, b, c = ((tmp_path / x / "out" / "train.jsonl").read_bytes() for x in "abc")
    assert a == b and a != c


def test_a_kill_leaves_nothing_and_the_rerun_resumes(tmp_path):
    (tmp_path / "whole").mkdir()
    whole, seeds = load_spec(spec_file(tmp_path / "whole"))
    uninterrupted = backend()
    run(whole, seeds, uninterrupted, "si.yaml", quiet=True)
    spec, _ = load_spec(spec_file(tmp_path))
    killed = backend(fail_on_call=4)  # round 2's instance call
    with pytest.raises(KeyboardInterrupt):
        run(spec, seeds, killed, "si.yaml", quiet=True)
    assert not os.path.exists(tmp_path / "out")
    state = json.load(open(tmp_path / ".out.progress" / "state.json"))
    assert state["round"] == 1 and state["kept"]
    resumed = backend()
    lines = []
    run(spec, seeds, resumed, "si.yaml", quiet=True, echo=lines.append)
    assert lines[0].startswith("resuming after round 1")
    # round 1 (a proposal and an instance call) is not generated again
    assert len([c for c in resumed.calls if c[0] == "complete"]) == \
        len([c for c in uninterrupted.calls if c[0] == "complete"]) - 2
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == (tmp_path / "whole" / "out" / "train.jsonl").read_bytes()
    assert not os.path.exists(tmp_path / ".out.progress")


def test_progress_of_another_spec_is_refused(tmp_path):
    spec, seeds = load_spec(spec_file(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run(spec, seeds, backend(fail_on_call=3), "si.yaml", quiet=True)
    other, _ = load_spec(spec_file(tmp_path, target=13))
    with pytest.raises(OutputError, match=r"holds an interrupted run of another spec \(spec.target: 12 there, 13 here"):
        run(other, seeds, backend(), "si.yaml", quiet=True)
    run(other, seeds, backend(), "si.yaml", quiet=True, restart=True)
    assert len(open(tmp_path / "out" / "train.jsonl").readlines()) >= 13


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("case", ["empty", "no_output", "not_json", "too_few", "backend", "vllm", "field"])
def test_bad_input_exit_2_nothing_written(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    seeds = tmp_path / "seeds.jsonl"
    rows = [{"instruction": f"Task number {k} to do", "output": "x"} for k in range(8)]
    seeds.write_text({"empty": "\n", "no_output": json.dumps({"instruction": "Do it now"}) + "\n",
                      "not_json": "{oops\n"}.get(case, "".join(json.dumps(r) + "\n" for r in rows)))
    changes = {"seeds": str(seeds), "model": "missing-model"}
    changes |= {"too_few": {"demonstrations": {"seed": 9}}, "field": {"target": 0}}.get(case, {})
    file = spec_file(tmp_path, **changes)
    before = {p: sha(p) for p in (file, seeds)}
    args = ["self-instruct", file] + {"backend": ["--backend", "ray"], "vllm": ["--backend", "vllm"]}.get(case, [])
    result = CliRunner().invoke(main, args)
    expected = {"empty": f"{seeds} holds no task", "no_output": f"{seeds}: line 1: field 'output' must be",
                "not_json": f"{seeds}: line 1: not valid JSON", "too_few": "demonstrations.seed (line",
                "backend": "--backend ray: unknown backend; choose one of hf, vllm",
                "vllm": "--backend vllm: vLLM is not installed here", "field": "target (line 3): Input should be"}
    assert result.exit_code == 2, result.output
    assert expected[case] in result.output and "Traceback" not in result.output
    assert sorted(os.listdir(tmp_path)) == ["seeds.jsonl", "si.yaml"]
    assert before == {p: sha(p) for p in (file, seeds)}


def test_train_reads_the_output_and_records_its_lineage(workdir):
    spec, seeds = load_spec(spec_file(workdir, out="generated"))
    run(spec, seeds, backend(), "si.yaml", quiet=True)
    result = CliRunner().invoke(main, ["train", write_run(workdir), "--quiet"])
    assert result.exit_code == 0, result.output
    lineage = json.load(open(workdir / "out" / "run" / "final" / "lineage.json"))
    file = "generated/train.jsonl"
    made = lineage["data"][0]["generated_by"][file]
    assert made["generator"] == "self-instruct" and made["seeds_sha256"] == seeds.sha256
    # an edited file is no longer attributed to the generator
    with open(file, "a") as f:
        f.write(json.dumps({"prompt": "an added row", "completion": "by hand"}) + "\n")
    result = CliRunner().invoke(main, ["train", write_run(workdir, "out/edited"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "generated_by" not in json.load(open(workdir / "out" / "edited" / "final" / "lineage.json"))["data"][0]


def write_run(folder, out: str = "out/run") -> str:
    from tests.trainers.conftest import spec_dict

    spec = spec_dict(data={"train": "generated/train.jsonl"}, schedule={"warmup_steps": 1, "total_steps": 2}, out=out)
    path = folder / f"{out.replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def test_shipped_spec_validates():
    spec, seeds = load_spec("runs/self-instruct-smollm2.yaml")
    assert spec.target == 100 and len(seeds.rows) == 32 and sum(s["classification"] for s in seeds.rows) >= 4


def test_transformers_backend_batches_seeds_and_stops(llama):
    from trainers.generation import prompt_ids
    from trainers.judges import continuation_logp
    from trainers.synthetic import hf

    prompts_ = ["the water", "we will", "the water", "people said"]
    batched = hf.load(llama["base"], "none", "x.yaml", "model", 3)
    single = hf.load(llama["base"], "none", "x.yaml", "model", 1)
    kw = {"n": 2, "max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0, "seed": 5}
    free = batched.complete(prompts_, **kw)
    assert free == single.complete(prompts_, **kw) and len(free) == 8
    assert free[0] != free[4]  # a repeated prompt gets draws of its own
    stop = next(w for c in free for w in c.text.split()[1:] if w in ("the", "we", "to", "of", "and"))
    cut = batched.complete(prompts_, stop=(f" {stop}",), **kw)
    for whole, part in zip(free, cut):
        assert f" {stop}" not in part.text and whole.text.startswith(part.text)
        assert part.finished == (f" {stop}" in whole.text or whole.finished)
    ids = prompt_ids(batched.tokenizer, batched.template, "the water")
    want = [continuation_logp(batched.model, ids, batched.tokenizer(o, add_special_tokens=False)["input_ids"])
            for o in (" will", " people said")]
    assert batched.logps("the water", [" will", " people said"]) == pytest.approx(want, abs=1e-5)
    result = CliRunner().invoke(main, ["self-instruct", "runs/self-instruct-smollm2.yaml", "--set", "model=nowhere",
                                       "--set", "out=/nonexistent/out"])
    assert result.exit_code == 2 and "model 'nowhere': cannot load a causal LM and its tokenizer" in result.output

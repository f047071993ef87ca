"""`surgery train` and `surgery label` as a user meets them: each mistake (an out folder that is a file or
an input, a second run into an out being written, a damaged checkpoint, a resume after an input changed,
a run started again over an earlier one) exits 2 with one located message, writes nothing, and leaves
the inputs' bytes as they were; where the message gives advice, following it works."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from surgery.io.output import lock_file
from tests.surgery.reference_checkpoints import digest, run_cli
from tests.trainers.conftest import spec_dict
from trainers import checkpoint, models
from trainers.loops import train
from trainers.spec import load_run

INPUTS = ("own", "data")  # the fixture's base and data, compared before and after every command


@pytest.fixture
def work(workdir, base) -> Path:
    """run.yaml trains (full, save_every 2, 6 steps) a base of its own (`own`, which some cases damage)
    on a data folder of its own (`data`), into out/run."""
    shutil.copytree(base, "own")
    os.mkdir("data")
    shutil.copy("runs/data/instruct.jsonl", "data/train.jsonl")
    spec = spec_dict(base="own", data={"train": "data", "eval": "runs/data/eval.jsonl"}, save_every=2)
    Path("run.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return workdir


def line_of(key: str, file: str = "run.yaml") -> int:
    return next(i for i, text in enumerate(open(file), start=1) if text.startswith(f"{key}:"))


def state(*paths: str) -> dict:
    """The bytes of every file under `paths` (those that exist), and which paths exist at all."""
    present = [p for p in paths if os.path.lexists(p)]
    full = [p for p in present if os.path.isfile(p) or glob.glob(os.path.join(p, "**", "*"), recursive=True)]
    return {"present": present, "files": digest(*full) if full else {}}


def refused(*args: str, inputs: tuple[str, ...] = INPUTS, untouched: tuple[str, ...] = ("out",)) -> str:
    """`surgery ARGS`: exit 2 with one `error:` line and no traceback; the inputs' bytes and everything
    under `untouched` (the output) exactly as before. Returns the output."""
    before = digest(*inputs), state(*untouched)
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert (digest(*inputs), state(*untouched)) == before
    assert glob.glob("out/.*") == [], glob.glob("out/.*")  # no lock, partial or staged folder left
    return errors[0]


def succeeds(*args: str) -> str:
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def never_loads(*args, **kwargs):
    raise AssertionError("a model or tokenizer was loaded before the refusal")


# ---- the out folder (cases 4 and 5) -------------------------------------------------------------------

def test_out_that_is_a_file_is_refused_before_anything_loads(work, monkeypatch):
    Path("taken").write_text("my notes\n")
    monkeypatch.setattr(models, "load_tokenizer", never_loads)
    monkeypatch.setattr(models, "load_weights", never_loads)
    error = refused("train", "run.yaml", "--quiet", "--set", "out=taken", inputs=(*INPUTS, "taken"))
    assert error == (f"error: run.yaml: out (line {line_of('out')}): 'taken' is a file; a run writes a folder there "
                     "(checkpoint-N/, final/, log.jsonl): choose another out")


@pytest.mark.parametrize("out, relation, field", [
    ("own", "is", "base"), ("own/run", "lies inside", "base"), (".", "holds", "base"), ("linked", "is", "base"),
    ("linked/run", "lies inside", "base"), ("data", "is", "data.train.0"), ("data/run", "lies inside", "data.train.0"),
    ("ref/x", "lies inside", "objective.reference"), ("rm", "is", "objective.reward_model"),
    ("runs/data/eval.jsonl", "is", "data.eval.0")])
def test_out_never_overlaps_an_input(out, relation, field, work, monkeypatch):
    """Resolved paths: `linked` is a link to the base folder."""
    os.symlink("own", "linked")
    shutil.copytree("own", "ref")
    shutil.copytree("own", "rm")
    monkeypatch.setattr(models, "load_tokenizer", never_loads)
    objective = {"objective.reference": ["--set", "objective.name=dpo", "--set", "objective.reference=ref"],
                 "objective.reward_model": ["--set", "objective.name=ppo", "--set", "objective.reward_model=rm",
                                            "--set", "batch.grad_accum=1"]}.get(field, [])
    inputs = (*INPUTS, "ref", "rm")
    error = refused("train", "run.yaml", "--quiet", "--set", f"out={out}", *objective, inputs=inputs,
                    untouched=(*inputs, "out"))
    path = {"base": "own", "data.train.0": "data", "objective.reference": "ref", "objective.reward_model": "rm",
            "data.eval.0": "runs/data/eval.jsonl"}[field]
    assert error.startswith(f"error: run.yaml: out (line {line_of('out')}): '{out}' {relation} {field} '{path}'; "
                            "a run never writes where its inputs are"), error


def cut(path: str, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


# ---- damaged checkpoints (case 6) ---------------------------------------------------------------------

def stop_at_4(method: str = "full") -> None:
    """A run stopped after step 4 of 6: out/run/checkpoint-2 and checkpoint-4."""
    train(load_run("run.yaml", (f"method.name={method}",)), stop_after=4, quiet=True)
    assert sorted(os.listdir("out/run")) == ["checkpoint-2", "checkpoint-4", "log.jsonl"]


DAMAGE = {  # file of checkpoint-4 -> (method, what is done to it, what the message says of it)
    "state.json": ("full", lambda p: cut(p, 20), "is not valid JSON"),
    "optimizer.pt": ("full", os.remove, "is missing"),
    "schedule_rng.pt": ("full", lambda p: cut(p, 300), "cannot be read"),
    "model.safetensors": ("full", lambda p: cut(p, os.path.getsize(p) - 64), "truncated: tensor"),
    "trainable.safetensors": ("lora", lambda p: cut(p, os.path.getsize(p) - 64), "truncated: tensor"),
}


@pytest.mark.parametrize("name", DAMAGE)
def test_damaged_checkpoint_names_the_file_and_the_intact_one(name, work):
    method, damage, said = DAMAGE[name]
    stop_at_4(method)
    path = os.path.join("out/run/checkpoint-4", "" if name == "model.safetensors" else "trainer_state", name)
    damage(path)
    resume = ("train", "run.yaml", "--quiet", "--set", f"method.name={method}")
    error = refused(*resume, "--resume", "out/run/checkpoint-4")
    assert error.startswith(f"error: --resume out/run/checkpoint-4: the checkpoint is damaged: {path}"), error
    assert said in error
    assert error.endswith("the latest intact checkpoint before it is out/run/checkpoint-2: continue with --resume "
                          "out/run/checkpoint-2"), error
    assert succeeds(*resume, "--resume", "out/run/checkpoint-2").strip().endswith("wrote out/run/final")


def test_no_intact_checkpoint_left_advises_a_fresh_run(work):
    stop_at_4()
    for step in (2, 4):
        os.remove(f"out/run/checkpoint-{step}/trainer_state/optimizer.pt")
    error = refused("train", "run.yaml", "--quiet", "--resume", "out/run/checkpoint-4")
    assert error.endswith("no earlier checkpoint of this run is intact: start the run again (with --force to replace "
                          "it)"), error
    error = refused("train", "run.yaml", "--quiet")  # the run again: told the same
    assert "holds an unfinished run (checkpoint-2, checkpoint-4), none of whose checkpoints is intact" in error
    assert succeeds("train", "run.yaml", "--quiet", "--force").strip().endswith("wrote out/run/final")
    assert sorted(os.listdir("out/run")) == ["checkpoint-2", "checkpoint-4", "final", "log.jsonl"]
    assert checkpoint.intact("out/run/checkpoint-4")


# ---- resume after an input changed (case 2) -----------------------------------------------------------

def test_resume_after_the_data_changed_names_the_file(work):
    stop_at_4()
    with open("data/train.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "write sun two", "completion": "sun sun"}) + "\n")
    error = refused("train", "run.yaml", "--quiet", "--resume", "out/run/checkpoint-4")
    assert re.match(r"error: --resume out/run/checkpoint-4: run.yaml: data.train.0 \(line \d+\): file "
                    r"'data/train.jsonl' changed \(sha256 [0-9a-f]{12}\.\.\. there, [0-9a-f]{12}\.\.\. here\) since "
                    r"the checkpoint was written; put the inputs back as they were, or pass --allow-data-change", error)
    succeeds("train", "run.yaml", "--quiet", "--resume", "out/run/checkpoint-4", "--allow-data-change")
    lineage = json.load(open("out/run/final/lineage.json"))
    assert len(lineage["allowed_changes"]) == 1 and "'data/train.jsonl' changed" in lineage["allowed_changes"][0]
    assert lineage["data"][0]["sha256"] == {"data/train.jsonl": checkpoint.sha256("data/train.jsonl")}


def test_resume_after_the_base_changed_names_its_file(work):
    stop_at_4()
    tensors = load_file("own/model.safetensors")
    tensors["model.norm.weight"] *= 1.01
    save_file(tensors, "own/model.safetensors", metadata={"format": "pt"})
    error = refused("train", "run.yaml", "--quiet", "--resume", "out/run/checkpoint-4")
    assert error.startswith("error: --resume out/run/checkpoint-4: run.yaml: base (line 1): file "
                            "'own/model.safetensors' changed (sha256 "), error
    os.remove("data/train.jsonl")  # a file gone from a data folder is named too (the folder holds another)
    Path("data/other.jsonl").write_text(json.dumps({"prompt": "write sun two", "completion": "sun sun"}) + "\n")
    error = refused("train", "run.yaml", "--quiet", "--resume", "out/run/checkpoint-4")
    assert "(and 2 more change(s))" in error


def test_allow_data_change_needs_resume(work):
    error = refused("train", "run.yaml", "--quiet", "--allow-data-change")
    assert error == "error: --allow-data-change: it lets a resume continue on changed inputs; give --resume too"
    stop_at_4()
    error = refused("train", "run.yaml", "--quiet", "--force", "--resume", "out/run/checkpoint-4", untouched=())
    assert "--resume continues a run and --force starts one afresh over it; give one of them" in error


# ---- a run started again over an earlier one (cases 11 and 26) ----------------------------------------

def test_an_unfinished_run_is_continued_from_its_latest_checkpoint(work):
    """Checkpoints 2 to 12: the latest is checkpoint-12, not checkpoint-10 (the first in string order)."""
    longer = ("--set", "schedule.total_steps=14")
    train(load_run("run.yaml", ("schedule.total_steps=14",)), stop_after=12, quiet=True)
    error = refused("train", "run.yaml", "--quiet", *longer)
    assert error == ("error: out 'out/run' holds an unfinished run (checkpoint-2, ..., checkpoint-12: 6 checkpoints); "
                     "continue it with --resume out/run/checkpoint-12, or choose another out (--set out=out/run-2) or "
                     "pass --force to replace it once this run finishes")
    advice = re.search(r"--resume (\S+),", error).group(1)
    assert succeeds("train", "run.yaml", "--quiet", *longer, "--resume", advice).strip().endswith("wrote out/run/final")
    error = refused("train", "run.yaml", "--quiet", "--set", "optim.lr=0.001")  # another spec cannot resume it
    assert "holds a finished run" in error
    shutil.rmtree("out/run/final")
    error = refused("train", "run.yaml", "--quiet", *longer, "--set", "optim.lr=0.001")
    assert ("holds an unfinished run (checkpoint-2, ..., checkpoint-12: 6 checkpoints), written with other settings "
            "(optim.lr: 0.003 there, 0.001 here), so this spec cannot resume it; choose another out") in error


def test_a_finished_run_says_where_its_model_is_and_both_ways_on_work(work):
    succeeds("train", "run.yaml", "--quiet")
    error = refused("train", "run.yaml", "--quiet")
    assert error == ("error: out 'out/run' holds a finished run, whose model is out/run/final; to train again, choose "
                     "another out (--set out=out/run-2) or pass --force to replace it once this run finishes")
    assert succeeds("train", "run.yaml", "--quiet", "--set", "out=out/run-2").strip().endswith("wrote out/run-2/final")
    before = digest("out/run")
    output = succeeds("train", "run.yaml", "--quiet", "--force", "--set", "save_every=3", "--set", "optim.lr=0.001")
    assert output.strip().endswith("wrote out/run/final")
    assert sorted(os.listdir("out/run")) == ["checkpoint-3", "final", "log.jsonl"]  # the earlier's were 2 and 4
    starts = [r for r in map(json.loads, open("out/run/log.jsonl")) if r.get("event") == "start"]
    assert len(starts) == 1 and json.load(open("out/run/final/lineage.json"))["hyper_parameters"]["optim"]["lr"] == 1e-3
    assert digest("out/run")["out/run/final/model.safetensors"] != before["out/run/final/model.safetensors"]
    assert glob.glob("out/.*") == []


def test_a_forced_run_that_fails_leaves_the_earlier_run_as_it_was(work, monkeypatch):
    succeeds("train", "run.yaml", "--quiet")
    before = digest("out/run")
    real = checkpoint.write_state

    def failing(folder, step, *args, **kwargs):
        if step == 4:
            raise OSError(28, "No space left on device")
        return real(folder, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "write_state", failing)
    result = run_cli("train", "run.yaml", "--quiet", "--force", "--set", "optim.lr=0.001")
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert digest("out/run") == before and glob.glob("out/.*") == []


# ---- surgery label (case 4) -------------------------------------------------------------

def label_spec(**changes) -> dict:
    spec = {"policy": "own", "prompts": "runs/data/add.jsonl", "judge": {"kind": "rule", "function": "world.add"},
            "chat_template": "chatml", "max_new_tokens": 4, "out": "out/pairs.jsonl"}
    return {**spec, **changes}


@pytest.mark.parametrize("out, said", [
    ("runs/data/add.jsonl", "'runs/data/add.jsonl' is prompts 'runs/data/add.jsonl'"),
    ("own/pairs.jsonl", "'own/pairs.jsonl' lies inside policy 'own'"),
    ("data", "'data' is a folder; give the path of the JSONL file to write, e.g. data/pairs.jsonl")])
def test_label_out_apart_from_its_inputs(out, said, work, monkeypatch):
    Path("label.yaml").write_text(yaml.safe_dump(label_spec(out=out), sort_keys=False))
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", never_loads)
    error = refused("label", "label.yaml", inputs=(*INPUTS, "runs/data/add.jsonl"))
    assert error.startswith(f"error: label.yaml: out (line {line_of('out', 'label.yaml')}): {said}"), error


# ---- two writers of one out (case 1) ------------------------------------------------------------------

@pytest.fixture
def holder(work):
    """Another process holding the locks of out/run, out/pairs.jsonl and out/proof (as a run writing them does)."""
    code = ("import sys; from surgery.io.output import output_lock\n"
            "with output_lock('out/run'), output_lock('out/pairs.jsonl'), output_lock('out/proof'):\n"
            "    print('held', flush=True); sys.stdin.read()")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.stdin.close()
    process.wait(timeout=30)


def refused_while_held(process, *args: str) -> str:
    """Refused naming the output and the holder's pid; nothing beside the holder's lock files written."""
    before = digest(*INPUTS), sorted(os.listdir("out"))
    result = run_cli(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (digest(*INPUTS), sorted(os.listdir("out"))) == before
    assert before[1] == [".pairs.jsonl.lock", ".proof.lock", ".run.lock"]
    return result.output


def test_a_second_run_into_an_out_being_written_names_the_holder(holder, monkeypatch):
    monkeypatch.setattr(models, "load_tokenizer", never_loads)
    output = refused_while_held(holder, "train", "run.yaml", "--quiet")
    assert f"error: output {os.path.abspath('out/run')!r} is being written by another process (pid {holder.pid})" \
        in output, output
    rounds = ("--set", "objective.name=rft", "--set", "objective.reward_functions=[world.add]", "--set",
              "data.train=runs/data/add-train.jsonl", "--set", "data.eval=[]")  # the rounds' loop claims it too
    assert f"(pid {holder.pid})" in refused_while_held(holder, "train", "run.yaml", "--quiet", *rounds)


def test_a_second_label_into_an_out_being_written_names_the_holder(holder, monkeypatch):
    Path("label.yaml").write_text(yaml.safe_dump(label_spec(), sort_keys=False))
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", never_loads)
    output = refused_while_held(holder, "label", "label.yaml")
    assert f"error: output {os.path.abspath('out/pairs.jsonl')!r} is being written by another process " \
           f"(pid {holder.pid})" in output, output


def test_a_stale_lock_of_a_killed_run_is_reported_and_taken_over(work):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.makedirs("out")
    Path(lock_file("out/run")).write_text(f"{dead.pid}\n")
    output = succeeds("train", "run.yaml", "--quiet")
    assert f"warning: output {os.path.abspath('out/run')!r}: took over the stale lock of pid {dead.pid}" in output
    assert output.strip().endswith("wrote out/run/final") and os.listdir("out") == ["run"]


def test_the_world_and_proof_commands_claim_their_folder(holder):
    """`world`, `moe-proof` and `transplant-proof` hold their output folder for the whole command."""
    for args in (("world", "out/proof", "--specs", "runs"), ("moe-proof", "own", "out/proof"),
                 ("transplant-proof", "own", "out/proof", "--donor", "own")):
        output = refused_while_held(holder, *args)
        assert f"error: output {os.path.abspath('out/proof')!r} is being written by another process " \
               f"(pid {holder.pid})" in output, (args, output)


@pytest.mark.parametrize("args, said", [
    (("moe-proof", "own", "own"), "OUT 'own' is ZOO 'own'"),
    (("moe-proof", "own", "own/moe"), "OUT 'own/moe' lies inside ZOO 'own'"),
    (("moe-proof", "data", "own", "--expert", "add=own"), "OUT 'own' is --expert add 'own'"),
    (("transplant-proof", "data", "own", "--donor", "data", "--model", "own"), "OUT 'own' is --model 'own'")])
def test_proof_outputs_apart_from_their_inputs(args, said, work):
    error = refused(*args)
    assert error.startswith(f"error: {said}"), error

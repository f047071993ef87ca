"""Bad inputs give one located message (file, field or line) that says how to fix it."""

from __future__ import annotations

import json

import pytest
import yaml

from surgery.errors import InputError, OutputError, SpecError
from tests.trainers.conftest import spec_dict
from trainers.loops import train
from trainers.spec import load_run, parse_run


def write_spec(path, spec: dict) -> str:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def test_unknown_field_with_its_line(tmp_path):
    spec = spec_dict()
    spec["optim"] = {"lr": 1e-3, "momentum": 0.9}
    file = write_spec(tmp_path / "run.yaml", spec)
    with pytest.raises(SpecError) as e:
        load_run(file)
    line = next(i for i, text in enumerate(open(file), start=1) if "momentum" in text)
    assert str(e.value) == f"{file}: optim.momentum (line {line}): unknown field 'momentum'"


def test_bounds_and_missing_fields():
    with pytest.raises(SpecError, match=r"run.yaml: optim.lr: Input should be greater than 0 \(got -0.1\)"):
        parse_run(spec_dict(optim={"lr": -0.1}), "run.yaml")
    spec = spec_dict()
    del spec["schedule"]
    with pytest.raises(SpecError, match="run.yaml: schedule: required field is missing"):
        parse_run(spec, "run.yaml")
    with pytest.raises(SpecError, match=r"optim.betas: each beta must be in \[0, 1\)"):
        parse_run(spec_dict(optim={"lr": 1e-3, "betas": [0.9, 1.0]}), "run.yaml")


def test_unknown_objective_method_and_their_fields():
    with pytest.raises(SpecError,
                       match="objective.name: unknown objective 'dop'; choose one of dpo, .*pretrain.*, sft"):
        parse_run(spec_dict(objective={"name": "dop"}), "run.yaml")
    with pytest.raises(SpecError, match="method.name: unknown method 'lor'; choose one of .*freeze, full"):
        parse_run(spec_dict(method={"name": "lor"}), "run.yaml")
    with pytest.raises(SpecError, match="method.rank: unknown field 'rank' of method 'freeze'; "
                                        "its fields are name, layers, embeddings"):
        parse_run(spec_dict(method={"name": "freeze", "rank": 8}), "run.yaml")
    with pytest.raises(SpecError, match=r"method.layers: Input should be greater than or equal to 0 \(got -1\)"):
        parse_run(spec_dict(method={"name": "freeze", "layers": -1}), "run.yaml")
    with pytest.raises(SpecError, match="chat_template: unknown template 'vicuna'; choose one of chatml, llama2"):
        parse_run(spec_dict(chat_template="vicuna"), "run.yaml")


def test_temperature_needs_temperature_sampling():
    with pytest.raises(SpecError, match="run.yaml: data.temperature: a temperature needs sampling: temperature"):
        parse_run(spec_dict(data={"train": "a.jsonl", "temperature": 2}), "run.yaml")


def test_overrides(tmp_path):
    file = write_spec(tmp_path / "run.yaml", spec_dict(data={"train": [{"path": "runs/data/instruct.jsonl"}]}))
    run = load_run(file, ("optim.lr=3e-4", "batch.on_overflow=error", "method.name=freeze", "data.train.0.weight=2"))
    assert run.spec.optim.lr == 3e-4 and run.spec.batch.on_overflow == "error"
    assert run.method_config.layers == 1 and run.spec.data.train[0].weight == 2
    with pytest.raises(SpecError, match=r"--set optim.lr.x: 'optim.lr' is not a mapping"):
        load_run(file, ("optim.lr.x=1",))
    with pytest.raises(SpecError, match="write overrides as field.path=value"):
        load_run(file, ("optim.lr",))
    with pytest.raises(SpecError, match=r"optim.lr \(line \d+\): Input should be a valid number.*\(got .fast.\)"):
        load_run(file, ("optim.lr=fast",))


def write_rows(path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_row_missing_a_field_names_file_and_line(workdir):
    data = write_rows(workdir / "bad.jsonl", [{"prompt": "a", "completion": "b"}, "", {"prompt": "the"}])
    with pytest.raises(InputError, match=r"bad.jsonl: line 3: missing field 'completion' "
                                         r"\(a prompt/completion row has prompt, completion\)"):
        train(parse_run(spec_dict(data={"train": data}), "run.yaml"), quiet=True)
    data = write_rows(workdir / "bad2.jsonl", [{"prompt": "a", "completion": "b"}, "{not json"])
    with pytest.raises(InputError, match=r"bad2.jsonl: line 2: not valid JSON"):
        train(parse_run(spec_dict(data={"train": data}), "run.yaml"), quiet=True)
    data = write_rows(workdir / "other.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(InputError, match=r"other.jsonl: line 1: a row of this objective has prompt/completion or "
                                         r"messages; found answer, question"):
        train(parse_run(spec_dict(data={"train": data}), "run.yaml"), quiet=True)
    data = write_rows(workdir / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(InputError, match="chat.jsonl: line 1: the conversation has no assistant turn"):
        train(parse_run(spec_dict(data={"train": data}), "run.yaml"), quiet=True)
    with pytest.raises(InputError, match=r"line 1: this objective trains on text rows, not 'prompt_completion' rows"):
        train(parse_run(spec_dict(objective={"name": "pretrain"}), "run.yaml"), quiet=True)
    with pytest.raises(InputError, match=r"^run.yaml: data.train.0: no such file or folder 'nowhere.jsonl'"):
        train(parse_run(spec_dict(data={"train": "nowhere.jsonl"}), "run.yaml"), quiet=True)


def test_overflow_error_names_the_row(workdir):
    spec = spec_dict(batch={"size": 4, "max_length": 8, "on_overflow": "error"})
    with pytest.raises(InputError, match=r"runs/data/instruct.jsonl: line 1: longer than batch.max_length=8 tokens"):
        train(parse_run(spec, "run.yaml"), quiet=True)


def test_overflow_truncate_is_counted_in_the_log(workdir):
    train(parse_run(spec_dict(batch={"size": 4, "max_length": 12}), "run.yaml"), quiet=True)
    start = json.loads(open("out/run/log.jsonl").readline())
    # "what is the first word of X and people" rows are 21 tokens in ChatML, "write X two" rows 11
    assert start["event"] == "start" and start["truncated"] == 13 and start["rows"] == [26]


def test_template_missing_from_the_tokenizer(workdir, build):
    from transformers import AutoTokenizer

    folder = build(str(workdir / "plain"), "llama")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = None
    tok.save_pretrained(folder)
    (workdir / "plain" / "chat_template.jinja").unlink(missing_ok=True)
    spec = spec_dict(base=folder, chat_template="tokenizer")
    with pytest.raises(SpecError, match="run.yaml: chat_template: the base model's tokenizer has no chat template; "
                                        "name one of chatml"):
        train(parse_run(spec, "run.yaml"), quiet=True)


def test_batch_must_split_across_micro_batches(workdir):
    with pytest.raises(SpecError, match="batch.size: 5 rows do not split into 1 process"):
        train(parse_run(spec_dict(batch={"size": 5, "grad_accum": 2}), "run.yaml"), quiet=True)


def test_freeze_more_layers_than_the_model_has(workdir):
    with pytest.raises(SpecError, match="^run.yaml: method.layers: the model has 2 decoder layers; cannot freeze 3"):
        train(parse_run(spec_dict(method={"name": "freeze", "layers": 3}), "run.yaml"), quiet=True)


def test_a_new_run_never_overwrites_checkpoints(workdir):
    train(parse_run(spec_dict(save_every=3), "run.yaml"), stop_after=3, quiet=True)
    with pytest.raises(OutputError, match=r"out 'out/run' holds an unfinished run \(checkpoint-3\); continue it "
                                          r"with --resume out/run/checkpoint-3, or choose another out"):
        train(parse_run(spec_dict(), "run.yaml"), quiet=True)


# ---- the model folders a spec names, read with the project's reader before anything loads -------------------

def _damaged(base: str, folder, damage: str) -> str:
    """A copy of the tiny base with its weights cut short, or with one NaN, or a path with nothing there."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    if damage == "missing":
        return str(folder)
    shutil.copytree(base, folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size - 100)
    else:
        tensors = load_file(weights)
        tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = torch.nan
        save_file(tensors, weights, metadata={"format": "pt"})
    return str(folder)


DAMAGE = {"truncated": ["model.safetensors: truncated: tensor 'model.norm.weight' ends at byte ", " but the file has "],
          "missing": ["model folder '{path}' does not exist; give the folder of a Hugging Face model"],
          "NaN": ["'{path}' already holds 1 NaN of 2048 values in tensor 'model.layers.1.mlp.up_proj.weight': the "
                  "model is damaged before anything runs"]}
LABEL = {"policy": "models/base", "prompts": "runs/data/eval.jsonl", "chat_template": "chatml", "max_new_tokens": 4,
         "judge": {"kind": "lm", "model": "models/base", "verdicts": [" one", " two"]}, "out": "out/pairs.jsonl"}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command, field, line", [("train", "base", 1), ("train", "objective.reference", 4),
                                                  ("label", "policy", 1), ("label", "judge.model", 7)])
def test_a_damaged_or_missing_model_folder_is_located_before_anything_loads(workdir, base, command, field, line,
                                                                           damage):
    """Train and label read the folders their spec names with the project's reader first. Before: a truncated
    file was SafetensorError (exit 1); a missing folder went to the model hub ('Repo id must be ...', retried);
    a NaN base stopped at step 1 with advice about save_every, and a NaN policy wrote pairs with exit 0."""
    import hashlib

    from click.testing import CliRunner

    from surgery.cli import main

    path = _damaged(base, workdir / "damaged", damage)
    spec = spec_dict(objective={"name": "dpo"}, data={"train": "runs/data/prefs.jsonl"}) if command == "train" \
        else json.loads(json.dumps(LABEL))
    parent, _, leaf = field.rpartition(".")
    (spec[parent] if parent else spec)[leaf] = path
    file = workdir / f"{command}.yaml"
    write_spec(file, spec)
    assert file.read_text().splitlines()[line - 1].lstrip().startswith(f"{leaf}: ")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in workdir.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, [command, str(file)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.startswith(f"error: {file}: {field} (line {line}): ")
    for text in DAMAGE[damage]:
        assert text.format(path=path) in result.output, result.output
    assert not (workdir / "out").exists()
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in workdir.rglob("*") if p.is_file()}

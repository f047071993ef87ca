"""The three kinds of spec file (a merge, a training run, a labelling run) are read by one loader
(`surgery.spec_file`): a file that is not YAML, or a field that does not validate, is one located line
on stderr with exit code 2, the YAML line included, and nothing is written."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from surgery.cli import main
from surgery.errors import SpecError
from surgery.merge.spec import load_spec
from trainers.judges import load_label_spec
from trainers.spec import load_run

COMMANDS = {"merge": ["merge", "{spec}", "{out}"], "train": ["train", "{spec}"], "label": ["label", "{spec}"]}
NOT_YAML = {
    "merge": "merge_method: ties\nbase_model: base\nmodels:\n  - model: [a\n",
    "train": "base: models/base\nobjective: {name: sft\noptim: {lr: 1e-4}\n",
    "label": "policy: p\nprompts: p.jsonl\njudge:\n  kind: rule\n  function: 'world.add\nout: o.jsonl\n",
}
BAD_FIELD = {  # (YAML, the located message)
    "merge": ("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\ndtype: float8\n",
              "spec.yaml: dtype (line 5): Input should be 'float32', 'float16', 'bfloat16' or 'float64' "
              "(got 'float8')"),
    "train": ("base: b\nobjective: {name: sft}\ndata: {train: a.jsonl}\noptim:\n  lr: 2\nschedule: {total_steps: 2}\n"
              "out: o\n", "spec.yaml: optim.lr (line 5): Input should be less than or equal to 1 (got 2)"),
    "label": ("policy: p\nprompts: p.jsonl\njudge:\n  kind: oracle\nout: o.jsonl\n",
              "spec.yaml: judge.kind (line 4): Input should be 'reward_model', 'lm' or 'rule' (got 'oracle')"),
}


def run(kind: str, text: str, tmp_path) -> str:
    spec, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec.write_text(text)
    args = [a.format(spec=spec, out=out) for a in COMMANDS[kind]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists()
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_not_yaml_is_located(kind, tmp_path):
    line = run(kind, NOT_YAML[kind], tmp_path)
    assert f"{tmp_path / 'spec.yaml'}: line " in line and ": not valid YAML (" in line


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_bad_field_is_located_with_its_line(kind, tmp_path):
    text, message = BAD_FIELD[kind]
    assert run(kind, text, tmp_path).endswith(message)


@pytest.mark.parametrize("load", [load_spec, load_run, load_label_spec])
def test_the_line_of_a_yaml_error_is_the_parser_s(load, tmp_path):
    """The error is at the line where the parser stopped: here the second colon on line 3."""
    spec = tmp_path / "s.yaml"
    spec.write_text("a: 1\nb: 2\nc: d: e\nf: 5\n")
    with pytest.raises(SpecError) as e:
        load(str(spec))
    assert e.value.line == 3 and e.value.field == "" and str(e.value).startswith(f"{spec}: line 3: not valid YAML")


def test_override_that_is_not_yaml(tmp_path):
    spec = tmp_path / "run.yaml"
    spec.write_text("base: b\n")
    with pytest.raises(SpecError, match=r"run.yaml: --set optim.betas: '\[0.9' is not a YAML value"):
        load_run(str(spec), ("optim.betas=[0.9",))


MALFORMED = {  # bytes of a spec the YAML parser cannot take, and the located message
    "latin-1": (b"policy: models/base\nprompts: caf\xe9.jsonl\n", "line 2: not UTF-8 text (byte 0xe9 at offset 32)"),
    "NUL": (b"policy: models/base\n\x00\n", "line 2: not valid YAML (unacceptable character #x0000"),
    "nested": (b"a: " + b"[" * 3000, "not valid YAML (nested too deeply for the parser: 3000 open brackets)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_a_spec_the_parser_cannot_take_is_located(kind, case, tmp_path):
    """A spec in another encoding, with a character YAML refuses, or nested past the parser's recursion
    was an internal error (UnicodeDecodeError, RecursionError: exit 1) or a message without its line."""
    import hashlib

    raw, message = MALFORMED[case]
    spec, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec.write_bytes(raw)
    result = CliRunner().invoke(main, [a.format(spec=spec, out=out) for a in COMMANDS[kind]])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines() == [result.output.strip()]  # one line
    assert f"error: {spec}: {message}" in result.output
    assert not out.exists() and os.listdir(tmp_path) == ["spec.yaml"]
    assert hashlib.sha256(spec.read_bytes()).digest() == hashlib.sha256(raw).digest()

"""Parameters a method does not use, as mergekit treats them: a name another method knows is ignored
with one warning naming it and the method; a name no method knows is an error suggesting the closest
known one; a parameter kept for mergekit compatibility only has no effect (in mergekit either) and warns once
when set. Through the planner and through `surgery merge` (the TUI's forms: tests/tui/test_spec_form.py)."""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner
from mergekit import merge_methods as mk_methods
from safetensors.torch import load_file

from surgery.cli import main
from surgery.errors import SpecError
from surgery.merge.methods import REGISTRY
from surgery.merge.methods.method import COMPAT, is_compat
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec

# mergekit's own tests (tests/test_basic_merges.py) give every model a weight, for slerp too
SLERP = {"merge_method": "slerp", "base_model": "models/base", "parameters": {"t": 0.3}, "dtype": "float32",
         "models": [{"model": "models/base", "parameters": {"weight": 0.6}},
                    {"model": "models/math", "parameters": {"weight": 0.4}}]}
TA = {"merge_method": "task_arithmetic", "base_model": "models/base", "dtype": "float32",
      "models": [{"model": "models/math", "parameters": {"weight": 0.5}},
                 {"model": "models/code", "parameters": {"weight": 0.7}}]}
COMPAT_FIELDS = sorted((name, key) for name, m in REGISTRY.items()
                       for key, f in {**m.shared.model_fields, **m.per_model.model_fields}.items() if is_compat(f))


def plan(spec: dict, work: str):
    return plan_merge(parse_spec(spec, "spec.yaml"), "spec.yaml", models_dir=work)


def merge(spec: dict, work: str, tmp_path, name: str):
    """`surgery merge` of `spec`: (exit code, stderr, the output's tensors or None)."""
    file, out = tmp_path / f"{name}.yaml", tmp_path / name
    file.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(main, ["merge", str(file), str(out), "--models-dir", work, "--quiet"])
    return result.exit_code, result.stderr, load_file(out / "model.safetensors") if out.exists() else None


def without(spec: dict, key: str) -> dict:
    """`spec` with parameter `key` removed from every model."""
    return {**spec, "models": [{**m, "parameters": {k: v for k, v in m["parameters"].items() if k != key}}
                               for m in spec["models"]]}


def test_a_parameter_of_another_method_is_ignored_with_a_warning(work, tmp_path):
    warning = "models.0.parameters.weight: slerp does not use 'weight'; ignored, as mergekit does"
    assert plan(SLERP, work).warnings == [warning]  # once, though both models set it
    # the tiny fine-tunes are nearly colinear with their base: SLERP's fallback is reported after either merge
    fallback = "warning: slerp fell back to linear interpolation on 21 of 21 tensors ("
    code, stderr, ours = merge(SLERP, work, tmp_path, "weighted")
    assert code == 0 and stderr.splitlines()[0] == f"warning: {warning}", stderr
    assert len(stderr.splitlines()) == 2 and stderr.splitlines()[1].startswith(fallback), stderr
    code, stderr, plain = merge(without(SLERP, "weight"), work, tmp_path, "plain")
    assert code == 0 and len(stderr.splitlines()) == 1 and stderr.startswith(fallback), stderr
    assert ours.keys() == plain.keys() and all(torch.equal(ours[k], plain[k]) for k in ours)


@pytest.mark.parametrize("key, near, where", [
    ("wieght", "weight", "models.1"),     # slerp takes no weight: the closest name of any method
    ("tt", "t", "models.0"),              # a name of slerp's own comes first
])
def test_a_name_no_method_knows_is_an_error_with_a_suggestion(work, tmp_path, key, near, where):
    spec = {**SLERP, "models": [{"model": "models/base"}, {"model": "models/math"}]}
    spec["models"][int(where[-1])]["parameters"] = {key: 0.4}
    message = f"spec.yaml: {where}.parameters.{key}: unknown parameter for slerp (known: t); did you mean '{near}'?"
    with pytest.raises(SpecError) as e:
        plan(spec, work)
    assert str(e.value) == message
    code, stderr, out = merge(spec, work, tmp_path, "typo")
    assert code == 2 and out is None and not (tmp_path / "typo").exists()
    assert stderr.strip() == f"error: {tmp_path / 'typo.yaml'}: {message.removeprefix('spec.yaml: ')}"


def test_no_suggestion_when_nothing_is_close(work):
    spec = {**TA, "parameters": {"zzz": 1}}
    with pytest.raises(SpecError, match=r"parameters.zzz: unknown parameter for task_arithmetic \(known: lambda, "
                       r"normalize, weight\)$"):
        plan(spec, work)


def test_compatibility_options_warn_once_and_change_nothing(work, tmp_path):
    spec = {**TA, "parameters": {"int8_mask": True, "rescale": True}}
    expected = [f"parameters.int8_mask: {COMPAT}", f"parameters.rescale: {COMPAT}"]
    assert plan(spec, work).warnings == expected
    code, stderr, ours = merge(spec, work, tmp_path, "compat")
    assert code == 0 and stderr.splitlines() == [f"warning: {w}" for w in expected]
    _, _, plain = merge(TA, work, tmp_path, "plain")
    assert ours.keys() == plain.keys() and all(torch.equal(ours[k], plain[k]) for k in ours)


def test_compatibility_option_set_at_two_levels_warns_once(work):
    sources = [{"model": m, "layer_range": [0, 2], "parameters": {"weight": 1.0, "density": 0.5}}
               for m in ("models/base", "models/math")]
    spec = {"merge_method": "ties", "base_model": "models/base", "parameters": {"int8_mask": True},
            "slices": [{"sources": sources, "parameters": {"int8_mask": False}}]}
    assert plan(spec, work).warnings == [f"parameters.int8_mask: {COMPAT}"]


def test_rescale_is_compatibility_only_for_task_arithmetic():
    """Where a method sparsifies, `rescale` changes the result, so it is a real option there."""
    assert ("task_arithmetic", "rescale") in COMPAT_FIELDS
    assert all(key == "int8_mask" for name, key in COMPAT_FIELDS if name != "task_arithmetic")
    assert not is_compat(REGISTRY["ties"].shared.model_fields["rescale"])


@pytest.mark.parametrize("name, key", COMPAT_FIELDS)
def test_compatibility_options_have_no_effect_here_or_in_mergekit(name, key):
    """Each one flipped: our output is the same bytes, and so is mergekit 0.1.5's (its random methods
    seeded alike), which is what makes the option compatibility-only rather than one we lack."""
    method = REGISTRY[name]
    g = torch.Generator().manual_seed(3)
    base = torch.randn(24, 16, generator=g)
    models = [base + 0.1 * torch.randn(24, 16, generator=g) for _ in range(2)]
    sparse = "density" in method.per_model.model_fields
    per_model = {"weight": [0.6, 0.4], **({"density": [0.5, 0.7]} if sparse else {})}
    ours, theirs = [], []
    for value in (False, True):
        shared = method.shared.model_validate({key: value})
        rows = [method.per_model.model_validate(dict(zip(per_model, v))) for v in zip(*per_model.values())]
        ours.append(method.merge_tensors(base, models, rows, shared, seed=5))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            theirs.append(mk_methods.merge_tensors([base, *models], name, parameters={**per_model, key: value},
                                                   base_index=0))
    assert torch.equal(ours[0], ours[1]) and torch.equal(theirs[0], theirs[1])

"""Multi-stage merges (mergekit-multi's format): stages run in dependency order, the final one equals
mergekit-multimerge's output for the same file, intermediates are gone afterwards (or kept and reused
with --keep-intermediates), and bad files (unknown names, cycles, duplicates) exit 2 with the document
and field, writing nothing."""

from __future__ import annotations

import glob
import os
import re

import pytest
import torch
import yaml
from click.testing import CliRunner

from surgery.cli import main
from surgery.errors import SpecError
from surgery.merge.multi import plan_stages, run_multi
from tests.surgery.reference_checkpoints import digest
from tests.surgery.test_errors import leftovers
from tests.surgery.test_mergekit_parity import load_all


def write_multi(path, docs: list[dict]) -> str:
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    return str(path)


def two_stages(llama: dict[str, str], final_first: bool = False) -> list[dict]:
    """`soup` averages math and code; the unnamed final TIES-merges chat into the soup over the base."""
    soup = {"name": "soup", "merge_method": "linear", "dtype": "float32",
            "models": [{"model": llama["math"], "parameters": {"weight": 0.7}},
                       {"model": llama["code"], "parameters": {"weight": 0.3}}]}
    final = {"merge_method": "ties", "base_model": llama["base"], "dtype": "float32",
             "models": [{"model": "soup", "parameters": {"weight": 1.0, "density": 0.6}},
                        {"model": llama["chat"], "parameters": {"weight": 0.5, "density": 0.6}}]}
    return [final, soup] if final_first else [soup, final]


def invoke(*args) -> object:
    return CliRunner().invoke(main, ["merge", *[str(a) for a in args], "--quiet"])


@pytest.mark.integration
def test_stages_run_in_order_and_equal_mergekit_multimerge(llama, tmp_path):
    """The final document comes first in the file: it still runs last, and OUT equals what
    mergekit-multimerge writes to --out-path for the same file."""
    from mergekit.graph import Executor
    from mergekit.options import MergeOptions
    from mergekit.scripts.multimerge import load_config, make_tasks

    spec = write_multi(tmp_path / "multi.yaml", two_stages(llama, final_first=True))
    plan = plan_stages(spec)
    assert [s.name for s in plan.stages] == ["soup", None] and plan.final.needs == {"soup": "models.0.model"}
    out = run_multi(plan, str(tmp_path / "out"), echo=lambda m: None)
    assert sorted(os.listdir(tmp_path)) == ["multi.yaml", "out"]  # the intermediate is gone, no scratch left

    configs, deps = load_config(open(spec).read(), str(tmp_path / "mk-stages"))
    options = MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False)
    Executor(make_tasks(configs, deps, options, str(tmp_path / "mk-stages"), str(tmp_path / "mk"), False),
             math_device="cpu", storage_device="cpu").execute()
    ours, theirs = load_all(out), load_all(str(tmp_path / "mk"))
    assert sorted(ours) == sorted(theirs)
    for name, t in theirs.items():
        torch.testing.assert_close(ours[name], t, rtol=1e-6, atol=1e-9, msg=name)


def test_intermediates_are_deleted_once_no_later_stage_reads_them(llama, tmp_path):
    """a <- b <- final: when the final stage starts, `a` is gone and only `b` is in the scratch folder."""
    from surgery.merge.engine import run_merge

    soup, final = two_stages(llama)
    a = {**soup, "name": "a"}
    b = {**soup, "name": "b", "models": [{"model": "a", "parameters": {"weight": 0.5}},
                                         {"model": llama["chat"], "parameters": {"weight": 0.5}}]}
    final = {**final, "models": [{**final["models"][0], "model": "b"}, final["models"][1]]}
    plan = plan_stages(write_multi(tmp_path / "multi.yaml", [a, b, final]))
    present = []

    def merge(merge_plan, folder, options, card):
        scratch = glob.glob(str(tmp_path / ".out.scratch-*"))
        present.append(sorted(os.listdir(scratch[0])) if scratch else None)
        return run_merge(merge_plan, folder, options, card=card)

    run_multi(plan, str(tmp_path / "out"), merge=merge, echo=lambda m: None)
    assert present == [[], ["a"], ["b"]]
    assert glob.glob(str(tmp_path / ".out.*")) == []


def test_a_card_names_the_leaf_models_and_holds_the_file(llama, tmp_path):
    spec = write_multi(tmp_path / "multi.yaml", two_stages(llama))
    result = invoke(spec, tmp_path / "out")
    assert result.exit_code == 0, result.output
    card = open(tmp_path / "out" / "README.md").read()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == [llama["base"], llama["math"], llama["code"], llama["chat"]]
    assert front["library_name"] == "transformers" and "merge" in front["tags"]
    assert "name: soup" in card and "`soup` (linear)" in card
    assert not (tmp_path / "out2").exists()
    assert invoke(spec, tmp_path / "out2", "--no-card").exit_code == 0
    assert not (tmp_path / "out2" / "README.md").exists()


def test_keep_intermediates_keeps_and_reuses_them(llama, tmp_path):
    spec = write_multi(tmp_path / "multi.yaml", two_stages(llama))
    keep = tmp_path / "stages"
    first = invoke(spec, tmp_path / "out", "--keep-intermediates", keep)
    assert first.exit_code == 0, first.output
    soup = load_all(str(keep / "soup"))
    expected = {k: 0.7 * a + 0.3 * b for (k, a), b in zip(load_all(llama["math"]).items(),
                                                         load_all(llama["code"]).values())}
    for name, t in expected.items():
        torch.testing.assert_close(soup[name], t, rtol=1e-6, atol=1e-7, msg=name)
    made = digest(str(tmp_path / "out" / "model.safetensors"))
    again = invoke(spec, tmp_path / "out", "--keep-intermediates", keep, "--force")
    assert again.exit_code == 0 and "stage soup: reusing" in again.output
    assert digest(str(tmp_path / "out" / "model.safetensors")) == made


def test_a_document_the_final_does_not_use_is_skipped_unless_kept(llama, tmp_path):
    docs = two_stages(llama) + [{"name": "spare", "merge_method": "model_soup",
                                 "models": [{"model": llama["math"]}, {"model": llama["chat"]}]}]
    docs = [docs[0], docs[2], docs[1]]  # the unnamed document is the final one wherever it stands
    spec = write_multi(tmp_path / "multi.yaml", docs)
    result = invoke(spec, tmp_path / "out")
    assert result.exit_code == 0 and "document 2 (spare) is not used by the final merge" in result.output
    assert invoke(spec, tmp_path / "out2", "--keep-intermediates", tmp_path / "keep").exit_code == 0
    assert sorted(os.listdir(tmp_path / "keep")) == ["soup", "spare"]


def test_without_an_unnamed_document_the_last_unused_one_is_final(llama, tmp_path):
    docs = two_stages(llama)
    docs[1]["name"] = "final"
    plan = plan_stages(write_multi(tmp_path / "multi.yaml", docs))
    assert [s.name for s in plan.stages] == ["soup", "final"]


def test_dry_run_lists_the_order_and_writes_nothing(llama, tmp_path):
    spec = write_multi(tmp_path / "multi.yaml", two_stages(llama, final_first=True))
    result = invoke(spec, tmp_path / "out", "--dry-run")
    assert result.exit_code == 0
    assert result.output.index("(soup): linear") < result.output.index("document 1: ties")
    assert not (tmp_path / "out").exists()


# ---- bad files: exit 2, located by document and field, nothing written ----------------------------

def bad_docs(llama) -> dict[str, tuple[list[dict], str]]:
    soup, final = two_stages(llama)
    unknown = [soup, {**final, "models": [{**final["models"][0], "model": "sopu"}, final["models"][1]]}]
    duplicate = [soup, soup, {**final, "models": [{**final["models"][0], "model": "soup"}, final["models"][1]]}]
    a = {**soup, "name": "a", "models": [{"model": "b"}, soup["models"][1]]}
    b = {**soup, "name": "b", "models": [{"model": "a"}, soup["models"][1]]}
    itself = {**soup, "name": "a", "models": [soup["models"][0], {"model": "a"}]}
    final = {**final, "models": [{**final["models"][0], "model": "a"}, final["models"][1]]}
    return {
        "unknown name": (unknown, r"document 2: models\.0\.model: 'sopu' is neither a model folder nor the name "
                                  r"of a document in this file \(names: soup\)"),
        "cycle": ([a, b, final], r"document 2 \(b\): models\.0\.model: 'a' makes a cycle \(a -> b -> a\)"),
        "self reference": ([itself, final], r"document 1 \(a\): models\.1\.model: 'a' makes a cycle \(a -> a\)"),
        "duplicate name": (duplicate, r"document 2 \(soup\): name: name 'soup' is already used by document 1"),
        "two unnamed": ([soup, *duplicate[2:], *duplicate[2:]], r"document 3: a second unnamed document"),
        "bad spec": ([{**soup, "modles": []}, *duplicate[2:]], r"document 1 \(soup\): modles: unknown"),
    }


@pytest.mark.parametrize("case", ["unknown name", "cycle", "self reference", "duplicate name", "two unnamed",
                                  "bad spec"])
def test_bad_multi_file_exit_2_located(case, llama, tmp_path):
    docs, message = bad_docs(llama)[case]
    spec = write_multi(tmp_path / "multi.yaml", docs)
    before = digest(llama["base"], llama["math"], llama["code"], llama["chat"], spec)
    result = invoke(spec, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and leftovers(str(tmp_path / "out")) == []
    assert digest(llama["base"], llama["math"], llama["code"], llama["chat"], spec) == before


def test_a_failing_later_stage_leaves_nothing(llama, build, tmp_path):
    """The soup is merged, then the final stage finds shapes that differ (a wider MLP): the error names
    the tensor, nothing is at OUT, and the scratch folder with the soup is gone."""
    soup, final = two_stages(llama)
    final["models"][1]["model"] = build(str(tmp_path / "models" / "wide"), intermediate_size=96)
    spec = write_multi(tmp_path / "multi.yaml", [soup, final])
    result = invoke(spec, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "document 2: " not in result.output and "mlp" in result.output and "shape" in result.output
    assert not (tmp_path / "out").exists() and glob.glob(str(tmp_path / ".out.*")) == []


def test_plan_stages_raises_spec_error(llama, tmp_path):
    docs, _ = bad_docs(llama)["cycle"]
    with pytest.raises(SpecError) as caught:
        plan_stages(write_multi(tmp_path / "multi.yaml", docs))
    assert caught.value.field == "models.0.model"

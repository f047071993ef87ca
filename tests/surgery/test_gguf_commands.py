"""A GGUF file is accepted wherever a model folder is: `merge` (a spec's `model:` entries, its
`base_model`, `base+adapter`), `fold`, `diff`, `inspect`, `extract-lora`, `convert` and `slice` give,
from a GGUF input, what they give from the folder `import-gguf` makes of it. A GGUF whose vocabulary
differs from the other inputs takes vocabulary surgery as a folder does. The files hold Q8_0 matrices,
so every tensor is dequantized on the way in."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytestmark = pytest.mark.integration  # every test runs whole commands, from GGUF files and from folders
pytest.importorskip("gguf")

from surgery.io.opener import open_model  # noqa: E402
from surgery.ops.gguf_import import import_gguf  # noqa: E402
from tests.surgery.adapters.conftest import save_adapter  # noqa: E402
from tests.surgery.reference_checkpoints import digest, run_cli  # noqa: E402
from tests.surgery.tiny_gguf import encoder, tiny_llama, write_gguf  # noqa: E402


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, str]:
    """A base and a fine-tune as Q8_0 GGUF files and as the folders import-gguf makes of them, and a
    LoRA adapter (PEFT's) of the base."""
    from peft import LoraConfig

    root = tmp_path_factory.mktemp("gguf_zoo")
    out = {}
    for name, seed in [("base", 0), ("tuned", 1)]:
        out[f"{name}.gguf"] = write_gguf(root / f"{name}.gguf", tiny_llama(seed=seed), encode=encoder("Q8_0"))
        out[name] = import_gguf(out[f"{name}.gguf"], str(root / name))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    out["adapter"] = save_adapter(out["base"], config, str(root / "adapter"))
    return out


def same_tensors(a: str, b: str) -> None:
    x, y = open_model(a), open_model(b)
    assert set(x.tensors) == set(y.tensors)
    for name in x.tensors:
        assert torch.equal(x.read(name), y.read(name)), name


def same_files(a: str, b: str, names=("config.json", "tokenizer.json", "chat_template.jinja")) -> None:
    for name in names:
        with open(os.path.join(a, name)) as f, open(os.path.join(b, name)) as g:
            assert f.read() == g.read(), name


def spec(path, base: str, models: list[str]) -> str:
    lines = ["merge_method: task_arithmetic", f"base_model: {base}", "models:"]
    lines += [f"  - model: {m}\n    parameters: {{weight: 0.5}}" for m in models]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_merge_reads_gguf_base_models_and_base_plus_adapter(zoo, tmp_path):
    with_adapter = f"{zoo['base.gguf']}+{zoo['adapter']}"
    from_gguf = spec(tmp_path / "gguf.yaml", zoo["base.gguf"], [zoo["tuned.gguf"], with_adapter])
    from_folders = spec(tmp_path / "folders.yaml", zoo["base"], [zoo["tuned"], f"{zoo['base']}+{zoo['adapter']}"])
    before = digest(zoo["base.gguf"], zoo["tuned.gguf"])
    for s, out in [(from_gguf, "a"), (from_folders, "b")]:
        result = run_cli("merge", s, str(tmp_path / out), "--quiet")
        assert result.exit_code == 0, result.output
    same_tensors(str(tmp_path / "a"), str(tmp_path / "b"))
    same_files(str(tmp_path / "a"), str(tmp_path / "b"))
    assert digest(zoo["base.gguf"], zoo["tuned.gguf"]) == before


@pytest.mark.parametrize("command", [["fold", "IN", "ADAPTER", "OUT"], ["slice", "IN", "OUT", "--layers", "1:2,0:1"],
                                     ["convert", "IN", "OUT", "--dtype", "bfloat16"]])
def test_fold_slice_and_convert_read_gguf(zoo, command, tmp_path):
    for src, out in [(zoo["base.gguf"], "a"), (zoo["base"], "b")]:
        names = {"IN": src, "ADAPTER": zoo["adapter"], "OUT": str(tmp_path / out)}
        result = run_cli(*[names.get(a, a) for a in command], "--quiet")
        assert result.exit_code == 0, result.output
    same_tensors(str(tmp_path / "a"), str(tmp_path / "b"))
    same_files(str(tmp_path / "a"), str(tmp_path / "b"))


def test_diff_and_extract_lora_read_gguf(zoo, tmp_path):
    a = run_cli("diff", zoo["tuned.gguf"], zoo["base.gguf"], "--json", "--quiet")
    b = run_cli("diff", zoo["tuned"], zoo["base"], "--json", "--quiet")
    assert a.exit_code == 0, a.output
    values = [{name: list(v.values()) for name, v in json.loads(r.stdout)["tensors"].items()} for r in (a, b)]
    assert values[0] == values[1]  # the labels differ: tuned.gguf/base.gguf and tuned/base
    for src, out in [((zoo["base.gguf"], zoo["tuned.gguf"]), "a"), ((zoo["base"], zoo["tuned"]), "b")]:
        result = run_cli("extract-lora", *src, str(tmp_path / out), "--rank", "4", "--quiet")
        assert result.exit_code == 0, result.output
    same_tensors(str(tmp_path / "a"), str(tmp_path / "b"))


def test_inspect_shows_how_a_gguf_file_stores_its_tensors(zoo):
    result = run_cli("inspect", zoo["base.gguf"], "--json")
    report = json.loads(result.stdout)
    stored = {t["name"]: t.get("stored") for t in report["tensors"]}
    assert stored["model.layers.0.self_attn.q_proj.weight"] == "Q8_0" and stored["model.norm.weight"] == "F32"
    assert report["dtypes"] == {"float32": report["parameters"]}


def test_a_gguf_with_another_vocabulary_takes_vocabulary_surgery(zoo, tmp_path):
    """A fine-tune that added a token, as for folders: without tokenizer_source the base's vocabulary is
    kept with a warning naming the setting (mergekit's legacy mode); with union it is merged by token."""
    grown = write_gguf(tmp_path / "grown.gguf", tiny_llama(seed=2, extra=("<tool>",)), extra=("<tool>",))
    text = (f"merge_method: linear\nparameters: {{weight: 1}}\n"
            f"models:\n  - model: {zoo['base.gguf']}\n  - model: {grown}\n")
    (tmp_path / "plain.yaml").write_text(text)
    result = run_cli("merge", str(tmp_path / "plain.yaml"), str(tmp_path / "kept"), "--quiet")
    assert result.exit_code == 0 and "tokenizer_source" in result.stderr, result.output
    kept, base = open_model(str(tmp_path / "kept")), open_model(zoo["base.gguf"])
    name = "model.embed_tokens.weight"
    assert kept.tensors[name].shape[0] == base.tensors[name].shape[0]
    (tmp_path / "union.yaml").write_text(text + "tokenizer_source: union\n")
    result = run_cli("merge", str(tmp_path / "union.yaml"), str(tmp_path / "out"), "--quiet")
    assert result.exit_code == 0, result.output
    merged, base, other = open_model(str(tmp_path / "out")), open_model(zoo["base.gguf"]), open_model(grown)
    name = "model.embed_tokens.weight"
    assert merged.tensors[name].shape[0] == base.tensors[name].shape[0] + 1
    assert torch.allclose(merged.read(name, (10, 11)), (base.read(name, (10, 11)) + other.read(name, (10, 11))) / 2)
    assert torch.allclose(merged.read(name)[-1], other.read(name)[-1])  # the token only `grown` has: its row

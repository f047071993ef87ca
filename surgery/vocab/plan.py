"""Vocabulary surgery in a merge plan: `tokenizer_source: base | union | <model path>`, or mergekit's
`tokenizer:` block (`source`, per-token `tokens`, `pad_to_multiple_of`; see `surgery.vocab.tokens`).

Pre-flight (planning, before any tensor data is read) reads every model's tokenizer and embedding
shape, chooses the output vocabulary, and names every mismatch: vocabulary sizes (tokenizer length vs
embedding rows), tokens present in some models only, ids that differ, tokens whose rows the output
vocabulary drops, chat templates that differ. Each is a warning; bad references (a source that is not
a merged model, a token a model lacks) are SpecErrors saying what to set.

The output vocabulary: `base` keeps the base model's tokenizer and ids, `<model>` that model's, and
`union` the base's ids followed by every other model's tokens the base lacks, in model order (within
a model, by its ids). Unset, models with equal vocabularies are merged as they are; differing ones
keep the base's vocabulary, as `base` does (mergekit's legacy mode keeps the base's tokenizer), with a
warning. Rows are aligned by token as `surgery.vocab.align` describes; the models' folders are then
wrapped (`GatheredFolder`) so that the engine merges aligned rows like any tensor.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tokenizers import AddedToken, Tokenizer

from surgery.errors import InputError, SpecError
from surgery.io.gathered import GatheredFolder
from surgery.io.locate import resolve_path
from surgery.io.opener import model_path
from surgery.io.output import write_json
from surgery.merge.layers import layer_of
from surgery.merge.spec import MergeSpec
from surgery.vocab.align import RowMap, align, missing, output_rows, remap_ids, union_order, with_rows
from surgery.vocab.tokenizer_files import (
    TokenizerInfo,
    extend,
    extend_tokens,
    read_tokenizer,
    token_flags,
    write_extended,
)
from surgery.vocab.tokens import apply_sources, new_tokens, pad, padded_rows, resolve_sources

EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "tok_embeddings.weight", "word_embeddings.weight")
HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight")
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "sep_token_id")
SHOWN = 5  # tokens named in a message


@dataclass
class VocabPlan:
    source: str                      # 'base', 'union' or the model named by tokenizer_source
    base: str                        # the model a lacking model's rows are filled from first
    layout: str                      # the model whose ids the output keeps
    vocab: dict[str, int]            # the output vocabulary
    rows: int                        # output embedding rows (>= tokens with rows; the rest padding)
    maps: dict[str, RowMap]          # per model; empty when every model already has the output's rows
    infos: dict[str, TokenizerInfo]
    tokenizer: Tokenizer | None      # union with new tokens: the tokenizer to write
    specials: tuple[str, ...]        # new tokens listed as special tokens by their model
    notes: list[str]
    warnings: list[str]

    def wrap(self, folders: dict) -> dict:
        """The folders with their vocabulary tensors seen through the row maps."""
        if not self.maps:
            return folders
        names = {m: vocab_tensors(f) for m, f in folders.items()}
        out = {}
        for model, folder in folders.items():
            counterparts = {n: {m: _counterpart(n, folders[m], names[m], m) for m in folders} for n in names[model]}
            out[model] = GatheredFolder(folder, self.maps[model], counterparts, folders, self._config(model, folder))
        return out

    def _config(self, model: str, folder) -> dict:
        config = dict(folder.config)
        if "vocab_size" in config:
            config["vocab_size"] = self.rows
        old = {i: t for t, i in self.infos[model].vocab.items()}
        for key in TOKEN_ID_KEYS:
            if key in config:
                config[key] = remap_ids(config[key], old, self.vocab)
        return config

    def lines(self) -> list[str]:
        """The pre-flight report, for `surgery merge --dry-run`."""
        return [f"vocabulary  {line}" for line in self.notes] + [f"warning     {w}" for w in self.warnings]


def plan_vocabulary(spec: MergeSpec, file: str, folders: dict, fields: dict[str, str],
                    root: str | None = None, chat_template: str | None = None) -> VocabPlan | None:
    """Pre-flight and row maps; None when no output vocabulary is asked for and a model has no
    tokenizer.json (nothing to compare: tokenizer files are copied as they are). `fields[model]`: its
    spec field; `chat_template`: the one the output gets, if the spec sets it (for the warnings)."""
    source, settings = spec.vocabulary_source, spec.tokenizer
    models = list(folders)
    base = spec.base_model or models[0]
    layout = _layout(source, spec.vocabulary_field, file, folders, base, root)
    infos = _tokenizers(source, spec.vocabulary_field, file, folders, fields)
    if infos is None:
        return None
    rows_in = {m: embedding_rows(folders[m], m) for m in models}
    if None in rows_in.values():
        return None
    vocabs = {m: with_rows(infos[m].vocab, rows_in[m]) for m in models}
    legacy = source is None and _differ(vocabs, rows_in, base)  # mergekit's legacy mode: the base's vocabulary
    tokenizer, specials, vocab = None, (), infos[layout].vocab
    if source == "union":
        tokenizer, specials = _union_tokenizer(infos, vocabs, base)
        vocab = tokenizer.get_vocab(with_added_tokens=True) if tokenizer else vocab
    added = new_tokens(settings, vocab)
    if added:  # tokens the `tokens` block names: added as plain tokens, as transformers' add_tokens does
        tokenizer = extend_tokens(tokenizer or infos[layout].tokenizer, [AddedToken(t, normalized=True) for t in added])
        vocab = tokenizer.get_vocab(with_added_tokens=True)
    sources = resolve_sources(settings, file, folders, vocabs, {m: i.vocab for m, i in infos.items()}, rows_in, root)
    multiple = settings.pad_to_multiple_of if settings else None
    rows = padded_rows(vocab, multiple) if multiple else output_rows(vocab, rows_in[layout], vocabs)
    rows = max([rows, *(vocab[t] + 1 for t in added)])  # added tokens have rows, whatever their source
    maps = {}
    if source is not None or legacy:  # unset and equal vocabularies: nothing to align
        maps = apply_sources(align(vocab, rows, vocabs, base, layout, rows_in), sources, vocab)
        maps = pad(maps, padded_rows(vocab, 1), rows) if multiple else maps
    if all(maps[m].is_identity(rows_in[m]) for m in maps):
        maps = {}
    plan = VocabPlan(source or "base", base, layout, vocab, rows, maps, infos, tokenizer, specials, [], [])
    if legacy:
        plan.warnings.append(f"tokenizer_source is not set but the models' vocabularies differ "
                             f"({_difference_of(vocabs, rows_in, base)}): the base's vocabulary is kept, rows "
                             "matched by token (as tokenizer_source: base); set tokenizer_source: union to merge "
                             "the vocabularies")
    _describe(plan, spec, vocabs, rows_in, chat_template)
    return plan


def _differ(vocabs: dict, rows_in: dict, base: str) -> bool:
    return any(vocabs[m] != vocabs[base] or rows_in[m] != rows_in[base] for m in vocabs)


def _difference_of(vocabs: dict, rows_in: dict, base: str) -> str:
    model = next(m for m in vocabs if vocabs[m] != vocabs[base] or rows_in[m] != rows_in[base])
    how = _difference(vocabs[model], vocabs[base], rows_in[model], rows_in[base])
    return f"{model!r} against the base {base!r}: {how}"


def _layout(source: str | None, field: str, file: str, folders: dict, base: str, root: str | None) -> str:
    models = list(folders)
    if source in (None, "base", "union"):
        return base
    try:
        path = os.path.realpath(model_path(resolve_path(source, root)))  # a folder holding a GGUF: the file
    except InputError as e:
        raise SpecError(file, field, f"{e}; use 'base', 'union' or one of the merged models") from None
    for model, folder in folders.items():
        if source == model or os.path.realpath(folder.path) == path:
            return model
    names = ", ".join(map(repr, models))
    raise SpecError(file, field, f"{source!r} is not one of the merged models ({names}); "
                    "use 'base', 'union' or one of their paths")


def _tokenizers(source: str | None, field: str, file: str, folders: dict,
                fields: dict[str, str]) -> dict[str, TokenizerInfo] | None:
    infos = {}
    for model, folder in folders.items():
        if source is None and not os.path.isfile(os.path.join(folder.side_folder, "tokenizer.json")):
            return None
        try:
            infos[model] = read_tokenizer(folder.side_folder)
        except InputError as e:
            if source is None:
                return None  # unset: tokenizer files are only copied, as before any comparison existed
            raise SpecError(file, fields[model], f"{e} ({field}: {source} needs every model's tokenizer)") from None
    return infos


def vocab_tensors(folder) -> list[str]:
    """The folder's tensors indexed by token: input embeddings and output heads (2-D, outside layers)."""
    return sorted(n for n, info in folder.tensors.items()
                  if len(info.shape) == 2 and layer_of(n) is None and _is_vocab_name(n))


def _is_vocab_name(name: str) -> bool:
    return any(name == s or name.endswith("." + s) for s in EMBED_SUFFIXES + HEAD_SUFFIXES)


def embedding_rows(folder, model: str) -> int | None:
    """Rows of the model's vocabulary tensors (all must agree); None when it has none."""
    rows = {n: folder.tensors[n].shape[0] for n in vocab_tensors(folder)}
    if len(set(rows.values())) > 1:
        raise InputError(f"model {model!r} ({folder.path}): its vocabulary tensors have different row counts "
                         f"({rows}); vocabulary surgery needs one row per token in each")
    return next(iter(rows.values()), None)


def _counterpart(name: str, folder, names: list[str], model: str) -> str:
    """`name`'s tensor in another model: the same name, or for an output head its tied input embedding."""
    if name in folder.tensors:
        return name
    embeds = [n for n in names if n.endswith(EMBED_SUFFIXES)]
    if name.endswith(HEAD_SUFFIXES) and folder.config.get("tie_word_embeddings", False) and len(embeds) == 1:
        return embeds[0]
    raise InputError(f"tensor {name!r} is missing from model {model!r} ({folder.path}), which vocabulary "
                     "surgery reads its rows from; the models do not share an architecture")


def _union_tokenizer(infos: dict[str, TokenizerInfo], vocabs: dict[str, dict[str, int]],
                     base: str) -> tuple[Tokenizer | None, tuple[str, ...]]:
    others = [m for m in vocabs if m != base]
    new = union_order(infos[base].vocab, [vocabs[m] for m in others])
    if not new:
        return None, ()
    owner = {t: next(m for m in others if t in vocabs[m]) for t in new}
    tokenizer = extend(infos[base], [token_flags(infos[owner[t]], t) for t in new])
    got = tokenizer.get_vocab(with_added_tokens=True)
    first = max(infos[base].vocab.values(), default=-1) + 1
    if [got.get(t) for t in new] != list(range(first, first + len(new))):  # ids follow the base's, in order
        raise InputError(f"{infos[base].path}: its tokenizer did not give the new tokens the ids after its own "
                         f"({first} on); vocabulary surgery cannot lay out a union on this tokenizer")
    return tokenizer, tuple(t for t in new if t in infos[owner[t]].specials)


def _difference(a: dict, b: dict, rows_a: int, rows_b: int) -> str:
    only_a, only_b = missing(a, b), missing(b, a)
    moved = sum(1 for t, i in a.items() if t in b and b[t] != i)
    parts = [f"{rows_a} vs {rows_b} embedding rows"] if rows_a != rows_b else []
    parts += [f"{len(only_a)} token(s) only in the first ({_first(only_a)})"] if only_a else []
    parts += [f"{len(only_b)} only in the second ({_first(only_b)})"] if only_b else []
    parts += [f"{moved} shared token(s) with other ids"] if moved else []
    return "; ".join(parts)


def _first(tokens: list[str]) -> str:
    shown = ", ".join(repr(t) for t in tokens[:SHOWN])
    return shown + (", ..." if len(tokens) > SHOWN else "")


def _describe(plan: VocabPlan, spec: MergeSpec, vocabs: dict, rows_in: dict, chat_template: str | None) -> None:
    """Fill the plan's notes (sizes, the output) and warnings (every mismatch surgery handles)."""
    for model, info in plan.infos.items():
        size, rows = len(info.vocab), rows_in[model]
        padding = f" ({rows - size} padding)" if rows > size else ""
        plan.notes.append(f"{model}: {size} tokens, {rows} embedding rows{padding}")
        if size > rows:
            plan.warnings.append(f"{model}: {size - rows} tokenizer token(s) have no embedding row "
                                 f"({_first(sorted(set(info.vocab) - set(vocabs[model]), key=info.vocab.get))})")
    verb = "merged from all models" if plan.source == "union" else f"kept from {plan.layout!r}"
    plan.notes.append(f"output: {len(plan.vocab)} tokens, {plan.rows} rows ({verb})"
                      + ("" if plan.maps else "; every model already has these rows"))
    if plan.maps:
        _warn_mismatches(plan, vocabs)
    _warn_dropped(plan, vocabs)
    _warn_templates(plan, chat_template)


def _warn_mismatches(plan: VocabPlan, vocabs: dict) -> None:
    out = {t for t, i in plan.vocab.items() if i < plan.rows}
    for model, own in vocabs.items():
        extra = missing(own, vocabs[plan.base])
        lacks = sorted((t for t in out if t not in own), key=plan.vocab.get)
        moved = sum(1 for t, i in own.items() if plan.vocab.get(t, i) != i)
        if extra and model != plan.base and not missing(own, plan.vocab):  # kept (dropped ones: _warn_dropped)
            plan.warnings.append(f"{model!r} has {len(extra)} token(s) the base lacks ({_first(extra)})")
        if lacks:
            rule = "the base's row where it has one, else " if model != plan.base else ""
            plan.warnings.append(f"{model!r} lacks {len(lacks)} output token(s) ({_first(lacks)}): "
                                 f"filled with {rule}the mean of the rows of the models that have them")
        if moved:
            plan.warnings.append(f"{model!r}: {moved} token(s) move to other ids; rows follow their tokens")
    nobody = [t for t in plan.vocab if t in out and not any(t in v for v in vocabs.values())]
    if nobody:
        plan.warnings.append(f"{len(nobody)} output token(s) have no row in any model ({_first(nobody)}): zero rows")


def _warn_dropped(plan: VocabPlan, vocabs: dict) -> None:
    for model, own in vocabs.items():
        lost = missing(own, plan.vocab)
        if lost:
            plan.warnings.append(f"{model!r} has {len(lost)} token(s) with embedding rows that the output vocabulary "
                                 f"(of {plan.layout!r}) lacks ({_first(lost)}): their rows are dropped; set "
                                 "tokenizer_source: union to keep them")


def _warn_templates(plan: VocabPlan, chat_template: str | None) -> None:
    written = chat_template or plan.infos[plan.layout].chat_template
    whence = "the spec's chat_template" if chat_template else f"that of {plan.layout!r}"
    for model, info in plan.infos.items():
        if info.chat_template is not None and info.chat_template != written:
            what = f"differs from the one written ({whence})" if written else "is not written (the output gets none)"
            plan.warnings.append(f"chat template of {model!r} {what}; set chat_template to choose")


def write_vocabulary(plan: VocabPlan, folder: str, config_model: str) -> None:
    """Into the output folder (tokenizer files of the layout model already copied there): the union
    tokenizer, and generation_config.json's token ids moved to the output vocabulary."""
    if plan.tokenizer is not None:
        write_extended(plan.infos[plan.layout], plan.tokenizer, list(plan.specials), folder)
    file = os.path.join(folder, "generation_config.json")
    if plan.maps and os.path.isfile(file):
        with open(file) as f:
            config = json.load(f)
        old = {i: t for t, i in plan.infos[config_model].vocab.items()}
        write_json(file, {k: remap_ids(v, old, plan.vocab) if k in TOKEN_ID_KEYS else v for k, v in config.items()})

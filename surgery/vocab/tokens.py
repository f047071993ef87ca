"""mergekit's `tokenizer:` block beyond the output vocabulary: per-token row sources and padding.

`tokens` names, per token, where its embedding and head rows come from: a merged model's own row for
that token (`source: MODEL`), a model's row for another token or at an index (`{kind: model_token,
model, token | token_id}`), or zeros (`{kind: zero}`). With `force`, every model takes that row (the
merged row is then that row for any averaging method); without it only the models that lack the token
do, the others keep theirs. A named token the output vocabulary lacks is added to it.
`pad_to_multiple_of` rounds the rows up to a multiple; the added rows are, per model, the mean of its
token rows (as mergekit pads, after https://nlp.stanford.edu/~johnhew/vocab-expansion.html).
"""

from __future__ import annotations

import os
from dataclasses import replace

from surgery.errors import InputError, SpecError
from surgery.io.locate import resolve_path
from surgery.merge.spec import ModelToken, TokenizerSettings, ZeroToken
from surgery.vocab.align import RowMap

Pairs = tuple[tuple[str, int], ...]  # (model, row) pairs whose mean is a row; () is zeros


def new_tokens(settings: TokenizerSettings | None, vocab: dict[str, int]) -> list[str]:
    """Tokens the `tokens` block names that the output vocabulary lacks, in the block's order."""
    return [t for t in (settings.tokens or {}) if t not in vocab] if settings else []


def resolve_sources(settings: TokenizerSettings | None, file: str, folders: dict, vocabs: dict[str, dict[str, int]],
                    full: dict[str, dict[str, int]], rows_in: dict[str, int],
                    root: str | None) -> dict[str, tuple[bool, Pairs | None]]:
    """Per configured token: (force, the rows its row is the mean of, None for the default rule).
    `vocabs`: each model's tokens with rows; `full`: each model's whole tokenizer vocabulary."""
    out = {}
    for token, cfg in (settings.tokens or {} if settings else {}).items():
        where = f"tokenizer.tokens.{token}"
        if cfg.source is None:
            if cfg.force:
                raise SpecError(file, f"{where}.force", "force needs a source to give every model; add one")
            out[token] = (False, None)
        elif isinstance(cfg.source, ZeroToken):
            out[token] = (cfg.force, ())
        elif isinstance(cfg.source, ModelToken):
            out[token] = (cfg.force, (_model_token(cfg.source, file, f"{where}.source", folders, full, rows_in, root),))
        else:
            model = _merged_model(cfg.source, file, f"{where}.source", folders, root)
            if token not in vocabs[model]:
                raise SpecError(file, f"{where}.source", f"model {model!r} has no row for token {token!r}; "
                                "name another model, or {kind: model_token, model, token} for another token's row")
            out[token] = (cfg.force, ((model, vocabs[model][token]),))
    return out


def _model_token(src: ModelToken, file: str, where: str, folders: dict, full: dict, rows_in: dict,
                 root: str | None) -> tuple[str, int]:
    model = _merged_model(src.model, file, f"{where}.model", folders, root)
    if src.token is not None:
        if src.token not in full[model]:
            raise SpecError(file, f"{where}.token", f"model {model!r} has no token {src.token!r}")
        row = full[model][src.token]
    else:
        row = src.token_id
    if row >= rows_in[model]:
        field = f"{where}.token" if src.token is not None else f"{where}.token_id"
        raise SpecError(file, field, f"row {row} is past the {rows_in[model]} embedding rows of model {model!r}")
    return model, row


def _merged_model(ref: str, file: str, where: str, folders: dict, root: str | None) -> str:
    """The merged model `ref` names: by the name the spec gives it, else by its folder."""
    if ref in folders:
        return ref
    try:
        path = os.path.realpath(resolve_path(ref, root))
    except InputError as e:
        raise SpecError(file, where, f"{e}; name one of the merged models") from None
    for model, folder in folders.items():
        if os.path.realpath(folder.path) == path:
            return model
    raise SpecError(file, where, f"{ref!r} is not one of the merged models ({', '.join(map(repr, folders))})")


def apply_sources(maps: dict[str, RowMap], sources: dict[str, tuple[bool, Pairs | None]],
                  vocab: dict[str, int]) -> dict[str, RowMap]:
    """The row maps with the configured tokens' rows: forced for every model, else for those lacking them."""
    out = {}
    for model, m in maps.items():
        own, fill = list(m.own), dict(m.fill)
        for token, (force, pairs) in sources.items():
            i = vocab[token]
            if pairs is None or i >= len(own):
                continue
            if force or own[i] < 0:
                own[i], fill[i] = -1, pairs
        out[model] = replace(m, own=tuple(own), fill=fill)
    return out


def padded_rows(vocab: dict[str, int], multiple: int) -> int:
    """The token rows rounded up to `multiple`."""
    n = max(vocab.values(), default=-1) + 1
    return -(-n // multiple) * multiple


def pad(maps: dict[str, RowMap], tokens: int, rows: int) -> dict[str, RowMap]:
    """Row maps cut or grown to `rows`, rows from `tokens` on being each model's mean token row."""
    out = {}
    for model, m in maps.items():
        own = list(m.own[:tokens]) + [-1] * (rows - tokens)
        fill = {i: p for i, p in m.fill.items() if i < tokens}
        out[model] = replace(m, own=tuple(own), fill=fill, mean_from=tokens if rows > tokens else None)
    return out

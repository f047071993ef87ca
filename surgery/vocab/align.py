"""Token alignment for merging models whose vocabularies differ: the output vocabulary, and for each
model where each of its output embedding rows comes from. Pure functions over token -> id maps.

Rows are matched by token string, never by id. For every output token each model contributes its
own row for that token. A model that lacks the token (or has no embedding row for it) is given:

- the base model's row for the token, when the base has one;
- otherwise the mean of the rows of the models that have it (one model: that model's row);
- zeros when no model has a row for it (a token of the tokenizer beyond every model's embedding).

This is mergekit's rule for the tokens it aligns, stated per model: with it, a model that lacks a
token contributes no task vector for that token in a base-relative merge (its row equals the base's),
and a plain average of models gives the row of the models that know the token.

Output rows that carry no token (padding rows past the tokenizer's length) are not tokens, so they are
matched by position: each model contributes its own row at that position when that row carries no
token in the model either, else the layout model's row there (the model whose ids the output keeps),
else zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Vocab = dict[str, int]  # token string -> id


@dataclass(frozen=True)
class RowMap:
    """One model's output rows: `own[i]` is the model's row for output row i, or -1 where it has none;
    such a row is the mean of the (model, row) pairs in `fill[i]`, or zeros where that is empty, or,
    from row `mean_from` on (padding rows), the mean of this model's output rows before `mean_from`."""

    own: tuple[int, ...]
    fill: dict[int, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    mean_from: int | None = None  # rows from here on (padding) are the mean of this model's rows before it

    @property
    def rows(self) -> int:
        return len(self.own)

    def is_identity(self, rows_in: int) -> bool:
        """True when the output rows are the model's rows, unchanged."""
        return (rows_in == self.rows and not self.fill and self.mean_from is None
                and all(i == r for i, r in enumerate(self.own)))


def with_rows(vocab: Vocab, rows: int) -> Vocab:
    """The tokens that have an embedding row (id below the model's row count)."""
    return {t: i for t, i in vocab.items() if i < rows}


def union_order(base: Vocab, others: list[Vocab]) -> list[str]:
    """Tokens the base lacks, in model order and, within a model, by its ids: the order in which
    a union vocabulary appends them after the base's ids."""
    seen, new = set(base), []
    for vocab in others:
        for token in sorted(vocab, key=vocab.__getitem__):
            if token not in seen:
                seen.add(token)
                new.append(token)
    return new


def output_rows(out: Vocab, layout_rows: int, vocabs: dict[str, Vocab]) -> int:
    """The layout model's row count, grown to hold every output token that some model has a row for."""
    known = set().union(*vocabs.values()) if vocabs else set()
    needed = [i + 1 for t, i in out.items() if t in known]
    return max([layout_rows, *needed])


def missing(vocab: Vocab, out: Vocab) -> list[str]:
    """The model's tokens (in its id order) that the output vocabulary lacks."""
    return sorted((t for t in vocab if t not in out), key=vocab.__getitem__)


def align(out: Vocab, rows: int, vocabs: dict[str, Vocab], base: str, layout: str,
          rows_in: dict[str, int]) -> dict[str, RowMap]:
    """Each model's RowMap onto the output vocabulary `out` of `rows` rows.

    `vocabs` are the models' tokens that have rows (`with_rows`); `rows_in` their row counts."""
    by_row = {i: t for t, i in out.items() if i < rows}
    maps = {}
    for model, vocab in vocabs.items():
        used = set(vocab.values())  # rows of this model that carry a token
        own, fill = [], {}
        for i in range(rows):
            token = by_row.get(i)
            if token is not None:
                src = vocab.get(token, -1)
                if src < 0:
                    fill[i] = _token_fill(token, vocabs, base)
            else:
                src = i if i < rows_in[model] and i not in used else -1
                if src < 0:
                    fill[i] = ((layout, i),) if i < rows_in[layout] else ()
            own.append(src)
        maps[model] = RowMap(tuple(own), fill)
    return maps


def _token_fill(token: str, vocabs: dict[str, Vocab], base: str) -> tuple[tuple[str, int], ...]:
    if token in vocabs.get(base, {}):
        return ((base, vocabs[base][token]),)
    return tuple((m, v[token]) for m, v in vocabs.items() if token in v)


def runs(own: tuple[int, ...] | list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive source rows: (first output row, end output row, first source row),
    so each run is one contiguous read; rows marked -1 belong to no run."""
    out: list[tuple[int, int, int]] = []
    for i, src in enumerate(own):
        if src < 0:
            continue
        if out and out[-1][1] == i and out[-1][2] + (i - out[-1][0]) == src:
            out[-1] = (out[-1][0], i + 1, out[-1][2])
        else:
            out.append((i, i + 1, src))
    return out


def remap_ids(value: object, old: dict[int, str], out: Vocab) -> object:
    """A config's token id (or list of ids) moved to the output vocabulary; ids whose token the
    output lacks, and non-ids, are returned unchanged."""
    if isinstance(value, list):
        return [remap_ids(v, old, out) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value in old:
        return out.get(old[value], value)
    return value

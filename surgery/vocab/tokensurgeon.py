"""Tokenizer transplant (mergekit-tokensurgeon): MODEL gets DONOR's vocabulary. Every embedding row
(input embeddings, and the output head when it is not tied) is laid out in the donor's ids: a token
both tokenizers have (token_keys.py says when) keeps the model's row, a token only the donor has gets
an approximation (approximate.py: OMP over shared tokens in the donor's embedding space, or the mean
of the model's rows of its pieces), rows past the donor's tokenizer are zeros. Every other tensor is
copied in row blocks; the config takes the new vocabulary size and the donor's special token ids, and
the donor's tokenizer files are written beside the weights, all into an atomic folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from surgery import __version__
from surgery.errors import InputError
from surgery.io.locate import resolve_path
from surgery.io.output import TOKENIZER_FILES, atomic_folder, check_output_path, copy_side_files, write_json
from surgery.io.reader import ModelFolder
from surgery.io.writer import write_tensors
from surgery.vocab.approximate import APPROXIMATIONS, Context
from surgery.vocab.token_keys import key_index, match, text_of, token_keys
from surgery.vocab.tokenizer_files import TokenizerInfo, read_tokenizer

ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


@dataclass
class Transplant:
    model: ModelFolder
    donor_path: str
    donor_weights: ModelFolder | None     # None: a donor with a tokenizer only (no omp)
    model_tokenizer: TokenizerInfo
    donor_tokenizer: TokenizerInfo
    shared: dict[int, int]                # donor id -> model id
    new: list[int]                        # donor ids the model lacks, in id order
    rows: int                             # output rows of each embedding matrix
    matrices: list[tuple[str, str | None]]  # (model tensor, the donor's tensor of the same side)
    method: str
    k: int

    def report(self) -> dict:
        return {"model": self.model.path, "donor": self.donor_path, "method": self.method, "k": self.k,
                "donor_tokens": len(self.donor_tokenizer.vocab), "shared": len(self.shared),
                "approximated": len(self.new), "rows": self.rows, "matrices": [m for m, _ in self.matrices]}


def plan_transplant(model: str, donor: str, method: str = "omp", k: int = 64) -> Transplant:
    """Open both, match their tokens and check the method can run; reads tokenizers and headers only."""
    if method not in APPROXIMATIONS:
        raise InputError(f"unknown approximation method {method!r} (known: {', '.join(APPROXIMATIONS)})")
    folder = ModelFolder(resolve_path(model))
    donor_path = resolve_path(donor)
    model_tok, donor_tok = read_tokenizer(folder.path), _donor_tokenizer(donor_path)
    shared = match(token_keys(donor_tok), key_index(token_keys(model_tok)))
    new = sorted(i for i in donor_tok.vocab.values() if i not in shared)
    weights = _donor_weights(donor_path, method)
    matrices = _matrices(folder, weights)
    rows = max([len(donor_tok.vocab)] + [weights.tensors[d].shape[0] for _, d in matrices if weights and d])
    if APPROXIMATIONS[method].needs_donor_weights and new and not 1 <= k <= len(shared):
        raise InputError(f"--k {k}: OMP combines k of the {len(shared)} tokens both tokenizers share; "
                         f"give 1 to {len(shared)}")
    return Transplant(folder, donor_path, weights, model_tok, donor_tok, shared, new, rows, matrices, method, k)


def _donor_tokenizer(path: str) -> TokenizerInfo:
    try:
        return read_tokenizer(path)
    except InputError as e:
        raise InputError(f"donor {path}: its tokenizer cannot be read: {e}") from None


def _donor_weights(path: str, method: str) -> ModelFolder | None:
    try:
        return ModelFolder(path)
    except InputError as e:
        if APPROXIMATIONS[method].needs_donor_weights:
            raise InputError(f"donor {path}: --method {method} needs the donor's embeddings, but {e}; give a donor "
                             "model folder, or use --method subword with a tokenizer-only donor") from None
        return None


def _matrices(model: ModelFolder, donor: ModelFolder | None) -> list[tuple[str, str | None]]:
    """The model's vocabulary matrices, each with the donor's matrix of the same side (its input
    embeddings stand in for a tied output head)."""
    embed = _embedding(model.tensors, model.path)
    donor_embed = _embedding(donor.tensors, donor.path) if donor else None
    out = [(embed, donor_embed)]
    if "lm_head.weight" in model.tensors:
        out.append(("lm_head.weight", ("lm_head.weight" if donor and "lm_head.weight" in donor.tensors
                                       else donor_embed)))
    return out


def _embedding(tensors, path: str) -> str:
    found = [n for n in tensors if n.endswith(("embed_tokens.weight", "wte.weight"))]
    if len(found) != 1:
        raise InputError(f"{path}: expected one input embedding tensor (…embed_tokens.weight), found {found or 'none'}")
    return found[0]


def new_matrix(plan: Transplant, name: str, donor_name: str | None) -> torch.Tensor:
    """(rows, H): the model's matrix `name` in the donor's ids."""
    model_rows = plan.model.read(name).float()  # (V_model, H)
    out = model_rows.new_zeros(plan.rows, model_rows.shape[1])
    pairs = [(d, m) for d, m in sorted(plan.shared.items()) if m < len(model_rows) and d < plan.rows]
    out[[d for d, _ in pairs]] = model_rows[[m for _, m in pairs]]
    if plan.new:
        approximation = APPROXIMATIONS[plan.method]
        donor_rows = plan.donor_weights.read(donor_name).float() if approximation.needs_donor_weights else None
        limit = min(plan.rows, len(donor_rows)) if donor_rows is not None else plan.rows  # rows a donor id may have
        usable, new = [(d, m) for d, m in pairs if d < limit], [d for d in plan.new if d < limit]
        keys, cut = token_keys(plan.donor_tokenizer), plan.model_tokenizer.tokenizer

        def pieces(donor_id: int) -> list[int]:
            return cut.encode(text_of(keys[donor_id]), add_special_tokens=False).ids

        out[new] = approximation.rows(Context(model_rows, donor_rows, usable, pieces, min(plan.k, len(usable))), new)
    return out


def write_transplant(plan: Transplant, out: str, dtype: torch.dtype | None = None, shard_size: int = 5 * 1024**3,
                     block_bytes: int = 16 * 1024**2, force: bool = False, progress=None) -> str:
    out = check_output_path(out, [plan.model.path, plan.donor_path], force)
    replaced = {name: new_matrix(plan, name, donor) for name, donor in plan.matrices}
    names = sorted(plan.model.tensors)
    entries = [(n, dtype or plan.model.tensors[n].dtype,
                tuple(replaced[n].shape) if n in replaced else plan.model.tensors[n].shape) for n in names]
    blocks = {n: ((lambda t=replaced[n]: iter([t])) if n in replaced else
                  (lambda n=n: plan.model.blocks(n, block_bytes))) for n in names}
    metadata = {"format": "pt", "surgery.version": __version__, "surgery.method": f"tokensurgeon ({plan.method})",
                "surgery.models": f"model={plan.model.path},donor={plan.donor_path}"}
    with atomic_folder(out) as tmp:
        try:
            write_tensors(tmp, entries, blocks, metadata, shard_size, progress)
        finally:
            plan.model.close()
        write_json(os.path.join(tmp, "config.json"), new_config(plan, dtype))
        _generation_config(plan, tmp)
        copy_side_files(plan.donor_path, tmp, TOKENIZER_FILES)
        write_json(os.path.join(tmp, "tokensurgeon.json"), plan.report())
    return out


def new_config(plan: Transplant, dtype: torch.dtype | None) -> dict:
    config = dict(plan.model.config)
    config["vocab_size"] = plan.rows
    donor = _read_json(os.path.join(plan.donor_path, "config.json"))
    for key in ID_KEYS:
        if key in donor or key in config:
            config[key] = donor.get(key, _token_id(plan.donor_tokenizer, key.removesuffix("_id")))
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    return config


def _token_id(info: TokenizerInfo, name: str) -> int | None:
    value = info.config.get(name)
    content = value.get("content") if isinstance(value, dict) else value
    return info.vocab.get(content) if isinstance(content, str) else None


def _generation_config(plan: Transplant, folder: str) -> None:
    """The model's generation config with the donor's special token ids."""
    config = _read_json(os.path.join(plan.model.path, "generation_config.json"))
    if config:
        new = new_config(plan, None)
        write_json(os.path.join(folder, "generation_config.json"),
                   {**config, **{k: new[k] for k in ID_KEYS if k in config and k in new}})


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)

"""Tokenizers between GGUF metadata (`tokenizer.ggml.*`) and Hugging Face tokenizer files, both ways.

Reading builds the tokenizer transformers' GGUF path builds (`get_gguf_tokenizer`, then
`convert_gguf_tokenizer` and a `TokenizersBackend`), from the metadata our header parser already
holds, and saves it with the chat template; the file's own `tokenizer.*` keys are kept beside it
(`gguf_tokenizer.json`), so a GGUF written from this model carries them unchanged.

Writing gives the keys llama.cpp's `convert_hf_to_gguf.py` writes for a byte-level BPE vocabulary
(its `gpt2` tokenizer model): every id up to the embedding's rows (`[PAD<i>]` where the tokenizer has
none), each token's type (control for special added tokens, user-defined for other added tokens,
normal otherwise), the merges, the pre-tokenizer's name in llama.cpp, the special token ids, whether
to add BOS/EOS, and the chat template. The pre-tokenizer's name is read from the structure of
`tokenizer.json`'s pre-tokenizer (byte-level GPT-2 splitting, digits split first, or the split regex
of a known family); one we cannot name is refused rather than guessed.
"""

from __future__ import annotations

import json
import os

from surgery.errors import InputError
from surgery.io.gguf_format import ARRAY, STRING, Typed

CARRIED = "gguf_tokenizer.json"  # a GGUF source's own tokenizer keys, beside the tokenizer files
FULL_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")  # what transformers' reader reads in full
SPECIALS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
            "pad_token": "padding_token_id"}
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # llama.cpp's token types
U32, I32, BOOL = 4, 5, 7


# Reading -----------------------------------------------------------------------------------------

def tokenizer_parts(metadata: dict, types: dict) -> tuple[str, dict, dict]:
    """(architecture, tokenizer dict, tokenizer config) as transformers' `get_gguf_tokenizer` makes them."""
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING

    def value(key: str):
        strings = types[key] == (ARRAY, STRING) and key not in FULL_ARRAYS
        return len(metadata[key]) if strings else metadata[key]  # its reader counts other string arrays

    grouped = {group: {name: value(f"tokenizer.{key}") for key, name in renames.items()
                       if f"tokenizer.{key}" in metadata} for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)
    for name, key in SPECIALS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    return metadata["general.architecture"], tokenizer, config


def save_tokenizer(metadata: dict, types: dict, folder: str, path: str) -> None:
    """The file's tokenizer as Hugging Face files in `folder`, and its own keys in `CARRIED`."""
    from transformers.integrations.gguf import convert_gguf_tokenizer

    try:
        from transformers import TokenizersBackend
    except ImportError:  # transformers 4: its tokenizer classes read the file themselves
        return _save_with_auto(path, folder)
    if "tokenizer.ggml.tokens" not in metadata:
        raise InputError(f"{path}: the GGUF file holds no tokenizer (no tokenizer.ggml.tokens)")
    try:
        arch, tokenizer, config = tokenizer_parts(metadata, types)
        backend, extra = convert_gguf_tokenizer(arch, tokenizer)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise InputError(f"{path}: transformers cannot build a tokenizer from this file ({e})") from None
    TokenizersBackend(tokenizer_object=backend, **config, **extra).save_pretrained(folder)
    carried = {k: [v, *types[k]] for k, v in metadata.items() if k.startswith("tokenizer.")}
    with open(os.path.join(folder, CARRIED), "w") as f:
        json.dump(carried, f)


def _save_with_auto(path: str, folder: str) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path)).save_pretrained(folder)


# Writing -----------------------------------------------------------------------------------------

def carried_keys(folder: str, rows: int) -> dict[str, Typed] | None:
    """A GGUF source's own tokenizer keys, when `folder` has them and they fit `rows` tokens."""
    file = os.path.join(folder, CARRIED)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        carried = json.load(f)
    tokens = carried.get("tokenizer.ggml.tokens", [[]])[0]
    if len(tokens) != rows:
        return None
    return {k: Typed(kind, value, item) for k, (value, kind, item) in carried.items()}


def pre_tokenizer_name(tokenizer: dict, where: str) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for the pre-tokenizer of a `tokenizer.json`."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    steps = _steps(tokenizer.get("pre_tokenizer"))
    if steps == [("ByteLevel", True)]:
        return "gpt-2"
    if steps == [("Digits", True), ("ByteLevel", True)]:
        return "smollm"  # GPT-2's splitting with every digit apart (llama.cpp's smollm and starcoder)
    if len(steps) == 2 and steps[0][0] == "Split" and steps[1] == ("ByteLevel", False):
        names = [name for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items() if regex == steps[0][1]]
        if names:
            return names[0]
    raise InputError(f"{where}: tokenizer.json's pre-tokenizer {steps or 'none'} has no name in llama.cpp that we "
                     "know, so llama.cpp would split text differently; convert this model with llama.cpp's "
                     "convert_hf_to_gguf.py, which identifies tokenizers by their output")


def _steps(pre: dict | None) -> list[tuple]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre["pretokenizers"] for s in _steps(p)]
    if pre.get("type") == "ByteLevel":
        return [("ByteLevel", pre.get("use_regex", True))]
    if pre.get("type") == "Digits":
        return [("Digits", pre.get("individual_digits", False))]
    if pre.get("type") == "Split":
        pattern = pre.get("pattern", {})
        return [("Split", pattern.get("Regex", pattern.get("String")))]
    return [(pre.get("type"), None)]


def tokenizer_keys(folder: str, config: dict, rows: int) -> dict[str, Typed]:
    """The `tokenizer.*` keys for the tokenizer files in `folder` and an embedding of `rows` rows."""
    where = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(where):
        raise InputError(f"{folder}: no tokenizer.json; a GGUF file needs the model's tokenizer")
    with open(where) as f:
        tokenizer = json.load(f)
    model = tokenizer.get("model", {})
    byte_level = _steps(tokenizer.get("pre_tokenizer"))[-1:] in ([("ByteLevel", True)], [("ByteLevel", False)])
    if model.get("type") != "BPE" or model.get("byte_fallback") or not byte_level:
        kind = f"{model.get('type')} tokenizer" + (" with byte fallback" if model.get("byte_fallback") else "")
        raise InputError(f"{where}: a {kind} is not byte-level BPE, the only vocabulary written to GGUF here "
                         "(llama.cpp's gpt2 model); convert this model with llama.cpp's convert_hf_to_gguf.py")
    settings = _tokenizer_config(folder)
    tokens, kinds = _tokens(tokenizer, rows, where)
    keys = {
        "tokenizer.ggml.model": Typed(STRING, "gpt2"),
        "tokenizer.ggml.pre": Typed(STRING, pre_tokenizer_name(tokenizer, where)),
        "tokenizer.ggml.tokens": Typed(ARRAY, tokens, STRING),
        "tokenizer.ggml.token_type": Typed(ARRAY, kinds, I32),
        "tokenizer.ggml.merges": Typed(ARRAY, [m if isinstance(m, str) else " ".join(m) for m in model["merges"]],
                                       STRING),
    }
    keys.update(_special_ids(tokenizer, settings, config, tokens))
    keys.update(_add_flags(tokenizer, settings))
    template = chat_template(folder, settings)
    if template:
        keys["tokenizer.chat_template"] = Typed(STRING, template)
    return keys


def _tokenizer_config(folder: str) -> dict:
    file = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        return json.load(f)


def _tokens(tokenizer: dict, rows: int, where: str) -> tuple[list[str], list[int]]:
    by_id = {i: t for t, i in tokenizer["model"]["vocab"].items()}
    added = {a["id"]: a for a in tokenizer.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    if by_id and max(by_id) >= rows:
        raise InputError(f"{where}: token id {max(by_id)} has no embedding row (the model has {rows}); "
                         "the tokenizer does not belong to these weights")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(rows)]
    kinds = [(CONTROL if added[i]["special"] else USER_DEFINED) if i in added
             else NORMAL if i in by_id else USER_DEFINED for i in range(rows)]
    return tokens, kinds


def _special_ids(tokenizer: dict, settings: dict, config: dict, tokens: list[str]) -> dict[str, Typed]:
    """Special token ids from tokenizer_config.json (by content), else config.json, as llama.cpp's SpecialVocab."""
    ids = {t: i for i, t in enumerate(tokens)}
    out = {}
    for name, key in SPECIALS.items():
        token = settings.get(name)
        token = token.get("content") if isinstance(token, dict) else token
        token_id = ids.get(token) if token is not None else config.get(name.replace("_token", "_token_id"))
        if isinstance(token_id, int) and 0 <= token_id < len(tokens):
            out[f"tokenizer.ggml.{key}"] = Typed(U32, token_id)
    return out


def _add_flags(tokenizer: dict, settings: dict) -> dict[str, Typed]:
    """add_bos/add_eos from tokenizer_config.json, else from the post-processor's single template."""
    single = (tokenizer.get("post_processor") or {}).get("single") or []
    first, last = (single[0], single[-1]) if single else ({}, {})
    flags = {"add_bos_token": settings.get("add_bos_token", "SpecialToken" in first),
             "add_eos_token": settings.get("add_eos_token", "SpecialToken" in last)}
    return {f"tokenizer.ggml.{k}": Typed(BOOL, bool(v)) for k, v in flags.items()}


def chat_template(folder: str, settings: dict) -> str | None:
    file = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(file):
        with open(file) as f:
            return f.read()
    template = settings.get("chat_template")
    return template if isinstance(template, str) else None

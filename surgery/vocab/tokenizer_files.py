"""A model folder's tokenizer as vocabulary surgery needs it: every token's id, the added tokens with
their flags, the special tokens named in tokenizer_config.json, and the chat template; and writing a
tokenizer whose vocabulary is extended with other models' tokens.

tokenizer.json is read with the `tokenizers` library alone (no model, no transformers import). A folder
with only legacy files (tokenizer.model, vocab.json + merges.txt) is converted by transformers'
AutoTokenizer, never with remote code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tokenizers import AddedToken, Tokenizer

from surgery.errors import InputError
from surgery.io.output import write_json

LEGACY_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
SPECIAL_KEYS = ("extra_special_tokens", "additional_special_tokens")  # transformers 5, 4


@dataclass(frozen=True)
class TokenizerInfo:
    path: str                        # the model folder
    tokenizer: Tokenizer
    vocab: dict[str, int]            # every token -> id, added tokens included
    added: dict[str, AddedToken]     # added tokens by content
    specials: tuple[str, ...]        # extra special tokens listed in tokenizer_config.json
    config: dict                     # tokenizer_config.json ({} when absent)
    chat_template: str | None


def read_tokenizer(path: str) -> TokenizerInfo:
    """The tokenizer of the model folder `path`; InputError when it has none or it cannot be read."""
    tokenizer = _load(path)
    config = _read_json(os.path.join(path, "tokenizer_config.json"))
    added = {t.content: t for t in tokenizer.get_added_tokens_decoder().values()}
    listed = next((config[k] for k in SPECIAL_KEYS if isinstance(config.get(k), list)), [])
    specials = tuple(_content(t) for t in listed)
    return TokenizerInfo(path, tokenizer, tokenizer.get_vocab(with_added_tokens=True), added, specials, config,
                         chat_template(path, config))


def _load(path: str) -> Tokenizer:
    file = os.path.join(path, "tokenizer.json")
    if os.path.isfile(file):
        try:
            return Tokenizer.from_file(file)
        except Exception as e:  # noqa: BLE001 - the Rust library raises plain Exceptions for malformed files
            raise InputError(f"{file}: not a readable tokenizer ({e})") from None
    if not any(os.path.isfile(os.path.join(path, f)) for f in LEGACY_FILES[:2]):
        raise InputError(f"{path}: no tokenizer files (tokenizer.json, or tokenizer.model / vocab.json + merges.txt); "
                         "vocabulary surgery matches rows by token, so copy this model's tokenizer into its folder")
    return _convert_legacy(path)


def _convert_legacy(path: str) -> Tokenizer:
    try:
        from transformers import AutoTokenizer

        backend = getattr(AutoTokenizer.from_pretrained(path, trust_remote_code=False), "backend_tokenizer", None)
    except Exception as e:  # noqa: BLE001 - the conversion runs the Rust library, which raises plain Exceptions
        # missing sentencepiece, corrupt files, remote code required...
        raise InputError(f"{path}: cannot read its legacy tokenizer files ({type(e).__name__}: {e}); "
                         "save the tokenizer as tokenizer.json first") from None
    if backend is None:
        raise InputError(f"{path}: its tokenizer has no tokenizer.json form; save it as tokenizer.json first")
    return backend


def _read_json(file: str) -> dict:
    if not os.path.isfile(file):
        return {}
    try:
        with open(file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{file}: invalid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _content(token: object) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


def chat_template(path: str, config: dict) -> str | None:
    """The folder's chat template: chat_template.jinja, chat_template.json, or tokenizer_config.json
    (transformers' order); named templates are compared as one JSON string."""
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja) as f:
            return f.read()
    value = _read_json(os.path.join(path, "chat_template.json")).get("chat_template") or config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def extend(base: TokenizerInfo, new: list[AddedToken]) -> Tokenizer:
    """A copy of the base's tokenizer with the `new` tokens appended as added tokens, in order."""
    tokenizer = Tokenizer.from_str(base.tokenizer.to_str())
    for token in new:
        tokenizer.add_tokens([token])
    return tokenizer


def token_flags(info: TokenizerInfo, token: str) -> AddedToken:
    """How `token` is added to another tokenizer: with its added-token flags where it is one, else as
    a plain (normalized, not special) token, as transformers' `add_tokens` adds a string."""
    src = info.added.get(token)
    if src is None:
        return AddedToken(token, normalized=True, special=False)
    return AddedToken(src.content, single_word=src.single_word, lstrip=src.lstrip, rstrip=src.rstrip,
                      normalized=src.normalized, special=src.special)


def write_extended(base: TokenizerInfo, tokenizer: Tokenizer, specials: list[str], folder: str) -> None:
    """Write tokenizer.json and tokenizer_config.json (new special tokens listed) into `folder`, and
    remove legacy vocabulary files copied there, which would disagree with the extended vocabulary."""
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    config = dict(base.config)
    key = next((k for k in SPECIAL_KEYS if k in config), SPECIAL_KEYS[0])
    listed = list(config.get(key) or [])
    if specials:
        config[key] = listed + [s for s in specials if s not in {_content(t) for t in listed}]
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):  # transformers 4 lists every added token here as well
        config["added_tokens_decoder"] = {**decoder, **_decoder_entries(tokenizer, decoder)}
    write_json(os.path.join(folder, "tokenizer_config.json"), config)
    for name in LEGACY_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))


def _decoder_entries(tokenizer: Tokenizer, known: dict) -> dict[str, dict]:
    return {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in tokenizer.get_added_tokens_decoder().items() if str(i) not in known}

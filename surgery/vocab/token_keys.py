"""Tokens of two different tokenizers compared by what they stand for rather than how each tokenizer
spells them: a byte-level BPE token (`Ġthe`, `Ċ`) by its bytes, a SentencePiece token (`▁the`,
`<0x0A>`) by its text with `▁` as a space and byte-fallback tokens as their byte, any other token by
its UTF-8 text; a special token (BOS, EOS, UNK, PAD) also by its role, so `<s>` and `<|im_start|>`
meet when both are BOS. This is mergekit-tokensurgeon's normalisation made exact: mergekit turns the
`Ġ`/`▁` prefix into a word-start marker and leaves other byte-level characters as spelled (`Ċ` never
meets `\n`).
"""

from __future__ import annotations

import json

from surgery.vocab.tokenizer_files import TokenizerInfo

Key = tuple[str, bytes]  # ("role", b"bos") or ("text", the token's bytes)
ROLES = ("bos", "eos", "unk", "pad")


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the printable character that stands for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTES = byte_decoder()


def spelling(info: TokenizerInfo) -> str:
    """'bytelevel', 'metaspace' or 'plain': how the tokenizer spells tokens, from its pipeline."""
    data = json.loads(info.tokenizer.to_str())
    kinds = set(_types(data.get("pre_tokenizer"))) | set(_types(data.get("decoder")))
    if "ByteLevel" in kinds:
        return "bytelevel"
    return "metaspace" if "Metaspace" in kinds or "▁" in json.dumps(data.get("decoder")) else "plain"


def _types(node: object) -> list[str]:
    if isinstance(node, dict):
        return [node.get("type", "")] + [t for v in node.values() for t in _types(v)]
    if isinstance(node, list):
        return [t for v in node for t in _types(v)]
    return []


def token_bytes(token: str, how: str) -> bytes:
    """The bytes a (non-added) vocabulary token stands for."""
    if how == "bytelevel" and all(c in BYTES for c in token):
        return bytes(BYTES[c] for c in token)
    if how == "metaspace":
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                return bytes([int(token[3:5], 16)])
            except ValueError:
                pass
        return token.replace("▁", " ").encode()
    return token.encode()


def roles(info: TokenizerInfo) -> dict[str, str]:
    """{token content: role} for the tokenizer's BOS, EOS, UNK and PAD tokens."""
    out = {}
    for role in ROLES:
        value = info.config.get(f"{role}_token")
        content = value.get("content") if isinstance(value, dict) else value
        if isinstance(content, str) and content not in out:
            out[content] = role
    return out


def token_keys(info: TokenizerInfo) -> dict[int, tuple[Key, ...]]:
    """Every id's keys, the most specific first: its role (special tokens), then its bytes."""
    how, named = spelling(info), roles(info)
    out: dict[int, tuple[Key, ...]] = {}
    for token, i in info.vocab.items():
        text = token.encode() if token in info.added else token_bytes(token, how)
        keys = (("role", named[token].encode()),) if token in named else ()
        out[i] = keys + (("text", text),)
    return out


def key_index(keys: dict[int, tuple[Key, ...]]) -> dict[Key, int]:
    """Key -> id; where ids share a key, the lowest id keeps it."""
    index: dict[Key, int] = {}
    for i in sorted(keys):
        for key in keys[i]:
            index.setdefault(key, i)
    return index


def match(donor: dict[int, tuple[Key, ...]], model: dict[Key, int]) -> dict[int, int]:
    """Donor id -> model id for every donor token the model also has (first matching key)."""
    out = {}
    for i, keys in donor.items():
        found = next((model[k] for k in keys if k in model), None)
        if found is not None:
            out[i] = found
    return out


def text_of(keys: tuple[Key, ...]) -> str:
    """A token's text, for re-tokenising it with another tokenizer (invalid UTF-8 replaced)."""
    return next(k[1] for k in keys if k[0] == "text").decode("utf-8", errors="replace")

"""A character-level tokenizer for the small world: one token per printable ASCII character, plus
the ChatML markers, a padding and an unknown token. Built locally with `tokenizers`, saved as a normal
Hugging Face tokenizer folder (`AutoTokenizer` loads it)."""

from __future__ import annotations

import string

SPECIALS = ("<unk>", "<pad>", "<|im_start|>", "<|im_end|>")
CHARS = tuple(c for c in string.printable if c not in "\t\r\x0b\x0c")  # 96 characters, "\n" included
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def char_tokenizer():
    """A `PreTrainedTokenizerFast` with ids: specials first (0-3), then CHARS in order."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML
    return fast

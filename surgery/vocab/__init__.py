"""Vocabulary surgery for merging models whose tokenizers differ: token alignment, its place in a
merge plan, and the tokenizer files read and written.
"""

"""surgery: streaming merges and checkpoint surgery for open-weight causal LMs."""

__version__ = "0.1.0"

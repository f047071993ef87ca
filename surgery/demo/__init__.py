"""Tiny random causal LMs built locally (the tests' fixtures) and the untrained demo that merges them."""

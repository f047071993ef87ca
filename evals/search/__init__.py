"""Merge search with evals in the loop: greedy soup, one-parameter sweeps, what they share, and the
small-world proof.
"""

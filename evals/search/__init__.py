"""Merge search with evals in the loop: greedy soup, one-parameter sweeps, evolutionary search (CMA-ES over
a genome, local or Ray workers), what they share, and the small-world proof.
"""

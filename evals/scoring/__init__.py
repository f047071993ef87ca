"""Scoring checkpoints: the lm-eval harness, the suites, the results store keyed by weight hash,
checkpoint identity and chat-template checks.
"""

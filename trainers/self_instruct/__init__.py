"""Self-Instruct (Wang et al. 2022): a model bootstraps an instruction dataset from a few seed tasks.
`spec.py` the spec and seed file, `prompts.py` what the model is asked and how its answers are parsed,
`filters.py` what is rejected, `run.py` the rounds; `seed_tasks.jsonl` the shipped seeds."""

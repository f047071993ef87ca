"""What the synthetic-data pipelines (Self-Instruct, Constitutional AI) share: the text backends that
generate and score (`backend.py`, one file per backend), the checkpointed progress of a long generation
(`progress.py`) and the dataset card written beside the data (`card.py`)."""

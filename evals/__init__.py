"""evals: part of the surgery bench (see README)."""

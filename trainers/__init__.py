"""trainers: part of the surgery bench (see README)."""

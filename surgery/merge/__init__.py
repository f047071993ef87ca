"""The merge: the spec (mergekit's YAML), the plan checked before any byte is written, per-tensor
parameters, seeded draws, exact order statistics, the one streaming loop (engine) and the methods,
one file each.
"""

"""What scores mean: metrics (G, tax, normalised accuracy), significance tests, continual-learning
metrics, the Pareto front, lineage and expert selection.
"""

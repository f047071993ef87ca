"""Training pipelines with evaluation in the loop: continual learning with every stage scored into the
results store (continual.py), its small-world proof (continual_proof.py), and the safety data's
mixing-weight curve of refusal, over-refusal and alignment tax (safety_curve.py)."""

"""PEFT adapters folded into their base model's weights, streamed block by block: LoRA (rsLoRA,
rank and alpha patterns, embeddings, DoRA), IA3 and VeRA. `FoldedModel` reads like a model folder,
so folding runs through the merge engine and an adapter can be a merge input (`base+adapter`).
"""

"""Single-model operations run through the engine as passthrough plans: convert (dtype), slice
(layer ranges), rename (tensor names), and GGUF import.
"""

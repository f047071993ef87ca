"""Mixtures of experts from dense models, as mergekit-moe builds them: the base model's attention,
embeddings and norms, each expert's MLP as one expert of every layer, and routers whose rows are
computed from each expert's example prompts (the base's hidden states per layer). Written as a
Mixtral folder, or a Qwen2-MoE folder when a shared expert is given; `AutoModelForCausalLM` loads both.

`spec.py` reads mergekit-moe's YAML, `gates.py` computes the routers (one function per gate mode),
`layouts.py` holds the output architectures, `build.py` plans and streams the output, and
`routing.py` measures where a built model routes tokens.
"""

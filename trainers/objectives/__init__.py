"""Training objectives: what a batch holds and what loss is computed on it. One module each.

REGISTRY maps the `objective.name` of a run spec to its module. An objective module provides
- `Config`: a pydantic model with `extra="forbid"` (its fields sit beside `name` in the spec);
- `SHAPES`: the row shapes it trains on, among "prompt_completion", "messages" and "text"
  (rows of other shapes are refused when the data is read, with file and line);
- `encode(row, tokenizer, template, config) -> dict`: one row as token lists (every list is one
  sequence, cut to `batch.max_length` by the loop, or refused, as the spec says);
- `collate(examples, pad_id) -> dict[str, Tensor]`: padded tensors, including `num_items`, the
  count of items (tokens, pairs) the loss averages over, so that gradient accumulation and data
  parallelism weight micro-batches exactly as one big batch would be weighted;
- `build_batch(rows, tokenizer, template, config) -> dict`: `collate` of the encoded rows;
- `loss(model, batch, config) -> (loss, metrics)`: a scalar mean over the batch's items, and a dict
  of floats to log;
- optionally `annotate(reference, batch, config) -> dict`: when present, the loop loads a frozen
  copy of the base model (the reference policy of DPO or KTO) and calls this under no_grad before
  `loss`, so the batch carries what `loss` needs from it (reference log-probabilities, say). The
  reference is the folder named by the objective's `reference` field when it has one, else the base;
  when the method is an adapter, it is the policy with its adapter switched off (no second copy);
- optionally `load_model(path, dtype, trust_remote_code=False) -> PreTrainedModel`: the model class
  the objective trains, when it is not `AutoModelForCausalLM` (the reward model's scalar head); the
  method then attaches to what it returns.

An objective that needs a loop of its own (PPO: rollouts, a value head, GAE) instead sets `LOOP` to
the module whose `train(run, resume, stop_after, quiet)` runs it; `trainers.loop.train` hands it there.
"""

from __future__ import annotations

from types import ModuleType

from trainers.objectives import dpo, grpo, ipo, kto, orpo, ppo, pretrain, reward, rft, sft, simpo, spin

REGISTRY: dict[str, ModuleType] = {
    "sft": sft,
    "pretrain": pretrain,
    "ppo": ppo,
    "grpo": grpo,
    "rft": rft,
    "spin": spin,
    "dpo": dpo,
    "ipo": ipo,
    "simpo": simpo,
    "orpo": orpo,
    "kto": kto,
    "reward": reward,
}

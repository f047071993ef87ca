"""The README's fold tolerance: max |logit difference| between base + LoRA (PEFT) and the folded model on
several prompts (a chat prompt among them); `python bench/fold_logits.py BASE ADAPTER FOLDED`."""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base, adapter, folded = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(base)
peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
fold = AutoModelForCausalLM.from_pretrained(folded, dtype=torch.float32).eval()
chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                               add_generation_prompt=True, tokenize=False)
prompts = {"12+34=": "12+34=", "37+45=82 (train-style)": "37+45=82", "chat (capital of France)": chat,
           "plain sentence": "The quick brown fox jumps over the lazy dog because it wanted to see the other side."}
rows = []
with torch.no_grad():
    for name, text in prompts.items():
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        a, b = peft(ids).logits, fold(ids).logits
        rows.append({"prompt": name, "tokens": ids.shape[1], "max_abs_diff": float((a - b).abs().max()),
                     "max_abs_logit": float(a.abs().max())})
print(json.dumps(rows, indent=1))

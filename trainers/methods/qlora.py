"""QLoRA: LoRA on a base whose linear weights are frozen in 4-bit NormalFloat (NF4), themselves with
quantised quantisation constants ("double quantisation"); the adapters train in 16/32-bit and
gradients flow through the dequantised weights (Dettmers et al. 2023, arXiv:2305.14314).

`load_model` loads the base 4-bit with bitsandbytes (`pip install surgery[qlora]`), on the GPU when
there is one and on the CPU otherwise. The result is a PEFT adapter folder, as for LoRA: load it on
the same 4-bit base (or on the full-precision base, where it is the same LoRA update).

On CPUs with avx512_bf16, bitsandbytes repacks a 4-bit weight into an inference-only layout the first
time the layer runs without gradients (an eval pass, `generate`); after that no gradient reaches the
adapters and training silently stops. `keep_trainable` turns that repacking off; it runs on loading,
before any forward pass.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from surgery.errors import InputError, SpecError
from trainers.methods import lora, peft_adapter
from trainers.methods.method import TrainingMethod

INSTALL = "pip install surgery[qlora] (or pip install bitsandbytes)"


class Config(lora.Config):
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base weights")
    double_quant: bool = Field(True, description="quantise the quantisation constants too (saves ~0.37 bit a weight)")


def import_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError:
        raise SpecError("run spec", "method.name", "method 'qlora' needs the bitsandbytes package, which is not "
                        f"installed; install it with `{INSTALL}`, or train with method 'lora'") from None
    except (OSError, RuntimeError) as e:  # installed, but its native library does not load on this machine
        raise SpecError("run spec", "method.name", f"method 'qlora' needs bitsandbytes, which is installed but fails "
                        f"to load ({type(e).__name__}: {e}); reinstall it with `{INSTALL}`, or train with method "
                        "'lora'") from None
    return bitsandbytes


def load_model(path: str, config: Config, dtype: torch.dtype):
    """The base with every linear layer of the decoder in 4-bit; `dtype` is the compute dtype and that of the rest."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    import_bitsandbytes()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.quant_type,
                               bnb_4bit_use_double_quant=config.double_quant, bnb_4bit_compute_dtype=dtype)
    device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"
    try:
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map=device_map,
                                                     dtype=dtype)
    except (OSError, ValueError) as e:
        raise InputError(f"{path!r}: cannot load a causal LM from it in 4-bit ({e})") from None
    keep_trainable(model)
    return model


def keep_trainable(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights on every 4-bit layer; returns how many."""
    bnb = import_bitsandbytes()
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    """LoRA on the 4-bit model; norms and other 16-bit weights are cast to float32 for stable training."""
    from peft import prepare_model_for_kbit_training

    if keep_trainable(model) == 0:
        raise InputError(f"{type(model).__name__} has no 4-bit layer: load the base with qlora.load_model "
                         "(the training loop does), or train it with method 'lora'")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return peft_adapter.wrap(model, lora.peft_config(model, config))


def save(model, folder: str, config: Config) -> None:
    peft_adapter.save(model, folder)


METHOD = TrainingMethod("qlora", Config, attach, save, saves="adapter", load_model=load_model)

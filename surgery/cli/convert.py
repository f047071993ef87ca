"""`surgery convert IN OUT --dtype bfloat16`, `surgery convert IN OUT.gguf --quant q8_0`."""

from __future__ import annotations

import click

from surgery.cli.common import handled
from surgery.cli.streamed import dtype_option, gguf_options, output_format, output_options, write_plan


@click.command()
@click.argument("src", metavar="IN", type=click.Path())
@click.argument("out", type=click.Path())
@dtype_option("dtype of every floating-point tensor in OUT (integer buffers are copied as they are; a folder "
              "output needs it).")
@gguf_options
@output_options
@handled
def convert(src, out, dtype, out_format, quant, shard_size, block_size, force, allow_pickle, quiet) -> None:
    """Write the model IN (a folder, a GGUF file, a bitsandbytes folder) to OUT with its floating-point
    tensors cast to --dtype, or to the GGUF file OUT with its matrices in --quant."""
    from surgery.errors import InputError
    from surgery.ops.convert import plan_convert

    out_format, quant = output_format(out, out_format, quant, dtype)
    if out_format == "safetensors" and dtype is None:
        raise InputError("--dtype: give the dtype of OUT's tensors (float32, float16, bfloat16, float64), "
                         "or write a GGUF file (OUT.gguf, --quant)")
    plan = plan_convert(src, dtype or "float32", allow_pickle=allow_pickle)  # GGUF: quantized from float32
    write_plan(plan, out, shard_size, block_size, force, quiet, "convert", out_format, quant)

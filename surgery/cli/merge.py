"""`surgery merge SPEC OUT`."""

from __future__ import annotations

import os

import click

from surgery.cli.common import handled
from surgery.cli.streamed import dtype_option, gguf_options, output_format, output_options, run_plan


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path())
@dtype_option("Output dtype (overrides the spec's out_dtype/dtype).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", help="Where the arithmetic runs.")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; read no tensor data, write nothing.")
@click.option("--models-dir", type=click.Path(file_okay=False),
              help="Read relative model paths from here (default: the current folder).")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads for the arithmetic (default: the CPUs "
              "less one, for the engine's reading and writing threads).")
@click.option("--no-card", is_flag=True, help="Write no README.md model card beside the weights.")
@click.option("--keep-intermediates", type=click.Path(file_okay=False), metavar="DIR",
              help="Multi-stage specs: keep each named stage's output in DIR/NAME (reused when its spec is unchanged) "
              "and run every document; by default intermediates are deleted as soon as no later stage reads them.")
@gguf_options
@output_options
@handled
def merge(spec, out, dtype, device, dry_run, models_dir, threads, no_card, keep_intermediates, out_format, quant,
          shard_size, block_size, force, allow_pickle, quiet) -> None:
    """Merge the models of SPEC (a mergekit-style YAML) into the folder OUT (or the GGUF file OUT). A SPEC of
    several YAML documents is a multi-stage merge (mergekit-multi's format): OUT receives the final document's
    model."""
    from surgery.diagnose.report import describe_plan
    from surgery.merge.engine import Options
    from surgery.merge.multi import is_multi
    from surgery.merge.plan import plan_merge
    from surgery.merge.spec import load_spec

    if device == "cuda":
        _require_cuda()
    out_format, quant = output_format(out, out_format, quant, dtype)
    if out_format == "gguf":
        dtype = "float32"  # quantized once, from the float32 merge, rather than rounded twice
    options = Options(shard_size=shard_size, block_bytes=block_size, device=device, force=force, card=not no_card,
                      format=out_format, quant=quant)
    if is_multi(spec):
        from surgery.cli.multi_merge import merge_stages

        merge_stages(spec, out, options, dtype, allow_pickle, models_dir, keep_intermediates, dry_run, quiet, threads)
        return
    if keep_intermediates:
        raise click.UsageError("--keep-intermediates applies to multi-stage specs (several YAML documents) only")
    plan = plan_merge(load_spec(spec), spec, out_dtype=dtype, allow_pickle=allow_pickle, models_dir=models_dir)
    if dry_run:
        if out_format == "gguf":  # the file's keys and tensor names, checked as writing would check them
            from surgery.merge.outputs import gguf_layout

            gguf_layout(plan, quant, os.path.basename(out))
        click.echo(describe_plan(plan, options))
        return
    for warning in plan.warnings + (plan.vocab.warnings if plan.vocab else []):  # also shown by --dry-run
        click.echo(f"warning: {warning}", err=True)
    run_plan(plan, out, options, quiet, threads=threads)


def _require_cuda() -> None:
    import torch

    from surgery.errors import InputError

    if not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch; use --device cpu")

"""`surgery merge SPEC OUT`."""

from __future__ import annotations

import click

from surgery.cli.common import handled
from surgery.cli.streamed import dtype_option, output_options, run_plan


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
@output_options
@handled
def merge(spec, out, dtype, device, dry_run, models_dir, threads, shard_size, block_size, force, allow_pickle,
          quiet) -> None:
    """Merge the models of SPEC (a mergekit-style YAML) into the folder OUT."""
    from surgery.diagnose.report import describe_plan
    from surgery.merge.engine import Options
    from surgery.merge.plan import plan_merge
    from surgery.merge.spec import load_spec

    if device == "cuda":
        _require_cuda()
    plan = plan_merge(load_spec(spec), spec, out_dtype=dtype, allow_pickle=allow_pickle, models_dir=models_dir)
    options = Options(shard_size=shard_size, block_bytes=block_size, device=device, force=force)
    if dry_run:
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

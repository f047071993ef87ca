"""`surgery tokensurgeon MODEL DONOR OUT`: give MODEL the donor's tokenizer (mergekit-tokensurgeon)."""

from __future__ import annotations

import json
import signal

import click

from surgery.cli.common import handled, interrupt, size_option


@click.command()
@click.argument("model", type=click.Path())
@click.argument("donor", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--method", type=click.Choice(["omp", "subword", "mean"]), default="omp", show_default=True,
              help="Rows of tokens the model lacks: orthogonal matching pursuit over shared tokens in the donor's "
              "embedding space (needs donor weights), the mean of the model's rows of the token's pieces, or the "
              "mean row.")
@click.option("--k", type=click.IntRange(min=1), default=64, show_default=True,
              help="Shared tokens combined per new token (omp).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
              help="Output dtype (default: the model's).")
@click.option("--shard-size", default="5G", callback=size_option, help="Largest output shard, e.g. 5G or 500M.")
@click.option("--block-size", default="16M", callback=size_option, help="Rows of a copied tensor read at once.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (never an input).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handled
def tokensurgeon(model, donor, out, method, k, dtype, shard_size, block_size, force, quiet) -> None:
    """Give MODEL the vocabulary of DONOR (a model folder, or for --method subword/mean a tokenizer
    folder): shared tokens keep MODEL's rows, the donor's other tokens get approximated rows."""
    import torch

    from surgery.io.format import nbytes
    from surgery.merge.progress import Bar
    from surgery.vocab.tokensurgeon import plan_transplant, write_transplant

    plan = plan_transplant(model, donor, method, k)
    signal.signal(signal.SIGTERM, interrupt)
    out_dtype = getattr(torch, dtype) if dtype else None
    total = sum(nbytes(out_dtype or i.dtype, i.shape) for i in plan.model.tensors.values())
    with Bar(total, len(plan.model.tensors), disable=quiet, desc="tokensurgeon") as bar:
        path = write_transplant(plan, out, out_dtype, shard_size, block_size, force, bar.update)
    report = plan.report()
    click.echo(json.dumps({k: report[k] for k in ("donor_tokens", "shared", "approximated", "method")}))
    click.echo(f"wrote {path}")

"""`surgery diff A B [C ...] [--base BASE] [--png FILE] [--json]`."""

from __future__ import annotations

import click

from surgery.cli.common import handled, size_option


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--base", type=click.Path(), help="Compare task vectors (model − BASE): change, cosine, sign conflicts.")
@click.option("--png", type=click.Path(dir_okay=False), help="Also draw a heat map (layers × module type) to this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--tensors/--no-tensors", default=True, help="List every tensor (the table only).")
@click.option("--block-size", default="16M", callback=size_option, help="Working memory of one block of rows.")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin inputs (loaded with weights_only=True).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handled
def diff(models, base, png, as_json, tensors, block_size, allow_pickle, quiet) -> None:
    """Compare checkpoints tensor by tensor: ||A − B|| / ||B|| for every pair, or with --base the
    task vectors' sizes, pairwise cosines and the share of sign conflicts (what TIES resolves)."""
    from surgery.diagnose.diff import open_models, read_bytes, run_diff
    from surgery.diagnose.diff_report import as_json as to_json
    from surgery.diagnose.diff_report import colour_ranges, describe, grids
    from surgery.diagnose.heatmap import save_heatmap
    from surgery.io.output import check_file_output
    from surgery.merge.progress import Bar

    png = check_file_output(png, "--png") if png else None  # before the scan, which may take minutes
    folders, result = open_models(list(models), base, allow_pickle=allow_pickle)
    with Bar(read_bytes(folders), len(folders[-1].tensors), disable=quiet, desc="diff") as bar:
        result = run_diff(folders, result, block_size, progress=bar.update)
    click.echo(to_json(result) if as_json else describe(result, tensors))
    if png:
        path = save_heatmap(png, *grids(result), colour_ranges(result.columns()))
        click.echo(f"wrote {path}", err=as_json)

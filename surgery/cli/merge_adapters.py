"""`surgery merge-adapters A1 A2 [...] OUT --combination svd [--weight W ...] [--rank R] [--density D]`."""

from __future__ import annotations

import signal

import click

from surgery.adapters.combine import COMBINATIONS
from surgery.cli.common import handled, interrupt


@click.command(name="merge-adapters")
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--combination", type=click.Choice(COMBINATIONS),
              help="LoRA only: cat (exact, rank = sum of ranks) or a weighted merge of the deltas B@A "
                   "re-factorised by SVD (svd, ties_svd, dare_linear_svd, dare_ties_svd).")
@click.option("--weight", "weights", type=float, multiple=True,
              help="Weight of each adapter, once per adapter in order (default 1). LoRA: scales its delta; "
                   "soft prompts: its share of the mean.")
@click.option("--rank", type=int, help="Rank of the merged LoRA for *svd (default: the largest input rank).")
@click.option("--density", type=float, help="ties_svd, dare_*: share of each delta kept, in (0, 1].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds DARE's random drops (per module).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (never an input).")
@handled
def merge_adapters(adapters, out, combination, weights, rank, density, seed, force) -> None:
    """Merge PEFT adapters of one base into one adapter at OUT: LoRA adapters in adapter space, or
    PROMPT_TUNING / P_TUNING / PREFIX_TUNING adapters averaged into a soft-prompt soup."""
    from surgery.adapters.lora_merge import AdapterMergeSettings
    from surgery.adapters.merge_adapters import merge_adapters as run

    settings = AdapterMergeSettings(combination, rank, density, seed)
    signal.signal(signal.SIGTERM, interrupt)  # clean up the partial output on `kill` as on Ctrl-C
    path, summary = run(list(adapters), out, settings, weights, force)
    click.echo(summary)
    click.echo(f"wrote {path}")

"""`surgery moe SPEC.yaml OUT`: a mixture of experts from dense models (mergekit-moe's config)."""

from __future__ import annotations

import signal

import click

from surgery.cli.common import handled, interrupt, size_option


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path())
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "float64"]),
              help="Output dtype (default: the spec's dtype, else the base's).")
@click.option("--shard-size", default="5G", callback=size_option, help="Largest output shard, e.g. 5G or 500M.")
@click.option("--block-size", default="16M", callback=size_option, help="Rows of a copied tensor read at once.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", help="Where the base runs for the gates.")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Read relative model paths from here.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (never an input model).")
@click.option("--allow-identical-experts", is_flag=True,
              help="Build even when every expert is the same model (mergekit's "
              "--i-understand-this-is-not-useful-without-training): the MoE then equals the dense model.")
@click.option("--no-card", is_flag=True, help="Write no README.md model card.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handled
def moe(spec, out, dtype, shard_size, block_size, device, models_dir, force, allow_identical_experts, no_card,
        quiet) -> None:
    """Build a mixture of experts (Mixtral, or Qwen2-MoE with a shared expert) from the dense models of
    SPEC: the base's attention and embeddings, each expert's MLPs, routers from the experts' prompts."""
    from surgery.io.format import nbytes
    from surgery.merge.progress import Bar
    from surgery.moe.build import compute_gates, moe_card, plan_moe, write_moe
    from surgery.moe.gates import degenerate_layers
    from surgery.moe.spec import load_moe_spec

    parsed = load_moe_spec(spec, allow_identical_experts)
    plan = plan_moe(parsed, spec, models_dir, dtype)
    signal.signal(signal.SIGTERM, interrupt)
    gates, shared = compute_gates(plan, device)
    weak = degenerate_layers(gates)
    if weak:
        click.echo(f"warning: the router rows of layer(s) {weak} are nearly linearly dependent; some experts "
                   "will rarely be chosen there (are their prompts alike?)", err=True)
    with open(spec) as f:
        card = None if no_card else moe_card(plan, out, f.read())
    total = sum(nbytes(plan.dtype, s) for _, s in plan.entries)
    with Bar(total, len(plan.entries), disable=quiet, desc="moe") as bar:
        path = write_moe(plan, out, gates, shared, shard_size, block_size, force, card, bar.update)
    click.echo(f"wrote {path} ({plan.layout.name}, {len(plan.experts)} experts, "
               f"{plan.spec.experts_per_token} per token)")

"""`surgery safety-data SPEC.yaml`: SFT and preference rows from the safety taxonomy (trainers/safety/build.py)."""

from __future__ import annotations

import click

from surgery.cli.common import handled, overrides_option


@click.command("safety-data")
@click.argument("spec", metavar="SPEC.yaml", type=click.Path(dir_okay=False))
@overrides_option("mix.refusal=0.5")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@handled
def safety_data(spec, overrides, force) -> None:
    """Build safety training data: harmful requests refused, benign look-alikes answered, made-up
    countries met with "I do not know", policy questions answered with their disclaimer, each part at
    its mixing weight beside any general data; writes OUT/sft.jsonl, OUT/preference.jsonl and a card."""
    from trainers.safety.build import build, load_spec

    parsed, text = load_spec(spec, tuple(overrides))
    card = build(parsed, spec, text, force)
    parts = ", ".join(f"{name} {s['rows']}" for name, s in card["sources"].items())
    click.echo(f"wrote {parsed.out}: {card['rows']} rows ({parts}), {card['pairs']} preference pairs")

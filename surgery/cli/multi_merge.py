"""`surgery merge MULTI.yaml OUT` for a file of several YAML documents (mergekit-multi's format)."""

from __future__ import annotations

import click

from surgery.cli.streamed import run_plan


def merge_stages(spec: str, out: str, options, dtype, allow_pickle, models_dir, keep, dry_run, quiet, threads) -> None:
    """Check and order the stages, then run each with its own progress bar (or, with --dry-run, print the order)."""
    from surgery.merge.multi import plan_stages, run_multi

    plan = plan_stages(spec, models_dir, keep_all=keep is not None)
    if dry_run:
        for i, stage in enumerate(plan.stages, start=1):
            target = out if stage is plan.final else f"{keep or '(scratch)'}/{stage.name}"
            reads = ", ".join(stage.needs) or "models only"
            click.echo(f"{i}. {stage.where}: {stage.data.get('merge_method')} -> {target} (reads {reads})")
        for stage in plan.skipped:
            click.echo(f"skipped: {stage.where} (the final merge does not use it)")
        return

    def merge(plan_, folder, opts, card):
        final = card is not None or folder == out  # the final stage; intermediates in scratch go unannounced
        desc = "merge" if final else f"stage {folder.rstrip('/').rsplit('/', 1)[-1]}"
        return run_plan(plan_, folder, opts, quiet, desc=desc, threads=threads, card=card, announce=final or bool(keep))

    run_multi(plan, out, options, merge, dtype, allow_pickle, models_dir, keep, echo=lambda m: click.echo(m, err=True))

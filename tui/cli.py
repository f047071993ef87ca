"""`surgery tui`: the Textual app for designing merges by trial."""

from __future__ import annotations

import asyncio
import os
import sys

import click


@click.command()
@click.option("--models-dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder of model folders: the file picker's root, and where relative model paths are read from.")
@click.option("--db", type=click.Path(dir_okay=False), help="Results store (as for surgery eval; default "
              "$SURGERY_HOME/evals.sqlite, else .surgery/evals.sqlite here).")
@click.option("--runs", multiple=True, type=click.Path(file_okay=False),
              help="A folder the Monitor tab watches for training runs (repeat for several; default: the current "
                   "folder, a few levels deep).")
@click.option("--merges-dir", default="merges", show_default=True, type=click.Path(file_okay=False),
              help="Where the designer saves merge specs.")
@click.option("--include-path", type=click.Path(exists=True, file_okay=False),
              help="A folder of your own lm-eval task YAMLs (as surgery eval's): its tasks are offered as one more "
                   "eval suite, and their files are part of the stored key.")
def tui(models_dir, db, runs, merges_dir, include_path) -> None:
    """Design merges interactively: pick checkpoints, see their sign conflicts, set the method and its
    parameters (checked as you type), run the merge, score it and find it on the leaderboard."""
    from surgery.cli.third_party import quiet_third_party
    from tui.app import SurgeryApp

    quiet_third_party()  # a library's note on stderr would land on the screen

    app = SurgeryApp(models_dir=models_dir, db=db, runs=list(runs) or ["."], merges_dir=merges_dir,
                     include_path=os.path.abspath(include_path) if include_path else None)
    loop = asyncio.new_event_loop()
    app.run(loop=loop)  # not asyncio.run (Textual's default): it joins every worker thread, an evaluation's too
    loop.close()  # a worker's later call into the app now fails at once instead of waiting for a loop gone
    app.wait_for_cleanup()
    # Leave without the interpreter's teardown: once an evaluation has loaded torch and lm-eval, it takes
    # seconds of native clean-up (2.4 s measured after an f7 on an idle machine), and a worker still
    # running (an evaluation) would be waited for. Nothing is left to write: a merge cancelled at quit has
    # removed its partial folder (waited for above), and the results store commits whole runs only.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(app.return_code or 0)

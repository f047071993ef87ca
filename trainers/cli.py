"""`surgery train RUN.yaml [--set field.path=value ...] [--resume FOLDER [--allow-data-change] | --force]` (also
`python -m trainers`), `surgery zoo FOLDER` and `surgery label LABEL.yaml` (RLAIF preference labels).
`surgery world FOLDER`, the small world's trained demo, is evals' (evals/pipelines/cli.py): its loop ends in evals."""

from __future__ import annotations

import os
import signal
import sys
import warnings

import click

from surgery.cli.common import handled, interrupt, overrides_option


@click.command()
@click.argument("run_spec", metavar="RUN.yaml", type=click.Path(dir_okay=False))
@overrides_option("optim.lr=3e-4")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue from a checkpoint-N folder of this run.")
@click.option("--allow-data-change", is_flag=True,
              help="With --resume: continue although an input file (data, base, reference) changed since the "
              "checkpoint; the lineage records which.")
@click.option("--force", is_flag=True,
              help="Replace the earlier run in OUT, once this run finishes (until then, and if it fails, OUT "
              "keeps the earlier run).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handled
def train(run_spec, overrides, resume, allow_data_change, force, quiet) -> None:
    """Train a model as RUN.yaml says (objective, method, data, schedule); writes OUT/checkpoint-N and OUT/final.

    Under torchrun (`torchrun --nproc-per-node 2 -m trainers RUN.yaml`) each process takes its share
    of every step's rows.
    """
    from trainers.loops import train as run_training
    from trainers.spec import load_run

    signal.signal(signal.SIGTERM, interrupt)  # a killed run leaves its last good checkpoint, no partial one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)  # a deprecated spec field, located in the spec
        run = load_run(run_spec, tuple(overrides))
    for w in caught:
        if w.category is FutureWarning:
            click.echo(f"warning: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    replacing = force and os.path.isdir(run.spec.out) and bool(os.listdir(run.spec.out))
    try:
        final = run_training(run, resume=resume, quiet=quiet, force=force, allow_data_change=allow_data_change)
    except KeyboardInterrupt:
        done = f"{run.spec.out} holds the earlier run as it was (this --force run is discarded)" if replacing else \
            f"the checkpoints already in {run.spec.out} are complete; continue with --resume OUT/checkpoint-N"
        click.echo(f"interrupted: {done}", err=True)
        sys.exit(130)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one report for the whole run
        log = os.path.join(run.spec.out, "log.jsonl")
        scores = last_evaluation(log)
        if scores:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if k != "step")
            click.echo(f"held-out (data.eval) at step {scores['step']}: {shown}; every step's values are in {log}")
        click.echo(f"wrote {final}")


def last_evaluation(log: str) -> dict | None:
    """The last record of OUT/log.jsonl with held-out scores (`eval_*`), or None (no data.eval)."""
    import json

    found = None
    with open(log) as f:
        for line in f:
            record = json.loads(line)
            if "event" not in record and any(k.startswith("eval_") for k in record):
                found = {k: v for k, v in record.items() if k == "step" or k.startswith("eval_")}
    return found


@click.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--base-steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Pretraining steps of the base (on all four tasks).")
@click.option("--expert-steps", type=click.IntRange(min=1), default=200, show_default=True,
              help="Fine-tuning steps of each expert.")
@handled
def zoo(folder, base_steps, expert_steps) -> None:
    """Train the zoo recipe's models in FOLDER (kept between runs): a base that knows all four tasks
    of the small world and its add, reverse and refuse experts, which `surgery proof --zoo`,
    `moe-proof` and `transplant-proof` read."""
    from surgery.io.output import output_lock
    from trainers.world.zoo import ensure_zoo

    with output_lock(folder):  # a second `zoo` into FOLDER exits naming this one's pid
        for name, path in ensure_zoo(folder, base_steps, expert_steps, echo=click.echo).items():
            click.echo(f"{name}: {path}")


@click.command()
@click.argument("label_spec", metavar="LABEL.yaml", type=click.Path(dir_okay=False))
@overrides_option("policy=demo/models/base")
@handled
def label(label_spec, overrides) -> None:
    """RLAIF labels: sample two answers per prompt from the policy, let the judge of LABEL.yaml (reward
    model, LM or rule) pick one, and write the pairs as preference JSONL (prompt/chosen/rejected)."""
    from trainers.judges import label as run_label
    from trainers.judges import load_label_spec

    spec = load_label_spec(label_spec, tuple(overrides))
    counts = run_label(spec, label_spec)
    click.echo(f"wrote {spec.out}: {counts['pairs']} pairs from {counts['prompts']} prompts "
               f"({counts['skipped']} ties or equal answers skipped)")


@click.command("moe-proof")
@click.argument("zoo", type=click.Path(file_okay=False, exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--prompts", type=click.IntRange(min=1), default=32, show_default=True,
              help="Training prompts per expert used as its positive prompts.")
@click.option("--gate-modes", default="hidden,hidden_avg,cheap_embed", show_default=True,
              help="Gate modes to build, comma-separated.")
@click.option("--per-token", default="1,2", show_default=True, help="experts_per_token values, comma-separated.")
@click.option("--expert", "experts", multiple=True, metavar="TASK=FOLDER",
              help="Another expert for add or reverse (default ZOO/add, ZOO/reverse), e.g. add=ZOO/add-mlp.")
@click.option("--no-answers", is_flag=True, help="Positive prompts without their answers (the prompt text alone).")
@handled
def moe_proof(zoo, out, prompts, gate_modes, per_token, experts, no_answers) -> None:
    """Build two-expert MoEs of the small world's add and reverse experts (ZOO: a `surgery world`
    models folder) and report their routing shares and exact match next to the base and experts."""
    from surgery.io.output import output_lock
    from trainers.run_output import check_folder_out
    from trainers.world.moe_proof import run_moe_proof

    chosen = dict(e.split("=", 1) for e in experts)
    check_folder_out(out, {"ZOO": zoo, **{f"--expert {t}": path for t, path in chosen.items()}})
    with output_lock(out):
        run_moe_proof(zoo, out, prompts, tuple(gate_modes.split(",")), tuple(int(k) for k in per_token.split(",")),
                      chosen, not no_answers, echo=click.echo)


@click.command("transplant-proof")
@click.argument("zoo", type=click.Path(file_okay=False, exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--model", type=click.Path(file_okay=False), help="The model to transplant (default: ZOO/base).")
@click.option("--donor", type=click.Path(file_okay=False),
              help="The donor model (default: ZOO/bpe-base, trained first with a byte-level BPE tokenizer).")
@click.option("--donor-steps", type=click.IntRange(min=1), default=600, show_default=True,
              help="Training steps of the BPE donor when it is built.")
@click.option("--k", type=click.IntRange(min=1), default=64, show_default=True, help="OMP's k.")
@click.option("--rows", type=click.IntRange(min=1), help="Test rows per task (default: all).")
@click.option("--no-exact", is_flag=True, help="Skip exact match (perplexity only; for slow models).")
@handled
def transplant_proof(zoo, out, model, donor, donor_steps, k, rows, no_exact) -> None:
    """Give a model (the small world's base by default) a byte-level BPE donor's tokenizer by every
    approximation method and report held-out answer perplexity per byte and exact match."""
    import json

    from surgery.io.output import output_lock
    from trainers.run_output import check_folder_out
    from trainers.world.transplant import build_donor, run_transplant

    check_folder_out(out, {"ZOO": zoo, "--model": model, "--donor": donor})
    with output_lock(out):
        donor = donor or build_donor(zoo, donor_steps)
        result = run_transplant(model or os.path.join(zoo, "base"), donor, zoo, out, k, rows, not no_exact,
                                echo=click.echo)
    click.echo(json.dumps(result, indent=2))


@click.command("self-instruct")
@click.argument("spec_path", metavar="SPEC.yaml", type=click.Path(dir_okay=False))
@overrides_option("target=50")
@click.option("--backend", default="hf", show_default=True,
              help="What generates: hf (transformers) or vllm (needs vLLM and a GPU: pip install 'surgery[vllm]').")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--restart", is_flag=True, help="Discard the progress an interrupted run of another spec left.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handled
def self_instruct(spec_path, overrides, backend, force, restart, quiet) -> None:
    """Self-Instruct: bootstrap an instruction dataset from seed tasks with the spec's model (proposals,
    filters, classification, instances), into OUT/train.jsonl with a dataset card. Resumes after a kill."""
    from trainers.self_instruct.run import run
    from trainers.self_instruct.spec import load_spec
    from trainers.synthetic import backend as backends
    from trainers.synthetic import progress

    signal.signal(signal.SIGTERM, interrupt)
    spec, seeds = load_spec(spec_path, tuple(overrides))
    progress.check_output(spec.out, force)
    model = backends.load(backend, spec.model, "none", spec_path, "model", spec.sampling.batch_size)
    try:
        made = run(spec, seeds, model, spec_path, force=force, restart=restart, quiet=quiet, echo=click.echo)
    except KeyboardInterrupt:
        click.echo(f"interrupted: nothing was written at {spec.out}; the finished rounds are kept in "
                   f"{progress.folder(spec.out)}: run the same command again to resume", err=True)
        sys.exit(130)
    click.echo(f"wrote {spec.out}: {made['kept']} instructions kept of {made['proposed']} proposed in "
               f"{made['rounds']} rounds ({made['stopped']}); rejected: "
               + ", ".join(f"{k} {v}" for k, v in made["rejected"].items()))


@click.command("cai")
@click.argument("spec_path", metavar="SPEC.yaml", type=click.Path(dir_okay=False))
@overrides_option("stage=rl")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--restart", is_flag=True, help="Discard the progress an interrupted run of another spec left.")
@handled
def cai(spec_path, overrides, force, restart) -> None:
    """Constitutional AI: the policy critiques and revises its answers to red-team prompts under the
    constitution (stage sl: OUT/sft.jsonl and OUT/trace.jsonl), or a feedback model labels pairs of its
    answers under it (stage rl: OUT/preferences.jsonl for reward, dpo or PPO). Resumes after a kill."""
    from trainers.constitutional.run import feedback_judge, run
    from trainers.constitutional.spec import load_spec
    from trainers.synthetic import backend as backends
    from trainers.synthetic import progress

    signal.signal(signal.SIGTERM, interrupt)
    spec, constitution, prompts = load_spec(spec_path, tuple(overrides))
    progress.check_output(spec.out, force)
    model = backends.load("hf", spec.model, spec.chat_template, spec_path, "model", spec.sampling.batch_size)
    judge = feedback_judge(spec, model, spec_path)
    try:
        made = run(spec, constitution, prompts, model, judge, spec_path, restart=restart, echo=click.echo)
    except KeyboardInterrupt:
        click.echo(f"interrupted: nothing was written at {spec.out}; the finished generation steps are kept in "
                   f"{progress.folder(spec.out)}: run the same command again to resume", err=True)
        sys.exit(130)
    click.echo(f"wrote {spec.out}: {made['rows']} rows ({spec.stage}) from {made['prompts']['rows']} prompts; "
               f"principles drawn: {', '.join(made['principles_used'])}")

"""Evolutionary merge search (Akiba et al. 2024, "Evolutionary Optimization of Model Merging Recipes",
https://arxiv.org/abs/2403.13187; mergekit-evolve's job): CMA-ES (Hansen & Ostermeier 2001, the `cma`
package) over a genome's genes (evals/search/genome.py). Every candidate is merged by the engine into a
scratch folder, scored on the spec's tasks through lm-eval, recorded in the results store with its
lineage, and deleted; whenever the best improves it is merged again into OUT/best (the engine writes
the same bytes: its draws are seeded per tensor) and its spec written as OUT/best.yaml.

Determinism: CMA-ES asks a whole generation; the candidates are evaluated in any order, by any number
of workers, and told in the generation's order; the optimiser's normal draws come from its own seeded
generator (never numpy's global one, which lm-eval reseeds on every evaluation). So one seed gives one
search, whatever the workers.

Resume: OUT/search.json holds every generation's genotypes, scores and fitnesses, written atomically
after each generation. `resume` rebuilds the optimiser from the seed and replays the record (ask,
check the same genotypes come back, tell the recorded fitnesses), which restores its state exactly
without pickling it; a generation cut short is evaluated again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from evals.analysis.metrics import oriented
from evals.scoring.checkpoints import Checkpoint, lineage, open_checkpoint
from evals.scoring.harness import Evaluated, HarnessSettings
from evals.scoring.scores import TaskScore
from evals.scoring.store import Store
from evals.search.candidates import merge_spec as merge_into
from evals.search.genome import EvolveSpec, Genome, TaskSpec, merge_spec, spec_yaml
from surgery.errors import InputError, NumericsError, OutputError, SpecError
from surgery.io.output import output_lock

STATE, BEST, BEST_SPEC, PLOT = "search.json", "best", "best.yaml", "progress.png"
FORMAT = 1


@dataclass(frozen=True)
class HarnessScoring:
    """The real scorer a worker runs: lm-eval on `tasks` under `settings`, nothing stored (the driver stores)."""

    tasks: tuple[str, ...]
    settings: HarnessSettings

    def __call__(self, folder: str) -> dict[str, Evaluated]:
        from evals.scoring import harness

        return harness.evaluate_path(folder, list(self.tasks), self.settings)


Scoring = Callable[[str], dict]  # a merged folder -> {task: Evaluated}; with `.settings` (HarnessSettings)


@dataclass(frozen=True)
class Job:
    """One candidate for a worker: its merge spec, where to merge it, and how to score it."""

    spec: dict
    label: str    # names the candidate in the engine's errors
    folder: str
    score: Scoring
    threads: int = 1  # torch's CPU threads for it, the same in every worker, so the arithmetic is too


@dataclass(frozen=True)
class Outcome:
    """What a worker sends back: the weights' hash, their lineage and scores, or why the merge failed."""

    hash: str | None
    lineage: dict
    results: dict[str, Evaluated]
    error: str | None = None


def run_candidate(job: Job) -> Outcome:
    """Merge, hash, score, delete: the whole of a worker's task (in this process or a Ray worker), on
    `job.threads` CPU threads (restored after)."""
    with cpu_threads(job.threads):
        return _merge_and_score(job)


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch on `n` CPU threads inside, as before after. (More threads than free cores slow a loaded
    machine many times over, and the count can change the last bits of a matmul.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _merge_and_score(job: Job) -> Outcome:
    try:
        folder = merge_into(job.spec, job.label, job.folder)
    except NumericsError as e:  # a genotype whose merge is NaN (all weights zero under normalize, say)
        return Outcome(None, {}, {}, str(e))
    try:
        checkpoint = open_checkpoint(folder)
        return Outcome(checkpoint.hash, lineage(checkpoint), job.score(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class InProcess:
    """Candidates one after another in this process: a local run needs no Ray."""

    def map(self, jobs: Sequence[Job], done: Callable[[int], None] = lambda _: None) -> list[Outcome]:
        out = []
        for i, job in enumerate(jobs):
            out.append(run_candidate(job))
            done(i)
        return out

    def close(self) -> None:
        pass


# ---- the record ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """One evaluated candidate: genotype (unit cube), fitness (minimised; inf when its merge failed), the
    headline score of each task, its name in the store and the hash of its weights."""

    x: tuple[float, ...]
    fitness: float
    scores: dict[str, float]
    name: str
    hash: str | None
    error: str | None = None


@dataclass
class State:
    """The search so far, as OUT/search.json holds it."""

    identity: dict                      # what a resume must match: the spec but its budget, models, cma
    popsize: int
    generations: list[list[Record]] = field(default_factory=list)
    stopped: str | None = None

    @property
    def evaluations(self) -> int:
        return sum(len(g) for g in self.generations)

    def best(self) -> tuple[int, int] | None:
        """(generation, candidate) of the lowest fitness, the earliest on ties; None before any success."""
        found = [(r.fitness, g, i) for g, gen in enumerate(self.generations) for i, r in enumerate(gen)
                 if math.isfinite(r.fitness)]
        return min(found)[1:] if found else None

    def record(self, at: tuple[int, int]) -> Record:
        return self.generations[at[0]][at[1]]


def identity(spec: EvolveSpec, genome: Genome) -> dict:
    """Everything a replay depends on; `budget` is left out so a finished search can be given more."""
    import cma

    return {"spec": spec.model_dump(mode="json", exclude={"budget"}), "models": list(genome.models),
            "base": genome.base, "layers": genome.layers, "cma": cma.__version__}


def save_state(state: State, out: str) -> None:
    data = {"format": FORMAT, "identity": state.identity, "popsize": state.popsize, "stopped": state.stopped,
            "generations": [[asdict(r) for r in gen] for gen in state.generations]}
    write_text(os.path.join(out, STATE), json.dumps(data, indent=1) + "\n")


def load_state(out: str) -> State:
    path = os.path.join(out, STATE)
    try:
        with open(path) as f:
            data = json.load(f)
        generations = [[Record(tuple(r["x"]), r["fitness"], r["scores"], r["name"], r["hash"], r.get("error"))
                        for r in gen] for gen in data["generations"]]
        return State(data["identity"], data["popsize"], generations, data.get("stopped"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not a search record this surgery can read ({type(e).__name__}: {e}); "
                         "start the search again in another --out") from None


def write_text(path: str, text: str) -> None:
    """Write a file whole or not at all: into a sibling, then renamed over `path`."""
    tmp = f"{path}.partial-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def check_resume(found: dict, wanted: dict, out: str) -> None:
    """A resume continues only the same search: every field of the identity must match."""
    differ = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    differ += sorted(f"spec.{k}" for k in set(found.get("spec", {})) | set(wanted.get("spec", {}))
                     if "spec" in differ and found["spec"].get(k) != wanted["spec"].get(k))
    if differ:
        shown = ", ".join(d for d in differ if d != "spec")
        raise InputError(f"{os.path.join(out, STATE)} was written by another search (differs in {shown}); only "
                         "budget may change on --resume: restore the spec, or start again in another --out")


# ---- the optimiser --------------------------------------------------------------------------------

def optimiser(genome: Genome, spec: EvolveSpec):
    """CMA-ES in the unit cube from the genome's starting point, its normal draws from its own generator."""
    import cma

    draws = np.random.RandomState(spec.seed)
    start = genome.initial(np.random.default_rng([spec.seed, 1]) if spec.random_init else None)
    options = {"bounds": [0.0, 1.0], "seed": np.nan, "randn": lambda *shape: draws.standard_normal(shape),
               "verbose": -9, "verb_log": 0, "verb_disp": 0}
    if spec.population:
        options["popsize"] = spec.population
    return cma.CMAEvolutionStrategy(start, spec.sigma0, options)


def replay(es, state: State, out: str) -> None:
    """Bring a fresh optimiser to where the record left it: ask, check, tell, generation by generation."""
    for g, gen in enumerate(state.generations):
        asked = es.ask()
        if len(asked) != len(gen) or any(not np.array_equal(a, r.x) for a, r in zip(asked, gen)):
            raise InputError(f"{os.path.join(out, STATE)}: generation {g} does not replay (the optimiser asks other "
                             "candidates: another version of cma?); start again in another --out")
        es.tell(asked, [r.fitness for r in gen])


def stop_reason(es, state: State, budget: int) -> str | None:
    if state.evaluations + state.popsize > budget:
        return f"budget: {state.evaluations} evaluations done, another generation of {state.popsize} exceeds {budget}"
    reasons = es.stop()
    return f"cma: {', '.join(reasons)}" if reasons else None


# ---- the search ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Search:
    """Where a search writes and what it needs: validated spec and genome, output and scratch folders,
    the scorer, the store, what makes the workers (started only once the record is checked, closed at
    the end); `say` prints a line, `tick` counts a finished candidate."""

    spec: EvolveSpec
    genome: Genome
    file: str     # the spec file, for located errors
    out: str
    scratch: str
    score: Scoring
    store: Store
    workers: Callable[[], InProcess] = InProcess  # makes them once the search starts: InProcess, RayWorkers, ...
    threads: int = 1  # CPU threads of each candidate's merge and evaluation, whatever the workers
    say: Callable[[str], None] = lambda _: None
    tick: Callable[[int], None] = lambda _: None


def start(search: Search, resume: bool) -> State:
    """A new record, or the one in OUT when resuming (checked to be this search's); nothing else written."""
    path = os.path.join(search.out, STATE)
    wanted = identity(search.spec, search.genome)
    if resume:
        if not os.path.isfile(path):
            raise OutputError(f"--resume: {search.out} holds no search ({STATE} is missing); leave --resume out to "
                              "start one there")
        state = load_state(search.out)
        check_resume(state.identity, wanted, search.out)
        state.stopped = None
        return state
    if os.path.lexists(path):
        raise OutputError(f"{search.out} already holds a search; pass --resume to continue it, or choose another --out")
    popsize = optimiser(search.genome, search.spec).popsize
    if search.spec.budget < popsize:
        raise SpecError(search.file, "budget",
                        f"{search.spec.budget} evaluations is less than one generation of {popsize} candidates; "
                        "raise budget or lower population")
    return State(wanted, popsize)


def run_search(search: Search, resume: bool = False) -> State:
    """Generations until the budget (or CMA-ES's own stopping rules) ends the search; returns the record.
    OUT is locked while it runs, so a second search into it stops at once."""
    with output_lock(search.out):
        return _run(search, resume)


def _run(search: Search, resume: bool) -> State:
    state = start(search, resume)
    es = optimiser(search.genome, search.spec)
    replay(es, state, search.out)
    os.makedirs(search.out, exist_ok=True)
    workers = search.workers()
    try:
        while (reason := stop_reason(es, state, search.spec.budget)) is None:
            before = state.best()
            asked = es.ask()
            generation = evaluate_generation(search, workers, len(state.generations), asked)
            es.tell(asked, [r.fitness for r in generation])
            state.generations.append(generation)
            if state.best() != before:
                publish_best(search, state)
            save_state(state, search.out)
            save_plot(state, search.out)
            search.say(generation_line(state))
    finally:
        workers.close()
    state.stopped = reason
    save_state(state, search.out)
    if os.path.isdir(search.scratch) and not os.listdir(search.scratch):
        os.rmdir(search.scratch)  # every candidate deleted: the scratch folder goes too
    return state


def evaluate_generation(search: Search, workers, g: int, asked: Sequence[np.ndarray]) -> list[Record]:
    """Every candidate of generation `g` merged and scored by the workers, recorded in the store."""
    jobs = [Job(merge_spec(search.genome, x, search.spec.seed, search.spec.dtype), f"generation {g} candidate {i}",
                os.path.join(search.scratch, f"g{g:03d}-c{i:02d}"), search.score, search.threads)
            for i, x in enumerate(asked)]
    outcomes = workers.map(jobs, search.tick)
    return [record(search, g, i, x, job, o) for i, (x, job, o) in enumerate(zip(asked, jobs, outcomes))]


def record(search: Search, g: int, i: int, x: np.ndarray, job: Job, outcome: Outcome) -> Record:
    """The candidate's scores stored under its weights' hash (named by its scratch path), with its lineage."""
    from evals.scoring.run import put_results

    name, genotype = os.path.abspath(job.folder), tuple(float(v) for v in x)
    if outcome.error:
        search.say(f"generation {g} candidate {i}: the merge failed, counted as the worst ({outcome.error})")
        return Record(genotype, math.inf, {}, name, None, outcome.error)
    scores = {t: ev.score for t, ev in outcome.results.items()}
    value = fitness(scores, search.spec.tasks)
    search.store.register(name, Checkpoint(name, outcome.hash), outcome.lineage | {"evolve": {
        "search": os.path.abspath(search.out), "generation": g, "candidate": i, "fitness": value}})
    put_results(search.store, name, outcome.hash, outcome.results, search.score.settings)
    return Record(genotype, value, {t: s.value for t, s in scores.items()}, name, outcome.hash)


def fitness(scores: dict[str, TaskScore], tasks: Sequence[TaskSpec]) -> float:
    """What CMA-ES minimises: minus the weighted sum of the tasks' scores, each turned higher-is-better."""
    return -sum(t.weight * oriented(task_score(scores, t)).value for t in tasks)


def task_score(scores: dict[str, TaskScore], task: TaskSpec) -> TaskScore:
    if task.name not in scores:
        raise InputError(f"task {task.name!r} reported no score of its own (a group reports its subtasks: "
                         f"{', '.join(scores) or 'none'}); name the subtasks in the spec's tasks")
    score = scores[task.name]
    if task.metric is not None and task.metric.split(",")[0] != score.metric:
        raise InputError(f"task {task.name!r}: metric {task.metric!r} is not the metric its score reports "
                         f"({score.metric!r}); set tasks.metric to {score.metric!r} or leave it out")
    return score


def publish_best(search: Search, state: State) -> None:
    """OUT/best.yaml and OUT/best: the best candidate's spec and its merge, registered in the store."""
    g, i = state.best()
    best = state.record((g, i))
    spec = merge_spec(search.genome, best.x, search.spec.seed, search.spec.dtype)
    header = (f"best of the evolutionary search in {os.path.abspath(search.out)}: generation {g}, candidate {i}\n"
              f"fitness {best.fitness:.6g}; scores {json.dumps(best.scores)}\nrun: surgery merge best.yaml OUT")
    write_text(os.path.join(search.out, BEST_SPEC), spec_yaml(spec, header))
    folder = merge_into(spec, os.path.join(search.out, BEST_SPEC), os.path.join(search.out, BEST))
    checkpoint = open_checkpoint(folder)
    if checkpoint.hash != best.hash:
        search.say(f"warning: {folder} merged again differs from the candidate scored ({best.name}); "
                   "its scores in the store are the candidate's")
    search.store.register(folder, checkpoint, lineage(checkpoint) | {"evolve": {
        "search": os.path.abspath(search.out), "generation": g, "candidate": i, "fitness": best.fitness}})


def generation_line(state: State) -> str:
    g, gen = len(state.generations) - 1, state.generations[-1]
    finite = [r.fitness for r in gen if math.isfinite(r.fitness)]
    here = f"best {-min(finite):.4f}, mean {-sum(finite) / len(finite):.4f}" if finite else "every merge failed"
    at = state.best()
    overall = f"; overall best {-state.record(at).fitness:.4f} (generation {at[0]}, candidate {at[1]})" if at else ""
    return f"generation {g}: {here}{overall}; {state.evaluations} evaluations"


def save_plot(state: State, out: str) -> None:
    from evals.report.plots import evolve_figure, save_png

    fitness = [[-r.fitness if math.isfinite(r.fitness) else None for r in gen] for gen in state.generations]
    save_png(evolve_figure(fitness), os.path.join(out, PLOT))


def best_rows(state: State, genome: Genome) -> list[dict]:
    """The best candidate's genes, one row per (group, model, filter) for `evals.report.tables.render`."""
    at = state.best()
    if at is None:
        return []
    values = genome.values(state.record(at).x)  # (groups, models, sets, genes)
    sets = (genome.spec.filters or []) + ["*"]
    return [{"group": grp, "model": os.path.basename(m), "filter": f,
             **{gene: float(values[grp, mi, si, k]) for k, gene in enumerate(genome.genes)}}
            for grp in range(genome.groups) for mi, m in enumerate(genome.models) for si, f in enumerate(sets)]

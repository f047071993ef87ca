"""Multi-stage merges in mergekit-multi's format: one YAML file of several documents, each a merge spec
with a `name`; a later document uses an earlier one's output by naming it as a model (also as
`name+adapter`). The unnamed document, if any, is the final merge (mergekit writes it to --out-path);
otherwise the last document that no other one uses is.

Everything that can be checked without merging is checked before the first stage runs: each
document's spec, duplicate names, names that are neither a document nor a model folder, cycles.
Stages run in dependency order; each intermediate lives in a scratch folder beside OUT until the
last stage that reads it is done (or in `keep/NAME` when asked to keep them), and only the final
stage writes OUT, atomically, so a failure at any stage leaves nothing there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from surgery.errors import InputError, SpecError
from surgery.io.locate import HUB_ID
from surgery.io.output import check_output_path, scratch_folder
from surgery.io.reader import ModelFolder
from surgery.merge.card import Card
from surgery.merge.engine import Options, run_merge
from surgery.merge.plan import MergePlan, plan_merge
from surgery.merge.spec import MergeSpec, parse_spec


@dataclass(frozen=True)
class Stage:
    index: int                  # the document's number in the file, from 1
    name: str | None            # None: the final (unnamed) document
    data: dict                  # the document without `name`, model names not yet replaced by paths
    where: str                  # "multi.yaml document 2 (stage-b)", the location errors start with
    needs: dict[str, str] = field(default_factory=dict)  # stage name -> the spec field naming it

    @property
    def label(self) -> str:
        return self.name or f"document {self.index} (final)"


@dataclass(frozen=True)
class StagePlan:
    file: str
    stages: tuple[Stage, ...]   # in the order they run; the last one writes OUT
    skipped: tuple[Stage, ...]  # documents the final merge does not need (run only when intermediates are kept)
    last_use: dict[str, int]    # stage name -> position in `stages` of the last stage that reads it
    text: str                   # the whole file, for the model card

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def is_multi(path: str) -> bool:
    """True when the YAML file holds more than one document (a single spec is read by `load_spec`)."""
    try:
        with open(path) as f:
            return sum(1 for _ in yaml.compose_all(f)) > 1
    except (OSError, ValueError, RecursionError, yaml.YAMLError):  # ValueError: not UTF-8
        return False  # load_spec reports the file's problem with its location


def read_stages(path: str) -> list[Stage]:
    """Every document as a Stage, each spec validated; names unique, one unnamed document at most."""
    with open(path) as f:
        try:
            docs = list(yaml.safe_load_all(f))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise SpecError(path, f"line {mark.line + 1}" if mark else "", f"not valid YAML ({e})") from None
    stages, seen = [], {}
    for i, doc in enumerate((d for d in docs if d is not None), start=1):
        stage = _stage(path, i, doc)
        key = stage.name
        if key in seen:
            problem = (f"name {key!r} is already used by document {seen[key]}; give each document its own name"
                       if key is not None else f"a second unnamed document (document {seen[key]} is unnamed); "
                       "only the final merge may go without a name")
            raise SpecError(stage.where, "name" if key is not None else "", problem)
        seen[key] = i
        stages.append(stage)
    return stages


def _stage(path: str, index: int, doc: object) -> Stage:
    where = f"{path} document {index}"
    if not isinstance(doc, dict):
        raise SpecError(where, "", "each document is a merge spec (a YAML mapping) with a `name`")
    data = dict(doc)
    name = data.pop("name", None)
    if name is not None and (not isinstance(name, str) or not name.strip() or "/" in name or "+" in name):
        raise SpecError(where, "name", f"{name!r} is not a usable stage name (a non-empty string without '/' or '+')")
    where = f"{where} ({name})" if name else where
    parse_spec(data, where)  # structure checked now, located in this document
    return Stage(index, name, data, where)


def plan_stages(path: str, models_dir: str | None = None, keep_all: bool = False) -> StagePlan:
    """Read, check and order the stages of `path`. Stages the final one does not need run only with
    `keep_all` (their outputs are kept); otherwise they are skipped."""
    stages = read_stages(path)
    names = {s.name for s in stages if s.name}
    stages = [_with_needs(s, names, models_dir) for s in stages]
    by_name = {s.name: s for s in stages if s.name}
    for s in by_name.values():
        _check_cycles(s, by_name)
    final = next((s for s in stages if s.name is None), None) or _last_sink(stages)
    needed = _closure(final, by_name)
    chosen = [s for s in stages if s.name is None or s.name in needed or keep_all]
    order = _topological([s for s in chosen if s is not final], by_name) + [final]
    last_use = {n: max(i for i, s in enumerate(order) if n in s.needs) for s in order for n in s.needs}
    with open(path) as f:
        text = f.read()
    return StagePlan(path, tuple(order), tuple(s for s in stages if s not in chosen), last_use, text)


def _with_needs(stage: Stage, names: set[str], models_dir: str | None) -> Stage:
    """The stage with the stage names it reads; a model that is neither a stage nor a folder is an error."""
    needs = {}
    for ref, where in parse_spec(stage.data, stage.where).references():
        head = ref.partition("+")[0]  # `name+adapter`
        model = ref if ref in names or _exists(ref, models_dir) else head
        if model in names:
            needs.setdefault(model, where)
        elif not _exists(model, models_dir):
            known = ", ".join(sorted(names)) or "none"
            raise SpecError(stage.where, where, f"{model!r} is neither a model folder nor the name of a document "
                            f"in this file (names: {known}); fix the name or the path")
    return Stage(stage.index, stage.name, stage.data, stage.where, needs)


def _exists(model: str, models_dir: str | None) -> bool:
    """A local folder, or a Hub id that the planner resolves (it reports a missing one itself)."""
    local = os.path.join(models_dir or os.getcwd(), os.path.expanduser(model))
    return os.path.isdir(local) or (HUB_ID.match(model) is not None and not os.path.exists(os.path.dirname(local)))


def _check_cycles(start: Stage, by_name: dict[str, Stage]) -> None:
    """Follow what `start` reads; coming back to `start` is a cycle, reported where it closes."""

    def walk(stage: Stage, trail: list[str]) -> None:
        for name, where in stage.needs.items():
            if name == trail[0]:
                raise SpecError(stage.where, where, f"{name!r} makes a cycle ({' -> '.join(trail + [name])}); "
                                "a document can only use documents that do not use it")
            if name not in trail:
                walk(by_name[name], trail + [name])

    walk(start, [start.name])


def _last_sink(stages: list[Stage]) -> Stage:
    used = {n for s in stages for n in s.needs}
    return [s for s in stages if s.name not in used][-1]


def _closure(stage: Stage, by_name: dict[str, Stage]) -> set[str]:
    out: set[str] = set()
    for name in stage.needs:
        out |= {name} | _closure(by_name[name], by_name)
    return out


def _topological(stages: list[Stage], by_name: dict[str, Stage]) -> list[Stage]:
    """Document order, each stage after the stages it reads."""
    done: list[Stage] = []

    def visit(s: Stage) -> None:
        if s in done:
            return
        for name in s.needs:
            visit(by_name[name])
        done.append(s)

    for s in stages:
        visit(s)
    return done


def resolved(stage: Stage, paths: dict[str, str]) -> MergeSpec:
    """The stage's spec with every stage name replaced by that stage's output folder (as mergekit-multi
    replaces any string that names a merge, `name+adapter` too)."""

    def swap(value):
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, str):
            head, plus, tail = value.partition("+")
            if head in paths:
                return paths[head] + plus + tail
        return value

    return parse_spec(swap(stage.data), stage.where)


def multi_card(plan: StagePlan, out: str, final_spec: MergeSpec) -> Card:
    """The final model's card: its leaf inputs (models no stage made) and the whole multi-document file."""
    leaves = [m for s in plan.stages for m in _leaf_models(s, plan)]
    base = final_spec.base_model if final_spec.base_model and final_spec.base_model in leaves else None
    ran = ", ".join(f"`{s.label}` ({s.data.get('merge_method')})" for s in plan.stages)
    steps = [f"Stages, in the order they ran: {ran}."]
    return Card(os.path.basename(os.path.abspath(out)), f"multi-stage, last stage {final_spec.merge_method}", base,
                tuple(m for m in dict.fromkeys(leaves) if m != base), plan.text, tuple(steps))


Runner = Callable[[Stage, MergeSpec, str, bool], str]  # (stage, resolved spec, output folder, is final) -> folder
Merge = Callable[[MergePlan, str, Options, Card | None], str]  # runs one plan into a folder (the CLI's has a bar)


def run_multi(plan: StagePlan, out: str, options: Options | None = None, merge: Merge | None = None,
              out_dtype: str | None = None, allow_pickle: bool = False, models_dir: str | None = None,
              keep: str | None = None, echo: Callable[[str], None] = print) -> str:
    """Run every stage of `plan`, the final one into `out`; returns `out`'s absolute path. The stages
    that read no other stage are planned (every name, shape and parameter checked) before any runs."""
    options = options or Options()
    merge = merge or (lambda p, folder, opts, card: run_merge(p, folder, opts, card=card))
    leaves = [_local(m, models_dir) for s in plan.stages for m in _leaf_models(s, plan)]
    check_output_path(out, [p for p in leaves if p], options.force)
    settings = dict(out_dtype=out_dtype, allow_pickle=allow_pickle, models_dir=models_dir)
    early = {s.index: plan_merge(resolved(s, {}), s.where, **settings) for s in plan.stages if not s.needs}
    for s in plan.skipped:
        echo(f"warning: {s.where} is not used by the final merge; skipped (pass --keep-intermediates DIR to run "
             "every document and keep its output)")

    def run(stage: Stage, spec: MergeSpec, folder: str, final: bool) -> str:
        merge_plan = early.get(stage.index) or plan_merge(spec, stage.where, **settings)
        for warning in merge_plan.warnings + (merge_plan.vocab.warnings if merge_plan.vocab else []):
            echo(f"warning: {stage.where}: {warning}")
        return merge(merge_plan, folder, options, multi_card(plan, out, spec) if final else None)

    with scratch_folder(out) as scratch:
        return run_stages(plan, out, scratch, run, keep, made_by, echo)


def made_by(spec: MergeSpec, folder: str) -> bool:
    """True when `folder` is a merged model whose provenance records exactly `spec`."""
    try:
        return ModelFolder(folder).metadata.get("surgery.spec_sha256") == spec.digest()
    except InputError:
        return False


def _leaf_models(stage: Stage, plan: StagePlan) -> list[str]:
    names = {s.name for s in plan.stages if s.name}
    return [m for m, _ in parse_spec(stage.data, stage.where).references() if m not in names
            and m.partition("+")[0] not in names]


def _local(model: str, models_dir: str | None) -> str | None:
    path = os.path.join(models_dir or os.getcwd(), os.path.expanduser(model.partition("+")[0]))
    return path if os.path.isdir(path) else None


def run_stages(plan: StagePlan, out: str, scratch: str, run: Runner, keep: str | None = None,
               reuse: Callable[[MergeSpec, str], bool] | None = None, echo: Callable[[str], None] = print) -> str:
    """Run the stages in order: intermediates go to `keep/NAME` (kept) or `scratch/NAME` (deleted once
    their last reader is done), the final stage to `out`. `reuse(spec, folder)` says whether a kept
    intermediate from an earlier run was made by this very spec, in which case it is not merged again."""
    paths: dict[str, str] = {}
    for i, stage in enumerate(plan.stages):
        spec = resolved(stage, paths)
        if stage is plan.final:
            result = run(stage, spec, out, True)
        else:
            folder = os.path.join(keep or scratch, stage.name)
            if keep and reuse and os.path.isdir(folder) and reuse(spec, folder):
                echo(f"stage {stage.label}: reusing {folder} (made by the same spec)")
                result = folder
            else:
                result = run(stage, spec, folder, False)
            paths[stage.name] = result
        for name in [n for n, last in plan.last_use.items() if last == i and not keep]:
            shutil.rmtree(paths[name], ignore_errors=True)  # no later stage reads it
    return result

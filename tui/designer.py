"""The merge designer: pick a base and models, a method and its parameters, see every mistake where it
was made (the spec model's and the planner's own messages, as `surgery merge --dry-run` gives them),
the YAML at all times, where the models' task vectors conflict, then run the merge with a live
progress bar, cancel it, and score the result on a suite.

Every decision is the engine's: the spec is checked by `surgery.merge.spec` and `surgery.merge.plan`, merged by
`surgery.merge.engine.run_merge`, compared by `surgery.diagnose.diff`, scored by `evals.scoring.run.evaluate`
on a suite of `evals.scoring.suites`. Long work runs in worker threads; widgets are updated on the
interface's thread through `call_from_thread`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, ProgressBar, RichLog, Select, Static, TabbedContent, TabPane

from evals.scoring.suites import suite_names
from surgery.errors import SpecError, SurgeryError
from surgery.io.locate import resolve_path
from surgery.merge.engine import DEFAULT_BLOCK, Cancelled, Options, run_merge
from surgery.merge.methods import REGISTRY
from surgery.merge.plan import MergePlan, plan_merge
from surgery.merge.spec import DTYPE_NAMES, MergeSpec, parse_spec
from tui.conflict_map import conflict_map
from tui.picker import ModelPicker
from tui.spec_form import (
    check_spec,
    choices,
    drop_model,
    empty_row,
    hint,
    layer_values,
    owner,
    parse_value,
    per_model_fields,
    placeholder,
    shared_fields,
    spec_data,
    spec_yaml,
)
from tui.throughput import Throughput, size

SHOWN_EVERY_S = 0.1  # the progress bar is redrawn at most this often
USER_SUITE = "include-path"  # the suite entry of the tasks in the user's --include-path folder
CHECK_AFTER_S = 0.15  # the spec is checked, then its models opened, once typing pauses this long: not at every key


def inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it, symbolic links resolved."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def default_output(models_dir: str, merges_dir: str) -> str:
    """Where a merge goes unless told: beside the saved specs, never inside the models folder (whose
    picker would then offer the merge as an input). When the specs folder lies inside it too (the default
    models folder is the current one), a hidden folder: the picker leaves those out."""
    beside = os.path.join(merges_dir, "merged")
    return beside if not inside(beside, models_dir) else os.path.join(".surgery", "merged")


class StatedCheckbox(Checkbox):
    """A checkbox whose state reads without colour: `▐X▌` ticked, `▐ ▌` not (Textual draws an X in both)."""

    @property
    def BUTTON_INNER(self) -> str:  # noqa: N802 - the name Textual's ToggleButton draws from
        return "X" if self.value else " "


NUM_WIDTH = (9, 16)  # a model's number field: its narrowest, and the widest it grows to for a gradient


def fit(field: Input) -> Input:
    """A number field as wide as its text (a gradient '0.2, 0.6, 1' shows whole), within NUM_WIDTH; the
    help line below the form shows any longer text in full."""
    if field.has_class("num"):
        field.styles.width = max(NUM_WIDTH[0], min(NUM_WIDTH[1], len(field.value) + 2))
    return field


def dom_id(path: str) -> str:
    """A spec path as a widget id: 'models.1.parameters.density' -> 'f-models-1-parameters-density'."""
    return "f-" + path.replace(".", "-")


class Designer(Vertical):
    DEFAULT_CSS = Path(__file__).with_name("designer.tcss").read_text()
    BINDINGS = [
        Binding("f2", "pick", "Pick"),
        Binding("f3", "add_model", "Add"),
        Binding("f4", "drop_model", "Drop"),
        Binding("f5", "conflicts", "Diff"),
        Binding("f6", "run", "Run"),
        Binding("escape", "cancel", "Cancel"),
        Binding("f7", "evaluate", "Eval"),
        Binding("f8,ctrl+s", "save", "Save"),
    ]

    class Evaluated(Message):
        """`path` was scored; the leaderboard has new rows."""

        def __init__(self, path: str):
            super().__init__()
            self.path = path

    def __init__(self, models_dir: str = ".", db: str | None = None, merges_dir: str = "merges",
                 include_path: str | None = None, id: str | None = None):
        super().__init__(id=id)
        self.models_dir, self.db, self.merges_dir = models_dir, db, merges_dir
        self.include_path = include_path  # the user's task folder: its tasks are the suite USER_SUITE
        self.method = "ties"
        self.count = 2
        self.texts: dict[str, str] = {"dtype": "float32", **self._prefill(0), **self._prefill(1)}
        self.data: dict = {}
        self.spec: MergeSpec | None = None
        self.error: SpecError | None = None      # the first problem of the spec as it stands
        self.plan: MergePlan | None = None       # the last plan that checked out
        self.block_bytes = DEFAULT_BLOCK
        self.state = "idle"                      # idle, running, merged, cancelled, failed, evaluating, evaluated
        self.cancel_event = threading.Event()
        self.merge_ended = threading.Event()     # clear while a merge's thread runs
        self.merge_ended.set()
        self.meter: Throughput | None = None
        self.output: str | None = None           # the folder the last merge wrote
        self.focused_path = ""
        self.confirmed: str | None = None  # the spec file f8 was pressed for once while it held another spec
        self.planned: dict | None = None  # the form data of the planner's last verdict
        self.compared: tuple[str, ...] | None = None  # the base and models the conflict map was drawn for
        self.eval_step, self.eval_started = "", 0.0  # what the evaluation is doing, since when
        self._shown = 0.0
        self._check_timer = self._ticker = None

    # ---- layout ------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="panes"):
            with VerticalScroll(id="form"):
                yield from self._head()
                yield Vertical(*self._dynamic(), id="dynamic")
                yield from self._tail()
            with TabbedContent(id="side"):
                with TabPane("YAML", id="side-yaml"):
                    yield VerticalScroll(Static(id="yaml"))
                with TabPane("Conflicts", id="side-map"):
                    yield VerticalScroll(Static("F5 compares the models' task vectors", id="map"))
                with TabPane("Log", id="side-log"):
                    yield RichLog(id="log", wrap=True, markup=False, min_width=20)
        yield Static("", id="help")
        with Horizontal(id="runbar"):
            yield ProgressBar(id="progress", show_eta=False)
            yield Static("", id="rate")
        yield Static("", id="status")

    def _head(self) -> ComposeResult:
        options = [(f"{name}", name) for name in REGISTRY]
        with Horizontal(classes="line"):
            yield Label("method", classes="key")
            yield Select(options, value=self.method, allow_blank=False, compact=True, id="method")
        yield Static(REGISTRY[self.method].summary, id="summary")
        with Horizontal(classes="line"):
            yield Label("base", classes="key")
            yield self._input("base_model", "a folder under the models folder (F2 picks)")
        yield self._error("base_model")

    def _dynamic(self) -> list[Widget]:
        """The widgets that follow the method and the number of models."""
        method = REGISTRY[self.method]
        per = per_model_fields(method)
        head = Horizontal(Label("models", classes="path-head"), *[Label(k, classes="num-head") for k in per],
                          id="models-head", classes="line section")
        out: list[Widget] = [head, self._error("models")]
        for i in range(self.count):
            cells = [self._input(f"models.{i}.model", "model folder (F2 picks)", "path")]
            cells += [self._input(f"models.{i}.parameters.{k}", placeholder(k, f, method), "num", hint(f))
                      for k, f in per.items()]
            out += [Horizontal(*cells, classes="line row"), self._error(f"models.{i}")]
        shared = shared_fields(method)
        out.append(Static("parameters" if shared else "parameters: none", classes="section"))
        for key, f in shared.items():
            path = f"parameters.{key}"
            options = choices(f)
            field = (self._choice(path, options, placeholder(key, f, method), hint(f)) if options else
                     self._input(path, placeholder(key, f, method), tip=hint(f)))
            out += [Horizontal(Label(key, classes="key"), field, classes="line"), self._error(path)]
        return out

    def _choice(self, path: str, options: tuple[str, ...], default: str, tip: str) -> Select:
        """A drop-down for a true/false or one-of parameter; its blank entry leaves the method's default."""
        value = self.texts.get(path, "")
        return Select([(o, o) for o in options], prompt=f"default ({default})" if default else "default",
                      value=value if value in options else Select.NULL, name=path, id=dom_id(path),
                      classes="field choice", compact=True, tooltip=tip or None)

    def _tail(self) -> ComposeResult:
        yield Static("output", classes="section")
        with Horizontal(classes="line"):
            yield Label("dtype", classes="key")
            yield Select([(d, d) for d in DTYPE_NAMES], value=self.texts["dtype"], allow_blank=False, compact=True,
                         id=dom_id("dtype"))
            yield Label(" seed ")
            yield self._input("seed", "0")
        yield self._error("seed")
        with Horizontal(classes="line"):
            yield Label("merge into", classes="key")
            yield Input(default_output(self.models_dir, self.merges_dir), id="out", compact=True)
            yield StatedCheckbox("replace", id="replace", compact=True)
        with Horizontal(classes="line"):
            yield Label("spec file", classes="key")
            yield Input(self._default_spec_file(), id="save", compact=True)
        with Horizontal(classes="line"):
            yield Label("eval suite", classes="key")
            mine = [(f"tasks in {os.path.basename(self.include_path)}", USER_SUITE)] if self.include_path else []
            yield Select([(s, s) for s in suite_names()] + mine, value="world", allow_blank=False, compact=True,
                         id="suite")
            yield Label(" limit ")
            yield Input("", placeholder="all", id="limit", type="integer", valid_empty=True, compact=True)
        yield self._error("")

    def _input(self, path: str, placeholder: str = "", kind: str = "", tip: str = "") -> Input:
        field = Input(self.texts.get(path, ""), placeholder=placeholder, name=path, id=dom_id(path),
                      classes=f"field {kind}", compact=True)
        field.tooltip = tip or None
        return fit(field)

    def _error(self, slot: str) -> Static:
        return Static("", name=slot, id="e-" + (slot.replace(".", "-") or "spec"), classes="error")

    def _default_spec_file(self, method: str | None = None) -> str:
        return os.path.join(self.merges_dir, f"designed-{method or self.method}.yaml")

    def _prefill(self, i: int) -> dict[str, str]:
        """A new model row: its required per-model parameters start at 1 (e.g. each weight)."""
        method = REGISTRY[self.method]
        return {f"models.{i}.parameters.{k}": "1" for k in per_model_fields(method) if k in method.required}

    def on_mount(self) -> None:
        self.query_one("#runbar").display = False
        self.refresh_spec()
        self.say("type or pick (F2) the models; every value is checked as you type", log=False)

    # ---- the spec as it is typed ---------------------------------------------------------------------

    @property
    def spec_file(self) -> str:
        return self.query_one("#save", Input).value.strip() or os.path.join(self.merges_dir, "designed.yaml")

    @on(Input.Changed, ".field")
    def _typed(self, event: Input.Changed) -> None:
        self.texts[event.input.name] = event.value
        fit(event.input)
        self.refresh_spec()

    @on(Input.Changed, "#save")
    def _renamed(self) -> None:
        self.refresh_spec()

    @on(Select.Changed, ".choice")
    def _chose(self, event: Select.Changed) -> None:
        self.texts[event.select.name] = "" if event.value is Select.NULL else str(event.value)
        self.refresh_spec()

    @on(Select.Changed, "#f-dtype")
    def _dtype(self, event: Select.Changed) -> None:
        self.texts["dtype"] = str(event.value)
        self.refresh_spec()

    @on(Select.Changed, "#method")
    async def _method(self, event: Select.Changed) -> None:
        if event.value == self.method:
            return
        save = self.query_one("#save", Input)
        if save.value == self._default_spec_file():  # not renamed by hand: follows the method
            save.value = self._default_spec_file(str(event.value))
        self.method = str(event.value)
        method = REGISTRY[self.method]
        known = set(per_model_fields(method)) | set(shared_fields(method))
        self.texts = {k: v for k, v in self.texts.items() if ".parameters." not in f".{k}" or k.split(".")[-1] in known}
        for i in range(self.count):
            self.texts = self._prefill(i) | self.texts
        self.query_one("#summary", Static).update(method.summary)
        await self.rebuild()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        name = getattr(event.widget, "name", None)
        if isinstance(event.widget, Input) and name:
            self.focused_path = name
            self.show_help()

    async def rebuild(self) -> None:
        """Lay the model rows and parameters out again (after a method change, an added or dropped row)."""
        dynamic = self.query_one("#dynamic")
        await dynamic.remove_children()
        await dynamic.mount_all(self._dynamic())
        self.refresh_spec()

    def refresh_spec(self) -> None:
        """The spec dict from the form, at once (a few dict operations, no checking); its check, YAML and
        plan once typing pauses CHECK_AFTER_S, in a worker: no key waits for a check."""
        self.data = spec_data(self.method, self.texts, self.count)
        self._check_map()
        if self._check_timer is not None:
            self._check_timer.stop()
        data, file = self.data, self.spec_file
        self._check_timer = self.set_timer(CHECK_AFTER_S, lambda: self.check(data, file))

    @work(thread=True, group="check", exit_on_error=False)  # not exclusive: a stale result is dropped anyway
    def check(self, data: dict, file: str) -> None:
        """The spec model's verdict and the YAML; then, when it checks out, what `surgery merge --dry-run`
        checks once the models are opened: paths, files, names, shapes, counts."""
        spec, error = check_spec(data, file)
        self.app.call_from_thread(self._checked, data, spec, error, spec_yaml(data))
        if spec is None:
            return
        try:
            plan = plan_merge(spec, file, models_dir=self.models_dir)
            for folder in plan.folders.values():
                folder.close()
        except SurgeryError as e:  # the base is checked before the models are opened: its message comes first
            plan, error = None, (e if getattr(e, "field", "") else empty_row(data, file) or e)
        self.app.call_from_thread(self._planned, data, plan, error)

    def _checked(self, data: dict, spec: MergeSpec | None, error: SpecError | None, text: str) -> None:
        if data != self.data:
            return  # the form changed since; a newer check is on its way
        self.spec = spec
        self.query_one("#yaml", Static).update(text)
        self.show_error(error)
        self.show_help()
        if error is not None and self.state not in ("running", "evaluating"):
            self.say("the spec does not check out yet; the message is under the field", log=False)

    def _planned(self, data: dict, plan: MergePlan | None, error: SurgeryError | None) -> None:
        if data != self.data:
            return
        self.plan, self.planned = plan, data
        self.show_error(error)
        self.show_help()
        if error is not None and self.state not in ("running", "evaluating"):
            self.say("the spec does not check out yet; the message is under the field", log=False)
        if plan is not None and self.state not in ("running", "evaluating"):
            layers = len(plan.out_layers)
            self.say(f"plan: {len(plan.jobs)} tensors, {layers} layers, writes {size(plan.write_bytes)}; F6 runs it",
                     log=False)

    def verdict(self) -> tuple[MergeSpec | None, SurgeryError | None]:
        """The spec as the form stands, checked now (for an action that cannot wait for the pause): the spec
        model's verdict, then the planner's when its last check was of this very form."""
        spec, error = check_spec(self.data, self.spec_file)
        if error is None and self.planned == self.data:
            error = self.error
        return spec, error

    def show_error(self, error: SurgeryError | None) -> None:
        """The message under the field it is about (the closest enclosing one; a file error under the row
        of the model it names), the field marked. Only the slot and field that change are touched."""
        self.error = error
        where = self._located(error)
        slot = owner(where, [s.name for s in self.query(".error") if s.name]) if error else None
        path = owner(where, [f.name for f in self.query(".field") if f.name]) if error else ""
        for static in self.query(".error.shown").results(Static):
            if static.name != slot:
                static.update("")
                static.display = False
                static.remove_class("shown")
        for field in self.query(".field.invalid"):
            if field.name != path:
                field.remove_class("invalid")
        if error is None:
            return
        text = f"{where}: {error.problem}" if getattr(error, "field", "") else getattr(error, "problem", str(error))
        static = self.query_one("#e-" + (slot.replace(".", "-") or "spec"), Static)
        static.update(text)
        static.display = True
        static.add_class("shown")
        if path:
            self.query_one("#" + dom_id(path)).add_class("invalid")

    def _located(self, error: SurgeryError | None) -> str:
        """The spec path an error is about: its own field, else the path field whose model folder its message
        names (the reader's errors name a file, not a spec field); '' when neither."""
        if error is None or getattr(error, "field", ""):
            return getattr(error, "field", "") if error else ""
        message, named = str(error), []
        for path in self._path_fields():
            text = self.texts.get(path, "").strip()
            folder = os.path.abspath(os.path.join(self.models_dir, text)) if text else ""
            if folder and any(folder + end in message for end in (os.sep, ":", "'")):
                named.append(path)
        return named[0] if named else ""

    def show_help(self) -> None:
        """The focused field's description and bounds; for a gradient, its whole text and its value at every
        layer (the field may be too narrow to show it all)."""
        path = self.focused_path
        key = path.rsplit(".", 1)[-1]
        method = REGISTRY[self.method]
        field = (per_model_fields(method) | shared_fields(method)).get(key) if ".parameters." in f".{path}" else None
        text = f"{key}: {hint(field)}" if field else ""
        value = parse_value(self.texts.get(path, ""))
        if field and isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            layers = len(self.plan.out_layers) if self.plan else 8
            values = " ".join(f"{v:.3g}" for v in layer_values(value, layers))
            assumed = "" if self.plan else ", assumed until the models open"
            text += f"\n{key} = {self.texts[path].strip()}: by layer ({layers} layers{assumed}): {values}"
        self.query_one("#help", Static).update(text)

    # ---- actions -------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "cancel":
            return self.state == "running"
        return True

    def _focused_field(self) -> str:
        """The spec path of the focused field, '' when focus is elsewhere."""
        focused = self.screen.focused
        return focused.name if isinstance(focused, Input) and focused.name and self in focused.ancestors else ""

    def _row_of_focus(self) -> int | None:
        parts = self._focused_field().split(".")
        return int(parts[1]) if parts[0] == "models" and len(parts) > 1 else None

    def _path_fields(self) -> list[str]:
        return ["base_model"] + [f"models.{i}.model" for i in range(self.count)]

    def sync_fields(self) -> None:
        """The texts from the fields as they are now, for an action run as its key arrives: the fields'
        Changed messages for the keys typed just before may still wait in this widget's queue."""
        typed = {f.name: f.value for f in self.query(".field").results(Input) if f.name}
        if any(self.texts.get(name, "") != value for name, value in typed.items()):
            self.texts |= typed
            self.refresh_spec()

    def focus_now(self, selector: str) -> None:
        """Focus at once: `Widget.focus()` waits its turn behind the keys already queued, which would
        go to the field focused before."""
        self.screen.set_focus(self.query_one(selector))

    def action_pick(self) -> None:
        """Pick a folder for the focused path field; elsewhere, for the first empty one."""
        self.sync_fields()
        path = self._focused_field()
        if path not in self._path_fields():
            empty = [p for p in self._path_fields() if not self.texts.get(p, "").strip()]
            path = empty[0] if empty else f"models.{self._row_of_focus() or 0}.model"
        what = "the base model" if path == "base_model" else f"model {int(path.split('.')[1]) + 1}"
        self.app.push_screen(ModelPicker(self.models_dir, self.db, what), lambda chosen: self._picked(path, chosen))

    def _picked(self, path: str, chosen: str | None) -> None:
        """Fill the field (relative to the models folder when inside it), then go on to the next empty one,
        so that F2, F2, F2 picks the base and each model in turn."""
        field = self.query_one("#" + dom_id(path), Input)
        if chosen:
            root, full = os.path.abspath(self.models_dir), os.path.abspath(chosen)
            field.value = os.path.relpath(full, root) if full.startswith(root + os.sep) else full
            self.texts[path] = field.value
        empty = [p for p in self._path_fields() if not self.texts.get(p, "").strip()]
        self.focus_now("#" + dom_id(empty[0] if chosen and empty else path))

    async def action_add_model(self) -> None:
        self.sync_fields()
        self.texts |= self._prefill(self.count)
        self.count += 1
        await self.rebuild()
        self.focus_now("#" + dom_id(f"models.{self.count - 1}.model"))

    async def action_drop_model(self) -> None:
        self.sync_fields()
        if self.count <= 1:
            self.say("a merge keeps at least one model row")
            return
        row = self._row_of_focus()
        row = self.count - 1 if row is None else row
        self.texts = drop_model(self.texts, row)
        self.count -= 1
        await self.rebuild()
        self.focus_now("#" + dom_id(f"models.{min(row, self.count - 1)}.model"))

    def action_save(self) -> None:
        self.sync_fields()
        path, text = self.spec_file, spec_yaml(self.data)
        if self._must_confirm(path, text):
            return
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            temporary = f"{path}.{os.getpid()}.tmp"
            with open(temporary, "w") as f:
                f.write(text)
            os.replace(temporary, path)  # the file appears whole or not at all
        except OSError as e:
            self.say(f"cannot write {path} ({e.strerror})")
            return
        self.confirmed = None
        error = self.verdict()[1]
        note = f" (it does not check out yet: {error})" if error else ""
        self.say(f"saved {path}{note}; run it with: surgery merge {path} OUT --models-dir {self.models_dir}")

    def _must_confirm(self, path: str, text: str) -> bool:
        """True (and a question asked) when `path` holds another spec and f8 was not pressed again for it."""
        try:
            with open(path) as f:
                same = f.read() == text
        except OSError:  # no such file yet
            return False
        if same or self.confirmed == path:
            return False
        self.confirmed = path
        self.say(f"{path} holds another spec; press f8 again to replace it, or change the spec file name")
        return True

    def _diff_inputs(self) -> tuple[str, ...]:
        """What the conflict map depends on: the base, then the non-empty model rows, as typed."""
        named = [self.texts.get(f"models.{i}.model", "").strip() for i in range(self.count)]
        return (self.texts.get("base_model", "").strip(), *[m for m in named if m])

    def _check_map(self) -> None:
        """A map drawn for other models (a row dropped, added or changed since) says so at once."""
        if self.compared is not None and self.compared != self._diff_inputs():
            self.compared = None
            self.query_one("#map", Static).update("the models changed since the last comparison; F5 compares "
                                                  "the ones now in the form")

    def action_conflicts(self) -> None:
        """`surgery diff --base BASE MODELS...` on the models as they stand, parameters aside."""
        self.sync_fields()
        inputs = self._diff_inputs()
        try:
            paths = [resolve_path(m, self.models_dir) for m in inputs[1:]]
            base = resolve_path(inputs[0], self.models_dir) if inputs[0] else None
        except SurgeryError as e:
            self.say(f"cannot compare: {e}")
            return
        self.compared = inputs
        self.query_one("#map", Static).update("comparing the task vectors ...")
        self.query_one("#side", TabbedContent).active = "side-map"
        self.compare(inputs, paths, base)

    @work(thread=True, exclusive=True, group="diff", exit_on_error=False)
    def compare(self, inputs: tuple[str, ...], paths: list[str], base: str | None) -> None:
        from surgery.diagnose.diff import diff_models

        try:
            shown = conflict_map(diff_models(paths, base=base))
        except SurgeryError as e:
            shown = f"cannot compare: {e}"
        self.app.call_from_thread(self._compared, inputs, shown)

    def _compared(self, inputs: tuple[str, ...], shown) -> None:
        if inputs == self.compared:  # else the models changed while they were compared: the map says so
            self.query_one("#map", Static).update(shown)

    def action_run(self) -> None:
        self.sync_fields()
        if self.state in ("running", "evaluating"):
            self.say(f"busy ({self.state}); wait for it to finish")
            return
        spec, error = self.verdict()
        if error or spec is None:
            self.show_error(error)
            self.say(f"fix the spec first: {error}")
            return
        out = self.query_one("#out", Input).value.strip()
        options = Options(block_bytes=self.block_bytes, force=self.query_one("#replace", Checkbox).value)
        if os.path.lexists(out) and not options.force:  # the engine would say "pass --force", a CLI flag
            self.say(f"{out} already exists: tick 'replace' to overwrite it, or merge into another folder")
            return
        self.cancel_event, self.meter = threading.Event(), None
        self.merge_ended.clear()
        self.set_state("running")
        self.query_one("#runbar").display = True
        self.query_one("#progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#side", TabbedContent).active = "side-log"
        self.say(f"merging into {out} ...")
        self.merge(dict(self.data), self.spec_file, out, options, self.cancel_event)

    @work(thread=True, exclusive=True, group="merge", exit_on_error=False)
    def merge(self, data: dict, file: str, out: str, options: Options, cancel: threading.Event) -> None:
        try:
            self._merge(data, file, out, options, cancel)
        finally:
            self.merge_ended.set()

    def _merge(self, data: dict, file: str, out: str, options: Options, cancel: threading.Event) -> None:
        try:
            plan = plan_merge(parse_spec(data, file), file, models_dir=self.models_dir)
            self.meter = Throughput(plan.write_bytes, len(plan.jobs))
            path = run_merge(plan, out, options, progress=self.record_progress, cancel=cancel)
        except Cancelled as e:
            self.app.call_from_thread(self._merge_done, "cancelled", str(e), None)
        except SurgeryError as e:
            self.app.call_from_thread(self._merge_done, "failed", f"error: {e}", None)
        except Exception as e:  # noqa: BLE001 - shown, not raised: the interface stays up
            self.app.call_from_thread(self._merge_done, "failed", f"internal error: {type(e).__name__}: {e}", None)
        else:
            self.app.call_from_thread(self._merge_done, "merged", f"wrote {path}; F7 scores it", path)

    def record_progress(self, name: str, nbytes: int) -> None:
        """The engine's progress call, on the merge's thread: count, and redraw now and then."""
        self.meter.add(name, nbytes)
        now = time.monotonic()
        if now - self._shown >= SHOWN_EVERY_S:
            self._shown = now
            self.app.call_from_thread(self.show_progress)

    def show_progress(self) -> None:
        meter = self.meter
        if meter is None:
            return
        self.query_one("#progress", ProgressBar).update(total=max(meter.total, 1), progress=meter.done_bytes)
        self.query_one("#rate", Static).update(meter.line())

    def _merge_done(self, state: str, message: str, path: str | None) -> None:
        """The bar ends full on success; otherwise it is emptied and says where the merge stopped (a bar
        left at 54% would read as a merge still on its way)."""
        self.show_progress()
        meter = self.meter
        if state != "merged":
            self.query_one("#progress", ProgressBar).update(total=100, progress=0)
            where = (f" at tensor {meter.done_tensors}/{meter.tensors} ({meter.done_bytes / max(meter.total, 1):.0%})"
                     if meter is not None else " before the first tensor")
            self.query_one("#rate", Static).update(f"{state}{where}; nothing was written")
        self.set_state(state)
        self.say(message)
        if path:
            self.output = path

    def action_cancel(self) -> None:
        if self.state == "running":
            self.cancel_event.set()
            self.say("cancelling ...")

    def action_evaluate(self) -> None:
        if self.state in ("running", "evaluating"):
            self.say(f"busy ({self.state}); wait for it to finish")
            return
        path = os.path.abspath(self.query_one("#out", Input).value.strip())
        if not os.path.isfile(os.path.join(path, "config.json")):
            self.say(f"no merged model at {path}; run the merge first (F6)")
            return
        limit = self.query_one("#limit", Input).value.strip()
        suite = str(self.query_one("#suite", Select).value)
        self.set_state("evaluating")
        self.query_one("#side", TabbedContent).active = "side-log"
        self.say(f"evaluating {path} on {suite} ...")
        self.eval_step, self.eval_started = "loading lm-eval and the model", time.monotonic()
        self.query_one("#runbar").display = True
        self.query_one("#progress", ProgressBar).update(total=None, progress=0)  # moving until the tasks are counted
        self._ticker = self.set_interval(1.0, self.show_eval_step)  # the seconds count on: it is not stuck
        self.show_eval_step()
        self.score(path, suite, int(limit) if limit else None)

    @work(thread=True, exclusive=True, group="eval", exit_on_error=False)
    def score(self, path: str, suite: str, limit: int | None) -> None:
        from evals.scoring.harness import HarnessSettings
        from evals.scoring.run import prepare, score
        from evals.scoring.store import Store
        from evals.scoring.suites import suite_tasks, user_tasks

        def say(message: str) -> None:
            self.app.call_from_thread(self.say, message)

        def on_task(task: str, done: int, total: int) -> None:
            self.app.call_from_thread(self._on_task, task, done, total)

        try:
            tasks = list(user_tasks(self.include_path) if suite == USER_SUITE else suite_tasks(suite))
            batch = prepare([path], tasks, self.include_path)  # the files read by the project's reader first
            settings = HarnessSettings(limit=limit, include_path=self.include_path)
            with Store(self.db) as store:  # opened on this thread: an SQLite connection stays on its thread
                table = score(batch, settings, store, force=False, say=say, on_task=on_task)
        except SurgeryError as e:
            self.app.call_from_thread(self._scored, "failed", f"error: {e}")
            return
        except Exception as e:  # noqa: BLE001 - shown, not raised: the interface stays up
            self.app.call_from_thread(self._scored, "failed", f"internal error: {type(e).__name__}: {e}")
            return
        scores = ", ".join(f"{s.task} {s.value:.3g}" for scores in table.values() for s in scores.values())
        self.app.call_from_thread(self._scored, "evaluated", f"scored {path}: {scores}; see the Leaderboard tab")

    def _on_task(self, task: str, done: int, total: int) -> None:
        self.query_one("#progress", ProgressBar).update(total=total, progress=done)
        self.eval_step = f"task {done + 1}/{total}: {task}"
        self.show_eval_step()

    def show_eval_step(self) -> None:
        self.query_one("#rate", Static).update(f"{self.eval_step}  {time.monotonic() - self.eval_started:.0f}s")

    def _scored(self, state: str, message: str) -> None:
        self._ticker.stop()
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=100, progress=100 if state == "evaluated" else 0)
        took = f"{time.monotonic() - self.eval_started:.0f}s"
        self.query_one("#rate", Static).update(f"scored in {took}" if state == "evaluated" else f"{state} after {took}")
        self.set_state(state)
        self.say(message)
        if state == "evaluated":
            self.post_message(self.Evaluated(self.query_one("#out", Input).value.strip()))

    # ---- feedback ------------------------------------------------------------------------------------

    def set_state(self, state: str) -> None:
        self.state = state
        self.refresh_bindings()

    def say(self, message: str, log: bool = True) -> None:
        self.query_one("#status", Static).update(message)
        if log:
            self.query_one("#log", RichLog).write(message)

"""The results store: one SQLite file holding checkpoints (keyed by the hash of their weights), their
lineage, evaluation runs, task scores and per-document outcomes.

Scores are keyed by (weights hash, task, settings), so re-evaluating unchanged weights is served from
the store whatever their path, and changed weights are never given old results. Several processes may
write at once: every write is one immediate transaction, and the others wait for it. The file keeps a
rollback journal (not a write-ahead log) so that a store opened read-only, as the commands that only
read it do, is read without writing a byte or leaving a -wal or -shm file beside it. A file written by a
newer schema is refused before anything is written to it. SQLite's errors (a damaged or read-only file)
become one located InputError saying what to do.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from functools import wraps
from urllib.parse import quote

from evals.scoring.checkpoints import Checkpoint, fingerprint
from evals.scoring.scores import ScoreTable, TaskScore
from surgery.errors import InputError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60
WAL_FORMAT = 2  # bytes 18 and 19 of an SQLite header: 2 for a database in write-ahead-log mode
SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    hash TEXT PRIMARY KEY, base_hash TEXT, path TEXT NOT NULL, lineage TEXT NOT NULL, first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY, hash TEXT NOT NULL REFERENCES checkpoints(hash), fingerprint TEXT NOT NULL,
    seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, hash TEXT NOT NULL, name TEXT NOT NULL, settings TEXT NOT NULL,
    lm_eval TEXT NOT NULL, started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    hash TEXT NOT NULL, task TEXT NOT NULL, settings TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,
    stderr REAL, n INTEGER NOT NULL, chance REAL, version TEXT NOT NULL, num_fewshot INTEGER NOT NULL,
    run_id INTEGER NOT NULL REFERENCES runs(id), PRIMARY KEY (hash, task, settings));
CREATE TABLE IF NOT EXISTS outcomes (
    hash TEXT NOT NULL, task TEXT NOT NULL, settings TEXT NOT NULL, doc INTEGER NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (hash, task, settings, doc));
"""
# words of an SQLite error -> what it means for the store and what to do ({e}: SQLite's own words)
PROBLEMS = (
    ("readonly", "is read-only ({e}); make the file and its folder writable, or give another --db"),
    ("malformed", "is damaged ({e}); restore it from a backup, or move it aside and evaluate again into a new store"),
    ("not a database", "is not an SQLite database ({e}); give another --db"),
    ("disk I/O", "cannot be read or written ({e}); check the disk, or move the store elsewhere and give that --db"),
    ("full", "cannot grow: the disk is full ({e}); free space, or give another --db"),
    ("locked", "stayed locked by another process for {timeout} s ({e}); wait for it to finish, or give another --db"),
    ("unable to open", "cannot be opened ({e}); check that the file and its folder can be read"),
    ("no such table", "is not a results store ({e}); give the --db that surgery eval wrote"),
)


def store_error(path: str, e: sqlite3.Error) -> InputError:
    """One located message for an SQLite error met in the store at `path`."""
    text = str(e)
    problem = next((p for words, p in PROBLEMS if words in text), "failed ({e}); if the file is damaged, move it aside")
    return InputError(f"results store {path} {problem.format(e=text, timeout=BUSY_TIMEOUT_S)}")


def located(method):
    """A Store method whose SQLite errors are raised as `store_error`s."""
    @wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise store_error(self.path, e) from None
    return run


def default_path() -> str:
    """$SURGERY_HOME/evals.sqlite, else .surgery/evals.sqlite in the current folder."""
    home = os.environ.get("SURGERY_HOME") or os.path.join(os.getcwd(), ".surgery")
    return os.path.join(home, "evals.sqlite")


def connect_readonly(path: str) -> sqlite3.Connection:
    """A connection that can only read the store at `path`, and changes nothing on disk. A store still in
    write-ahead-log mode (made before the rollback journal) with no log waiting is opened as immutable,
    since a read-only open of it would create the -wal and -shm files; with a log waiting, its files are
    used as they are."""
    if not os.path.isfile(path):
        raise InputError(f"results store {path} does not exist; check --db (surgery eval creates the store when "
                         "it first stores scores)")
    uri = f"file:{quote(path)}?mode=ro"
    if _wal_format(path) and not os.path.exists(f"{path}-wal"):
        uri += "&immutable=1"
    try:
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise store_error(path, e) from None


def _wal_format(path: str) -> bool:
    with open(path, "rb") as f:
        header = f.read(20)
    return len(header) == 20 and header[18] == WAL_FORMAT


def schema_version(path: str) -> int:
    """The schema version of an existing store, read without writing to it (0 for a new file)."""
    if not os.path.exists(path):
        return 0
    con = connect_readonly(path)
    try:
        return con.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as e:
        raise store_error(path, e) from None
    finally:
        con.close()


def _check_version(path: str, found: int) -> None:
    if found > SCHEMA_VERSION:
        raise InputError(f"results store {path} has schema version {found}, newer than this surgery's "
                         f"{SCHEMA_VERSION}; upgrade surgery, or give another --db (the file was not changed)")


class Store:
    """An open results store; use as a context manager or call close(). With `readonly` the store must
    exist and is only read: nothing on disk changes."""

    @located
    def __init__(self, path: str | None = None, readonly: bool = False):
        self.path = os.path.abspath(path or default_path())
        self.readonly = readonly
        if readonly:
            self._open_readonly()
            return
        found = schema_version(self.path)
        _check_version(self.path, found)
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as e:
            raise InputError(f"results store {self.path}: cannot create its folder ({e.strerror}); give another "
                             "--db") from None
        self.con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            self.con.execute("PRAGMA foreign_keys=ON")
            if found < SCHEMA_VERSION or _wal_format(self.path):
                self._upgrade()
            else:
                self.con.execute("BEGIN IMMEDIATE")  # the write lock, taken and given back: a store that cannot be
                self.con.execute("ROLLBACK")         # written is found now, before any scoring; nothing changes
        except BaseException:
            self.con.close()
            raise

    def _open_readonly(self) -> None:
        self.con = connect_readonly(self.path)  # a missing store is an error: reading never creates one
        try:
            found = self.con.execute("PRAGMA user_version").fetchone()[0]
            _check_version(self.path, found)
            if found < SCHEMA_VERSION:
                raise InputError(f"results store {self.path} holds no scores (schema version {found}); give the "
                                 "--db that surgery eval wrote")
        except BaseException:
            self.con.close()
            raise

    def _upgrade(self) -> None:
        """Create the tables and leave write-ahead-log mode (stores made before the rollback journal)."""
        self.con.execute("PRAGMA journal_mode=DELETE")  # stays WAL while another process has it open: fine
        with self.transaction():  # read again under the lock: another process may have upgraded it
            _check_version(self.path, self.con.execute("PRAGMA user_version").fetchone()[0])
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.con.execute(statement)
            self.con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        if hasattr(self, "con"):
            self.con.close()

    def transaction(self):
        return _Transaction(self.con)

    # writing

    @located
    def register(self, name: str, checkpoint: Checkpoint, lineage: dict) -> None:
        """Record the checkpoint (once per hash) and point `name` at its current weights."""
        now = time.time()
        with self.transaction():
            if checkpoint.base is not None:
                self._insert_checkpoint(checkpoint.base, {}, now)
            self._insert_checkpoint(checkpoint, lineage, now)
            self.con.execute("INSERT OR REPLACE INTO names VALUES (?, ?, ?, ?)",
                             (name, checkpoint.hash, fingerprint(checkpoint.path), now))

    def _insert_checkpoint(self, checkpoint: Checkpoint, lineage: dict, now: float) -> None:
        base = checkpoint.base.hash if checkpoint.base else None
        self.con.execute("INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                         (checkpoint.hash, base, checkpoint.path, json.dumps(lineage, sort_keys=True), now))

    @located
    def put(self, name: str, hash: str, settings: dict, keys: str | Mapping[str, str], lm_eval: str,
            results: dict) -> int:
        """Store one run's results ({task: harness.Evaluated}) under one settings key, or one per task,
        in one transaction; returns the run id."""
        with self.transaction():
            run = self.con.execute("INSERT INTO runs (hash, name, settings, lm_eval, started) VALUES (?, ?, ?, ?, ?)",
                                   (hash, name, json.dumps(settings, sort_keys=True), lm_eval, time.time())).lastrowid
            for task, ev in results.items():
                s, key = ev.score, keys if isinstance(keys, str) else keys[task]
                self.con.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 (hash, task, key, s.metric, s.value, s.stderr, s.n, s.chance, ev.version,
                                  ev.num_fewshot, run))
                self.con.execute("DELETE FROM outcomes WHERE hash=? AND task=? AND settings=?", (hash, task, key))
                self.con.executemany("INSERT INTO outcomes VALUES (?, ?, ?, ?, ?)",
                                     [(hash, task, key, i, v) for i, v in enumerate(s.outcomes)])
        return run

    @located
    def stored(self, hash: str, task: str, key: str) -> TaskScore | None:
        """The score of weights `hash` on exactly `task` under settings `key`, if stored."""
        row = self.con.execute("SELECT metric, value, stderr, n, chance FROM scores "
                               "WHERE hash=? AND task=? AND settings=?", (hash, task, key)).fetchone()
        return TaskScore(task, *row, self._outcomes(hash, task, key)) if row else None

    # reading

    @located
    def scores(self, hash: str, tasks: Sequence[str] | None = None, key: str | None = None) -> dict[str, TaskScore]:
        """Stored scores of the weights `hash`: of `tasks` (all when None), under settings `key` (the latest
        run's when None)."""
        rows = self.con.execute(
            "SELECT task, metric, value, stderr, n, chance, settings FROM scores WHERE hash=? "
            + ("AND settings=? " if key else "") + "ORDER BY run_id", (hash, key) if key else (hash,)).fetchall()
        found = {}
        for task, metric, value, stderr, n, chance, settings in rows:  # later runs overwrite earlier ones
            if tasks is None or any(covers(t, task) for t in tasks):
                found[task] = TaskScore(task, metric, value, stderr, n, chance, self._outcomes(hash, task, settings))
        return found

    def _outcomes(self, hash: str, task: str, key: str) -> tuple[float, ...]:
        rows = self.con.execute("SELECT value FROM outcomes WHERE hash=? AND task=? AND settings=? ORDER BY doc",
                                (hash, task, key))
        return tuple(v for (v,) in rows)

    @located
    def hash_of(self, name: str) -> str:
        """The weights hash a checkpoint name (or path) was last evaluated with, checked against the folder."""
        row = self.con.execute("SELECT hash, fingerprint FROM names WHERE name=?", (_name(name),)).fetchone()
        if row is None:
            raise InputError(f"checkpoint {name!r} is not in the results store {self.path}; "
                             f"run `surgery eval {name}` first (known: {', '.join(self.names()) or 'none'})")
        hash, stored = row
        now = fingerprint(_name(name))
        if now and now != stored:
            raise InputError(f"checkpoint {name!r} changed since it was evaluated; run `surgery eval {name}` again")
        return hash

    @located
    def names(self) -> list[str]:
        return [n for (n,) in self.con.execute("SELECT name FROM names ORDER BY name")]

    @located
    def lineage(self, hash: str) -> dict:
        row = self.con.execute("SELECT lineage FROM checkpoints WHERE hash=?", (hash,)).fetchone()
        return json.loads(row[0]) if row else {}

    @located
    def provenance(self, hash: str, tasks: Sequence[str] | None = None, key: str | None = None) -> dict[str, dict]:
        """{task: {"version", "num_fewshot", "settings"}} of the scores `scores()` returns for the same
        arguments: what must match before two checkpoints' scores are compared."""
        rows = self.con.execute(
            "SELECT task, version, num_fewshot, settings FROM scores WHERE hash=? "
            + ("AND settings=? " if key else "") + "ORDER BY run_id", (hash, key) if key else (hash,)).fetchall()
        return {task: {"version": version, "num_fewshot": shots, "settings": settings}
                for task, version, shots, settings in rows if tasks is None or any(covers(t, task) for t in tasks)}

    @located
    def table(self, checkpoints: Sequence[str] | None = None, suite: str | Sequence[str] | None = None,
              key: str | None = None) -> ScoreTable:
        """checkpoint name -> task -> TaskScore, for the named checkpoints (all when None) on the suite's
        tasks (a suite name, a list of tasks, or all stored tasks when None)."""
        from evals.scoring.suites import SUITES

        tasks = SUITES.get(suite, (suite,)) if isinstance(suite, str) else suite  # a suite, or one task
        names = list(checkpoints) if checkpoints is not None else self.names()
        return {name: self.scores(self.hash_of(name), tasks, key) for name in names}

    @located
    def comparable_table(self, checkpoints: Sequence[str], suite: str | None = None) -> ScoreTable:
        """`table(checkpoints, suite)`, refused when the checkpoints were evaluated with different task
        versions, few-shot counts or limits: scores that may be compared, difference by difference."""
        from evals.analysis.metrics import check_comparable
        from evals.scoring.suites import SUITES

        table = self.table(checkpoints, suite)
        wanted = SUITES.get(suite, (suite,)) if suite else None
        check_comparable({n: self.provenance(self.hash_of(n), wanted) for n in checkpoints})
        return table


def covers(requested: str, task: str) -> bool:
    """A requested task name covers itself and, for a group such as `leaderboard`, its subtasks."""
    return task == requested or task.startswith(requested + "_")


def _name(name: str) -> str:
    """Checkpoints are named by their absolute path."""
    return os.path.abspath(name)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so two writers queue instead of
    failing halfway; rolls back on an error."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, *_):
        self.con.execute("COMMIT" if kind is None else "ROLLBACK")

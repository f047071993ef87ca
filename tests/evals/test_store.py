"""The results store: round trips, keying by weights, two writers at once, newer schemas refused."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from evals.scoring.checkpoints import Checkpoint
from evals.scoring.harness import Evaluated
from evals.scoring.scores import TaskScore
from evals.scoring.store import SCHEMA_VERSION, Store
from surgery.errors import InputError


def _results(value: float, tasks=("t1", "t2")) -> dict[str, Evaluated]:
    return {t: Evaluated(TaskScore(t, "acc", value, 0.1, 3, 0.25, (1.0, 0.0, value)), "1.0", 0) for t in tasks}


def _put(store: Store, folder, hash: str, value: float, key: str = "limit=None;fewshot=None") -> str:
    name = str(folder)
    os.makedirs(name, exist_ok=True)
    store.register(name, Checkpoint(name, hash), {"training": {"method": {"name": "lora"}}})
    store.put(name, hash, {"limit": None}, {"t1": key, "t2": key}, "0.4.13", _results(value))
    return name


def test_scores_round_trip_into_a_score_table(tmp_path):
    with Store(str(tmp_path / "db.sqlite")) as store:
        a = _put(store, tmp_path / "a", "h" * 64, 0.5)
        b = _put(store, tmp_path / "b", "g" * 64, 1.0)
    with Store(str(tmp_path / "db.sqlite")) as store:  # read back by another connection
        table = store.table([a, b], ["t1", "t2"])
        assert table[a]["t1"] == TaskScore("t1", "acc", 0.5, 0.1, 3, 0.25, (1.0, 0.0, 0.5))
        assert table[b]["t2"].value == 1.0 and set(table[a]) == {"t1", "t2"}
        assert store.table([a], ["t2"]) == {a: {"t2": table[a]["t2"]}}
        assert store.lineage("h" * 64) == {"training": {"method": {"name": "lora"}}}


def test_scores_follow_the_weights_not_the_name(tmp_path):
    with Store(str(tmp_path / "db.sqlite")) as store:
        a = _put(store, tmp_path / "a", "h" * 64, 0.5)
        assert store.scores("h" * 64, ["t1"], "limit=None;fewshot=None")["t1"].value == 0.5
        assert store.scores("x" * 64, ["t1"], "limit=None;fewshot=None") == {}  # other weights: nothing
        assert store.scores("h" * 64, ["t1"], "limit=4;fewshot=None") == {}  # other settings: nothing
        assert store.stored("h" * 64, "t1", "limit=None;fewshot=None").value == 0.5
        assert store.stored("h" * 64, "t1", "limit=4;fewshot=None") is None
        store.register(a, Checkpoint(a, "x" * 64), {})  # the folder now holds other weights
        assert store.table([a], ["t1"]) == {a: {}}


def test_a_folder_changed_since_its_evaluation_is_not_served(tmp_path):
    with Store(str(tmp_path / "db.sqlite")) as store:
        a = _put(store, tmp_path / "a", "h" * 64, 0.5)
        (tmp_path / "a" / "model.safetensors").write_bytes(b"new weights")
        with pytest.raises(InputError, match="changed since it was evaluated; run `surgery eval"):
            store.table([a], ["t1"])


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "db.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    before = path.read_bytes(), os.stat(path).st_mtime_ns
    with pytest.raises(InputError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        Store(str(path))
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
    assert sorted(os.listdir(tmp_path)) == ["db.sqlite"]  # no WAL or journal file either


WRITER = textwrap.dedent("""
    import sys
    from evals.scoring.checkpoints import Checkpoint
    from evals.scoring.harness import Evaluated
    from evals.scoring.scores import TaskScore
    from evals.scoring.store import Store
    db, who = sys.argv[1], sys.argv[2]
    with Store(db) as store:
        for i in range(40):
            name = f"/{who}/{i}"
            store.register(name, Checkpoint(name, f"{who}{i:062d}"), {})
            results = {t: Evaluated(TaskScore(t, "acc", i / 40, None, 2, None, (0.0, 1.0)), "1", 0) for t in ("a", "b")}
            store.put(name, f"{who}{i:062d}", {}, {"a": "k", "b": "k"}, "0", results)
""")


@pytest.mark.integration
def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    db = str(tmp_path / "db.sqlite")
    Store(db).close()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, db, who]) for who in ("p", "q")]
    assert [w.wait(timeout=100) for w in writers] == [0, 0]
    with Store(db) as store:
        assert len(store.names()) == 80
        assert store.con.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 160
        assert store.con.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 320
        assert store.con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 80


def test_leaderboard_mean_counts_over_refusal_the_right_way_round():
    """Refusing 0.9 of harmful requests and 0.2 of benign ones: mean of 0.9 and 1 - 0.2 = 0.85."""
    from evals.report.leaderboard import mean_score
    from evals.scoring.scores import TaskScore

    scores = {"refusal": TaskScore("refusal", "exact_match", 0.9, None, 10, None, ()),
              "over_refusal": TaskScore("over_refusal", "exact_match", 0.2, None, 10, None, ())}
    assert abs(mean_score(scores) - 0.85) < 1e-12

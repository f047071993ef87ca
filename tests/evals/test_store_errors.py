"""The results store as a user meets it: a damaged file, a read-only file, a mistyped --db. Each is one
located message with exit code 2 (never an SQLite traceback); the commands that only read the store
(leaderboard, tax, forgetting, merge-quality) open it read-only and never change its bytes or leave
-wal/-shm files beside it; no store is created by a command that fails before it has scores to store,
nor by one that only reads."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

from evals.cli import eval_, forgetting, leaderboard, merge_quality, tax
from tests.evals.test_tax_forgetting_cli import _fill

SCORES = {"base": {"bigbench_arithmetic": 30, "refusal": 5}, "aligned": {"bigbench_arithmetic": 10, "refusal": 35}}
READERS = {  # the commands that only read the store, with arguments naming stored checkpoints
    "leaderboard": (leaderboard, []),
    "tax": (tax, ["--before", "base", "--after", "aligned"]),
    "forgetting": (forgetting, ["base", "aligned"]),
    "merge-quality": (merge_quality, ["aligned", "--expert", "refusal=base"]),
}


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _run(command, args: list[str]):
    result = CliRunner().invoke(command, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A store holding two checkpoints' scores, written in a folder of its own."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    db = str(tmp_path / "store" / "evals.sqlite")
    _fill(db, SCORES)
    return db


@pytest.mark.parametrize("name", READERS)
def test_reading_commands_leave_the_store_as_it_was(store, name):
    command, args = READERS[name]
    before, files = _sha(store), sorted(os.listdir(os.path.dirname(store)))
    result = _run(command, [*args, "--db", store])
    assert result.exit_code in (0, 2), result.output  # some refuse these scores: only the store matters here
    assert _sha(store) == before
    assert sorted(os.listdir(os.path.dirname(store))) == files == ["evals.sqlite"]


def test_a_damaged_store(store):
    """Pages after the first overwritten: SQLite's 'database disk image is malformed'."""
    with open(store, "r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * (os.path.getsize(store) - 4096))
    before = _sha(store)
    for command, args in [READERS["leaderboard"], READERS["tax"]]:
        result = _run(command, [*args, "--db", store])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"error: results store {store} is damaged (database disk image is "
                                         "malformed); restore it from a backup, or move it aside and evaluate "
                                         "again into a new store")
    assert _sha(store) == before and sorted(os.listdir(os.path.dirname(store))) == ["evals.sqlite"]


def test_a_mistyped_db_is_an_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "runs" / "typo.sqlite"
    for command, args in READERS.values():
        result = _run(command, [*args, "--db", typo])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"error: results store {typo} does not exist; check --db (surgery eval "
                                         "creates the store when it first stores scores)")
    assert os.listdir(tmp_path) == []


def test_the_default_store_is_not_created_to_read_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SURGERY_HOME", raising=False)
    result = _run(leaderboard, [])
    assert result.exit_code == 0 and "no scores stored yet; run `surgery eval CHECKPOINT` first" in result.output
    result = _run(tax, ["--before", "a", "--after", "b"])
    assert result.exit_code == 2
    assert f"results store {tmp_path / '.surgery' / 'evals.sqlite'} does not exist" in result.output
    assert os.listdir(tmp_path) == []


def test_eval_of_a_bad_checkpoint_creates_no_store(char_model, tmp_path):
    folder = shutil.copytree(char_model, tmp_path / "broken")
    os.remove(folder / "config.json")
    result = _run(eval_, [folder, "--db", tmp_path / "new" / "evals.sqlite"])
    assert result.exit_code == 2 and "no config.json" in result.output
    assert not (tmp_path / "new").exists()


@contextmanager
def read_only(folder: str):
    """`folder` made read-only for this process: by its mode bits, or for root (whom they do not stop)
    by a read-only bind mount over it."""
    if os.geteuid() != 0:
        modes = {p: os.stat(p).st_mode for p in [folder, *(os.path.join(folder, f) for f in os.listdir(folder))]}
        for p, mode in modes.items():
            os.chmod(p, mode & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                os.chmod(p, mode)
        return
    mounted = subprocess.run(["mount", "--bind", folder, folder], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only folder as root here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", folder], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", folder], check=True)


def test_a_read_only_store(store, char_model):
    """Readers read it (they never write); eval, which must store its scores, says so before scoring."""
    before = _sha(store)
    with read_only(os.path.dirname(store)):
        with pytest.raises(OSError):  # the folder really is read-only
            open(os.path.join(os.path.dirname(store), "probe"), "w")
        for command, args in READERS.values():
            result = _run(command, [*args, "--db", store])
            assert result.exit_code in (0, 2) and "read-only" not in result.output, result.output
        assert "aligned" in _run(leaderboard, ["--db", store]).output
        result = _run(eval_, [char_model, "--db", store])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1] == (
            f"error: results store {store} is read-only (attempt to write a readonly database); make the file and "
            "its folder writable, or give another --db")
    assert _sha(store) == before and sorted(os.listdir(os.path.dirname(store))) == ["evals.sqlite"]

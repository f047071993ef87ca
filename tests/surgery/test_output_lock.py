"""An output being written is locked: a second writer of the same path, in another process, is refused
with exit code 2 naming the output and the holder's pid, and writes nothing; the lock goes when its
holder ends; one left by a killed writer is reported as stale and taken over. Every writing command
is tried against a lock held by a real second process, and two real `surgery merge` processes are run
into one output, the first frozen mid-write."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from surgery.errors import OutputError, SurgeryWarning
from surgery.io.output import atomic_folder, lock_file, output_lock
from tests.surgery.reference_checkpoints import digest, run_cli

MERGES = Path(__file__).resolve().parents[1].parent / "merges"
HOLDER = ("import sys\nfrom surgery.io.output import output_lock\nwith output_lock(sys.argv[1]):\n"
          "    print('held', flush=True)\n    sys.stdin.read()\n")


@contextmanager
def held_elsewhere(out):
    """The lock of `out` held by another process (which waits until the block ends); yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held", proc.stderr.read()
        yield proc.pid
    finally:
        proc.stdin.close()
        assert proc.wait(30) == 0
        proc.stdout.close()
        proc.stderr.close()


def partials(out) -> list[str]:
    parent, name = os.path.split(os.path.abspath(out))
    return glob.glob(os.path.join(parent, f".{name}.partial-*"))


@pytest.fixture(scope="module")
def adapters(llama, tmp_path_factory) -> list[str]:
    from peft import LoraConfig

    from tests.surgery.adapters.conftest import save_adapter

    folder = tmp_path_factory.mktemp("lock_adapters")
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return [save_adapter(llama["base"], config, str(folder / f"a{i}"), seed=i) for i in (1, 2)]


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> str:
    pytest.importorskip("gguf")
    from tests.surgery.tiny_gguf import tiny_llama, write_gguf

    return str(write_gguf(tmp_path_factory.mktemp("lock_gguf") / "tiny.gguf", tiny_llama()))


COMMANDS = {  # command -> its arguments before OUT (given the fixtures) and after
    "merge": (lambda f: ["merge", MERGES / "ties-example.yaml"], lambda f: ["--models-dir", f["work"], "--quiet"]),
    "fold": (lambda f: ["fold", f["llama"]["base"], f["adapters"][0]], lambda f: ["--quiet"]),
    "convert": (lambda f: ["convert", f["llama"]["math"]], lambda f: ["--dtype", "bfloat16", "--quiet"]),
    "slice": (lambda f: ["slice", f["llama"]["math"]], lambda f: ["--layers", "0:1", "--quiet"]),
    "rename": (lambda f: ["rename", f["llama"]["math"]], lambda f: ["--map", "k_proj=key_proj", "--quiet"]),
    "extract-lora": (lambda f: ["extract-lora", f["llama"]["base"], f["llama"]["math"]],
                     lambda f: ["--rank", "2", "--quiet"]),
    "merge-adapters": (lambda f: ["merge-adapters", *f["adapters"]], lambda f: ["--combination", "cat"]),
    "import-gguf": (lambda f: ["import-gguf", f["gguf"]], lambda f: []),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_writer_refuses_an_output_another_process_is_writing(command, request, llama, work, adapters,
                                                                   tmp_path):
    fixtures = {"llama": llama, "work": work, "adapters": adapters,
                "gguf": request.getfixturevalue("gguf_file") if command == "import-gguf" else None}
    before, after = (make(fixtures) for make in COMMANDS[command])
    out = tmp_path / "out"
    inputs = digest(os.path.dirname(llama["base"]), *adapters)
    with held_elsewhere(out) as pid:
        result = run_cli(*before, out, *after)
        assert result.exit_code == 2, result.output
        assert f"output '{out}' is being written by another process (pid {pid})" in result.output
        assert "Traceback" not in result.output
        assert not out.exists() and partials(out) == []
    assert not os.path.exists(lock_file(out))  # released by its holder
    assert digest(os.path.dirname(llama["base"]), *adapters) == inputs
    result = run_cli(*before, out, *after)  # free again: the same command now writes
    assert result.exit_code == 0, result.output
    assert out.is_dir() and not os.path.exists(lock_file(out))


def big_merge(build, work: Path) -> list[str]:
    """A TIES merge of two models large enough to be caught mid-write; the `surgery merge` command line."""
    size = dict(hidden_size=256, num_hidden_layers=4, vocab_size=4096, intermediate_size=512)
    build(str(work / "base"), "llama", seed=0, **size)
    build(str(work / "math"), "llama", seed=1, **size)
    (work / "spec.yaml").write_text(yaml.safe_dump({"merge_method": "ties", "base_model": "base", "models": [
        {"model": "math", "parameters": {"weight": 1.0, "density": 0.5}}]}))
    return [sys.executable, "-m", "surgery.cli", "merge", "spec.yaml", "out", "--quiet", "--block-size", "64K",
            "--shard-size", "1M"]


def mid_write(proc: subprocess.Popen, work: Path) -> None:
    """Wait until `proc` has written a shard into its partial folder."""
    deadline = time.monotonic() + 60
    while not glob.glob(str(work / f".out.partial-{proc.pid}" / "*.safetensors")):
        assert proc.poll() is None, f"the merge ended before it was caught: {proc.stdout.read()}"
        assert time.monotonic() < deadline, "no partial output appeared"
        time.sleep(0.005)


def test_two_merges_into_one_output(build, tmp_path):
    """The first merge is frozen (SIGSTOP) while it writes: the second exits 2 naming the output and the
    first's pid, and writes nothing. The first is then killed (SIGKILL: no handler runs), which leaves its
    lock file; a third merge reports it as stale, takes it over and writes the whole output."""
    work = tmp_path / "work"
    command = big_merge(build, work)
    inputs = digest(str(work / "base"), str(work / "math"))
    first = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        mid_write(first, work)
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120)
    finally:
        first.kill()
        first.wait()
        first.stdout.close()
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip() == (f"error: output '{work / 'out'}' is being written by another process "
                                     f"(pid {first.pid}); wait for it to finish or choose another output "
                                     f"(its lock: {lock_file(work / 'out')})")
    assert not (work / "out").exists() and partials(work / "out") == [f"{work}/.out.partial-{first.pid}"]
    assert Path(lock_file(work / "out")).read_text().strip() == str(first.pid)  # left behind by SIGKILL
    third = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert (f"warning: output '{work / 'out'}': took over the stale lock of pid {first.pid}, which ended without "
            "releasing it") in third.stderr
    assert glob.glob(str(work / ".out.*")) == []  # the killed merge's partial folder and its lock are gone
    shards = glob.glob(str(work / "out" / "*.safetensors"))
    assert len(shards) > 1 and all(torch.isfinite(t).all() for f in shards for t in load_file(f).values())
    assert digest(str(work / "base"), str(work / "math")) == inputs


def test_the_lock_is_reentrant_in_one_thread_and_refused_to_another(tmp_path):
    out = tmp_path / "out"
    errors = []
    with output_lock(out):
        with atomic_folder(out) as tmp:  # the writing under a command that locked first
            Path(tmp, "x").write_text("x")
        thread = threading.Thread(target=lambda: errors.append(_try_lock(out)))
        thread.start()
        thread.join()
    assert "is being written by another task of this process" in errors[0]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def _try_lock(out) -> str:
    try:
        with output_lock(out):
            return ""
    except OutputError as e:
        return str(e)


def test_stale_lock_file_warns_in_the_library(tmp_path):
    out = tmp_path / "out"
    Path(lock_file(out)).write_text("999999999\n")  # no such process holds it
    with pytest.warns(SurgeryWarning, match="took over the stale lock of pid 999999999"):
        with atomic_folder(out) as tmp:
            Path(tmp, "x").write_text("x")
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_outputs_get_the_mode_of_a_new_file(tmp_path):
    """A library that writes 0600 (transformers' save does) gets the umask's mode like every other file."""
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        with atomic_folder(out) as tmp:
            fd = os.open(os.path.join(tmp, "secret"), os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
            os.mkdir(os.path.join(tmp, "sub"), 0o700)
            Path(tmp, "sub", "plain").write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert modes == {"secret": 0o640, "sub": 0o750, "plain": 0o640}


def test_without_kernel_locks_the_pid_decides(tmp_path, monkeypatch):
    """A filesystem that refuses flock (ENOLCK, as some network mounts do): the lock file's pid is held
    while that process lives, and taken over, as stale, once it has ended."""
    import errno

    import surgery.io.output

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(surgery.io.output.fcntl, "flock", no_locks)
    out = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        Path(lock_file(out)).write_text(f"{sleeper.pid}\n")
        with pytest.raises(OutputError, match=f"being written by another process \\(pid {sleeper.pid}\\)"):
            with atomic_folder(out):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.warns(SurgeryWarning, match=f"took over the stale lock of pid {sleeper.pid}"):
        with atomic_folder(out) as tmp:
            Path(tmp, "x").write_text("x")
    assert sorted(os.listdir(tmp_path)) == ["out"]

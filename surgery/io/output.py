"""The output folder appears atomically: everything is written into a hidden sibling folder, which is
renamed into place only once complete. A failed or interrupted merge leaves nothing at the output path.

An output path being written is locked: a hidden sibling file `.NAME.lock` holds the writer's pid under
an exclusive kernel lock (flock), so a second writer of the same path is refused with the holder's pid,
and the lock goes when its holder ends, however it ends. A lock file left by a killed writer is found
stale (no process holds its lock), reported with the pid it names, and taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from surgery.errors import OutputError, SurgeryWarning

# Files copied beside the weights so that transformers loads the result with its tokenizer.
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)


def check_output_path(out: str, inputs: list[str], force: bool) -> str:
    """Refuse an output that is an input (or inside one, or holds one), or that exists without --force."""
    out = os.path.abspath(out)
    real = os.path.realpath(out)  # compared through links: a linked path to an input is that input
    for path in inputs:
        path = os.path.realpath(path)
        if real == path or real.startswith(path + os.sep) or path.startswith(real + os.sep):
            raise OutputError(f"output {out!r} overlaps input model {path!r}; choose another output folder "
                              "(inputs are never overwritten, even with --force)")
    if os.path.lexists(out) and not force:
        raise OutputError(f"output {out!r} already exists; remove it or pass --force to replace it")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutputError(f"output {out!r} exists and is not a folder; remove it first")
    return out


def check_file_output(path: str, flag: str) -> str:
    """A file output (a PNG) can be written at `path`: its folder exists and it is not a folder. Checked
    before the work whose result it holds; returns the absolute path."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise OutputError(f"{flag} {path}: the folder {folder!r} does not exist; create it or choose another path")
    if os.path.isdir(path):
        raise OutputError(f"{flag} {path}: is a folder; give a file name, e.g. {os.path.join(path, 'plot.png')}")
    return path


@contextmanager
def atomic_folder(out: str, replace: bool = True) -> Iterator[str]:
    """Yield a temporary sibling folder; on success it replaces `out`, on any error it is removed. The
    output's lock is held throughout; with `replace` False an `out` that exists by then is refused."""
    parent, name = os.path.split(os.path.abspath(out))
    with output_lock(out):
        if not replace and os.path.lexists(out):  # made by another writer since the caller checked
            raise OutputError(f"output {out!r} already exists; remove it or pass --force to replace it")
        tmp = os.path.join(parent, f".{name}.partial-{os.getpid()}")
        remove_stale(parent, name)
        os.mkdir(tmp)
        try:
            yield tmp
            _set_modes(tmp)
            _replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _make_parent(out: str) -> str:
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output's parent folder {parent!r} ({e.strerror})") from None
    return parent


def lock_file(out: str) -> str:
    """The lock of output path `out`: its hidden sibling `.NAME.lock`."""
    parent, name = os.path.split(os.path.abspath(out))
    return os.path.join(parent, f".{name}.lock")


_held: dict[str, int] = {}  # lock file -> the thread of this process holding it
_locked: dict[str, int] = {}  # lock file -> the descriptor holding its kernel lock, in this process
_held_guard = threading.Lock()


@contextmanager
def output_lock(out: str) -> Iterator[str]:
    """Hold the exclusive write lock of the output path `out` (a folder or a file) while the body runs;
    yields its absolute path. Held by another process, or another thread of this one: OutputError naming
    `out` and the holder's pid. Re-entrant in one thread, so a command may lock its output before long
    work (loading, scanning) and the writing under it (`atomic_folder`) takes the same lock again."""
    out, me = os.path.abspath(out), threading.get_ident()
    path = lock_file(out)
    with _held_guard:
        holder = _held.setdefault(path, me)  # claimed by this thread unless another holds it
    if holder != me:
        raise OutputError(f"output {out!r} is being written by another task of this process (pid {os.getpid()}); "
                          "wait for it to finish or choose another output")
    if path in _locked:  # this thread holds it already
        yield out
        return
    try:
        fd = _take(path, out)
    except BaseException:
        with _held_guard:
            del _held[path]
        raise
    _locked[path] = fd
    try:
        yield out
    finally:
        if _still_at(fd, path):
            os.unlink(path)  # before the lock goes: a process waiting on this file then sees it is gone
        os.close(fd)
        with _held_guard:
            del _held[path], _locked[path]


def _take(path: str, out: str) -> int:
    """Open, lock and stamp the lock file; the file descriptor holding the lock."""
    _make_parent(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise OutputError(f"cannot create the lock file {path!r} of output {out!r} ({e.strerror}); "
                              "check that the folder is writable") from None
        if not _lock(fd):
            pid = _pid_in(fd)
            os.close(fd)
            raise OutputError(f"output {out!r} is being written by another process (pid {pid}); wait for it to "
                              f"finish or choose another output (its lock: {path})")
        if _still_at(fd, path):
            break
        os.close(fd)  # its holder finished and removed it meanwhile: lock the one at the path now
    stale = _pid_in(fd)
    if stale is not None:  # a holder that ended without removing its lock file (killed)
        warnings.warn(f"output {out!r}: took over the stale lock of pid {stale}, which ended without releasing it "
                      "(killed?)", SurgeryWarning, stacklevel=4)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _lock(fd: int) -> bool:
    """Take the kernel lock of `fd` without waiting; False when another process holds it. On a filesystem
    without kernel locks (some network mounts) the pid in the file decides: held while that process lives."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        pid = _pid_in(fd)
        return pid is None or pid == os.getpid() or not _alive(pid)


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _still_at(fd: int, path: str) -> bool:
    """The locked file is still the one at `path` (not unlinked by a holder that finished meanwhile)."""
    try:
        at = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (at.st_dev, at.st_ino) == (mine.st_dev, mine.st_ino)


def _set_modes(folder: str) -> None:
    """Give every file and folder written into `folder` the mode a newly created one gets (the umask
    applied to 0666 and 0777), whatever mode the library that wrote it chose (some write 0600)."""
    probe = os.path.join(folder, ".mode-probe")
    with open(probe, "w"):
        pass
    file_mode, folder_mode = os.stat(probe).st_mode & 0o777, os.stat(folder).st_mode & 0o777
    os.remove(probe)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), folder_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


def remove_stale(parent: str, name: str) -> None:
    """Remove partial folders left by killed runs (their process is gone) for this output name."""
    prefix = f".{name}.partial-"
    for entry in os.listdir(parent):
        if entry.startswith(prefix) and entry[len(prefix):].isdigit() and not _alive(int(entry[len(prefix):])):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    shutil.rmtree(os.path.join(parent, f"{prefix}{os.getpid()}"), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace(tmp: str, out: str) -> None:
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    old = tmp.replace(".partial-", ".old-")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def copy_side_files(source: str, dest: str, names: tuple[str, ...]) -> list[str]:
    """Copy those of `names` that exist in `source`; returns the names copied."""
    copied = []
    for name in names:
        src = os.path.join(source, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(dest, name))
            copied.append(name)
    return copied


def write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")

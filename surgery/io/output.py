"""The output folder (or file) appears atomically: everything is written into a hidden sibling, which
is renamed into place only once complete. A failed or interrupted merge leaves nothing at the output path.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from surgery.errors import OutputError

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


def check_output_file(out: str, inputs: list[str], force: bool) -> str:
    """As `check_output_path`, for an output that is one file (a GGUF file)."""
    out = os.path.abspath(out)
    real = os.path.realpath(out)
    for path in inputs:
        path = os.path.realpath(path)
        if real == path or real.startswith(path + os.sep) or path.startswith(real + os.sep):
            raise OutputError(f"output {out!r} overlaps input model {path!r}; choose another output file "
                              "(inputs are never overwritten, even with --force)")
    if os.path.isdir(out):
        raise OutputError(f"output {out!r} is a folder; give the path of the file to write, e.g. {out}/model.gguf")
    if os.path.lexists(out) and not force:
        raise OutputError(f"output {out!r} already exists; remove it or pass --force to replace it")
    return out


@contextmanager
def atomic_file(out: str) -> Iterator[str]:
    """Yield a temporary sibling file path; on success it replaces `out`, on any error it is removed."""
    parent, name = os.path.split(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output's parent folder {parent!r} ({e.strerror})") from None
    remove_stale(parent, name)
    tmp = os.path.join(parent, f".{name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


@contextmanager
def atomic_folder(out: str) -> Iterator[str]:
    """Yield a temporary sibling folder; on success it replaces `out`, on any error it is removed."""
    parent, name = os.path.split(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output's parent folder {parent!r} ({e.strerror})") from None
    tmp = os.path.join(parent, f".{name}.partial-{os.getpid()}")
    remove_stale(parent, name)
    os.mkdir(tmp)
    try:
        yield tmp
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale(parent: str, name: str) -> None:
    """Remove partial folders left by killed runs (their process is gone) for this output name."""
    prefix = f".{name}.partial-"
    for entry in os.listdir(parent):
        if entry.startswith(prefix) and entry[len(prefix):].isdigit() and not _alive(int(entry[len(prefix):])):
            _remove(os.path.join(parent, entry))
    _remove(os.path.join(parent, f"{prefix}{os.getpid()}"))


def _remove(path: str) -> None:
    """A partial folder or file (a GGUF output is one file)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


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

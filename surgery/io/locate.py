"""Finding model folders: a local path (relative to the current folder, as mergekit does), or a
Hugging Face Hub id resolved through the local hub cache (`HF_HOME`) or, when online, a download of
the safetensors, config and tokenizer files only.
"""

from __future__ import annotations

import os
import re

from surgery.errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.safetensors", "*.json", "tokenizer.model", "*.txt", "*.jinja"]


def resolve_path(ref: str, root: str | None = None) -> str:
    """A local folder for `ref` (relative to `root`, default the current folder); else a Hub id."""
    local = os.path.join(root or os.getcwd(), os.path.expanduser(ref))
    if os.path.isdir(local):
        return os.path.abspath(local)
    if HUB_ID.match(ref) and not os.path.exists(os.path.join(root or os.getcwd(), ref.split("/")[0])):
        return _from_hub(ref)
    raise InputError(f"model folder {ref!r} does not exist "
                     f"(relative paths are read from {os.path.abspath(root or os.getcwd())!r})")


def _from_hub(repo: str) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise InputError(f"model {repo!r} is not a local folder and huggingface_hub is not installed") from None
    try:
        return snapshot_download(repo, allow_patterns=HUB_FILES)
    except Exception as e:  # noqa: BLE001 - the Hub client's exception types vary between its versions
        # offline without a cached copy, unknown repo, gated repo, ...: its own errors, its HTTP library's, OSError
        raise InputError(f"model {repo!r} is not a local folder and could not be fetched from the Hub "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "download it first or give a local path") from None



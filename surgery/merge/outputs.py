"""Where a plan's tensors go: a Hugging Face model folder (safetensors shards, config, tokenizer) or one
GGUF file that llama.cpp loads. Each output checks its path against the inputs, appears atomically,
and takes the engine's blocks in plan order through a writer with `write(name, block)`, `finish()`
and `abort()`; a writer runs in a thread of its own (`QueuedWriter`), so the next block is merged
while this one is encoded and written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from surgery import __version__
from surgery.errors import InputError, OutputError
from surgery.io.format import num_rows
from surgery.io.gguf_format import STRING, Typed
from surgery.io.output import (
    CONFIG_FILES,
    TOKENIZER_FILES,
    atomic_file,
    atomic_folder,
    check_output_file,
    check_output_path,
    copy_side_files,
    write_json,
)
from surgery.io.writer import QueuedWriter, ShardWriter, plan_shards
from surgery.merge.card import Card, write_card
from surgery.merge.plan import MergePlan
from surgery.vocab.plan import write_vocabulary
from surgery.vocab.tokenizer_files import write_chat_template


def provenance(plan: MergePlan) -> dict[str, str]:
    """Stored in every shard's safetensors metadata (and a GGUF file's): what made these weights."""
    return {
        "format": "pt",
        "surgery.version": __version__,
        "surgery.method": plan.method.name,
        "surgery.spec_sha256": plan.spec.digest(),
        "surgery.spec": plan.spec.canonical_json(),
        "surgery.models": ",".join(f"{k}={v.path}" for k, v in plan.folders.items()),
        **plan.provenance,
    }


def write_side_files(plan: MergePlan, folder: str) -> None:
    """config.json (layer count updated), generation config, tokenizer files and chat template."""
    config_source = plan.folders[plan.config_model].side_folder
    copy_side_files(config_source, folder, CONFIG_FILES[1:])
    write_json(os.path.join(folder, "config.json"), plan.config)
    copy_side_files(plan.tokenizer_path, folder, TOKENIZER_FILES)
    if plan.vocab is not None:
        write_vocabulary(plan.vocab, folder, plan.config_model)  # union tokenizer, remapped token ids
    if plan.chat_template:
        write_chat_template(folder, plan.chat_template)


@dataclass(frozen=True)
class FolderOutput:
    """A Hugging Face model folder: sharded safetensors with the provenance, then config and tokenizer."""

    shard_size: int

    def check(self, out: str, inputs: list[str], force: bool) -> str:
        return check_output_path(out, inputs, force)

    @contextmanager
    def open(self, plan: MergePlan, out: str, replace: bool, card: Card | None) -> Iterator[QueuedWriter]:
        entries = [(j.name, j.dtype, j.shape) for j in plan.jobs]
        with atomic_folder(out, replace=replace) as tmp:
            writer = QueuedWriter(ShardWriter(tmp, plan_shards(entries, self.shard_size), provenance(plan)))
            try:
                yield writer
            finally:
                writer.abort()
            try:
                write_side_files(plan, tmp)
                if card is not None:
                    write_card(tmp, card)
            except OSError as e:  # e.g. the disk fills up after the last shard
                raise OutputError(f"{out}: cannot write the config and tokenizer files ({e.strerror}); "
                                  "nothing was written there") from None


@dataclass(frozen=True)
class GGUFOutput:
    """One GGUF file: llama.cpp's architecture keys, the tokenizer, the provenance, then the tensors."""

    quant: str

    def check(self, out: str, inputs: list[str], force: bool) -> str:
        return check_output_file(out, inputs, force)

    @contextmanager
    def open(self, plan: MergePlan, out: str, replace: bool, card: Card | None) -> Iterator[QueuedWriter]:
        """One file: no room for a model card beside it (`card` is ignored)."""
        from surgery.io.gguf_writer import GGUFFileWriter

        metadata, entries = gguf_layout(plan, self.quant, os.path.basename(out))
        with atomic_file(out, replace=replace) as tmp, open(tmp, "wb") as f:
            writer = QueuedWriter(GGUFFileWriter(f, metadata, entries))
            try:
                yield writer
            finally:
                writer.abort()


def gguf_layout(plan: MergePlan, quant: str, name: str) -> tuple[dict[str, Typed], list]:
    """Every key-value pair and tensor entry of the GGUF file, checked before a byte is written."""
    from surgery.io.gguf_arch import for_model_type, name_map, rotary_heads
    from surgery.io.gguf_config import hyperparameters
    from surgery.io.gguf_vocab import carried_keys, tokenizer_keys
    from surgery.io.gguf_writer import Entry, tensor_type

    config, where = plan.config, plan.folders[plan.config_model].path
    arch = for_model_type(str(config.get("model_type")), where)
    try:
        metadata = hyperparameters(config, arch, quant, name.removesuffix(".gguf"), where)
    except KeyError as e:
        raise InputError(f"{where}: config.json lacks {e.args[0]!r}, which a GGUF file needs") from None
    rows = _vocab_rows(plan, config)
    with tempfile.TemporaryDirectory(prefix="surgery-gguf-out-") as side:
        write_side_files(plan, side)  # the output's own tokenizer: vocabulary surgery, chat_template
        same_vocabulary = plan.vocab is None or plan.vocab.tokenizer is None
        keys = (same_vocabulary and carried_keys(plan.tokenizer_path, rows)) or tokenizer_keys(side, config, rows)
        if plan.chat_template:
            keys["tokenizer.chat_template"] = Typed(STRING, plan.chat_template)
    metadata.update(keys)
    metadata.update({k: Typed(STRING, v) for k, v in provenance(plan).items() if k.startswith("surgery.")})
    names = name_map(arch, config)
    entries = []
    for job in plan.jobs:
        if job.name not in names or not job.dtype.is_floating_point:
            raise InputError(f"tensor {job.name!r} ({str(job.dtype).removeprefix('torch.')}) has no place in a "
                             f"llama.cpp {arch.gguf} file; GGUF output needs the model's own tensors only")
        heads = rotary_heads(arch, names[job.name], config)
        head_rows = (num_rows(job.shape) if len(job.shape) > 1 else job.shape[0]) // heads if heads else 0
        entries.append(Entry(names[job.name], job.name, tuple(reversed(job.shape)), tensor_type(job.shape, quant),
                             head_rows))
    return metadata, entries


def _vocab_rows(plan: MergePlan, config: dict) -> int:
    embeds = [j.shape[0] for j in plan.jobs if j.name.endswith("embed_tokens.weight")]
    return embeds[0] if embeds else int(config["vocab_size"])


OUTPUTS = {  # --format -> the output, from the engine's options
    "safetensors": lambda options: FolderOutput(options.shard_size),
    "gguf": lambda options: GGUFOutput(options.quant),
}

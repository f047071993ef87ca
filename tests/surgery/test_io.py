"""Reading model folders (single-file, sharded, damaged, pickle-only) and writing merged ones
(shards under the cap, index, provenance metadata, a folder transformers loads, tied embeddings)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import surgery
from surgery.demo.tiny import CHATML
from surgery.errors import InputError
from surgery.io.format import build_header
from surgery.io.reader import ModelFolder
from surgery.io.writer import ShardWriter, plan_shards
from surgery.merge.engine import Options, run_merge
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec

WEIGHTS = "model.safetensors"
IDS = torch.tensor([[5, 9, 14, 20, 7, 33, 2]])


def copy_model(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def merge(spec: dict, out: str, **options) -> str:
    return run_merge(plan_merge(parse_spec(spec), "spec.yaml"), out, Options(**options))


def shard_files(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))


def load_all(folder: str) -> dict[str, torch.Tensor]:
    out = {}
    for f in shard_files(folder):
        out.update(load_file(os.path.join(folder, f)))
    return out


# ---- reader --------------------------------------------------------------------------------------

def test_single_file_headers_and_reads_match_safetensors(llama):
    folder = ModelFolder(llama["base"])
    ref = load_file(os.path.join(llama["base"], WEIGHTS))
    assert {n: (i.shape, i.dtype) for n, i in folder.tensors.items()} == \
        {n: (tuple(t.shape), t.dtype) for n, t in ref.items()}
    assert {i.file for i in folder.tensors.values()} == {os.path.join(llama["base"], WEIGHTS)}
    for name, t in ref.items():
        assert torch.equal(folder.read(name), t), name


@pytest.mark.parametrize("family", ["llama", "llama_sharded", "gpt2", "llama_bf16"])
def test_row_blocks_equal_full_reads(family, request):
    """Rows [r0, r1) read one block at a time concatenate to the full tensor, in its stored dtype."""
    folder = ModelFolder(request.getfixturevalue(family)["math"])
    for name, info in folder.tensors.items():
        full = folder.read(name)
        assert full.dtype == info.dtype and tuple(full.shape) == info.shape
        if len(info.shape) < 2:
            assert torch.equal(folder.read(name, (0, 1)), full)
            continue
        for step in (1, 3, info.shape[0]):
            blocks = [folder.read(name, (r, min(r + step, info.shape[0]))) for r in range(0, info.shape[0], step)]
            assert torch.equal(torch.cat(blocks), full), (name, step)


def test_sharded_folder_reads_the_same_weights(llama, llama_sharded):
    """The sharded family is the single-file one (same seeds) saved with a 20 KB cap and an index."""
    sharded, single = ModelFolder(llama_sharded["code"]), ModelFolder(llama["code"])
    assert os.path.exists(os.path.join(llama_sharded["code"], "model.safetensors.index.json"))
    assert len({i.file for i in sharded.tensors.values()}) > 1
    assert sharded.tensors.keys() == single.tensors.keys()
    for name in single.tensors:
        assert torch.equal(sharded.read(name), single.read(name)), name


def _cut(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("keep", [4, 40, -100], ids=["no-header", "inside-header", "inside-data"])
def test_truncated_file_is_refused_naming_it(llama, tmp_path, keep):
    folder = copy_model(llama["base"], tmp_path / "m")
    path = os.path.join(folder, WEIGHTS)
    _cut(path, keep if keep > 0 else os.path.getsize(path) + keep)
    with pytest.raises(InputError, match="truncated|corrupt") as e:
        ModelFolder(folder)
    assert path in str(e.value)


def test_truncated_data_names_the_tensor(llama, tmp_path):
    folder = copy_model(llama["base"], tmp_path / "m")
    path = os.path.join(folder, WEIGHTS)
    _cut(path, os.path.getsize(path) - 100)
    with pytest.raises(InputError, match=r"truncated: tensor '[\w.]+' ends at byte \d+ but the file has \d+"):
        ModelFolder(folder)


def _patch_header(path: str, edit) -> None:
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = edit(data[8:8 + n])
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data[8 + n:])


@pytest.mark.parametrize("damage", ["not-json", "bad-dtype", "bad-offsets", "huge-length"])
def test_corrupt_header_is_refused_naming_it(llama, tmp_path, damage):
    folder = copy_model(llama["base"], tmp_path / "m")
    path = os.path.join(folder, WEIGHTS)
    if damage == "not-json":
        _patch_header(path, lambda h: b"\xff" + h[1:])
    elif damage == "bad-dtype":
        _patch_header(path, lambda h: h.replace(b'"F32"', b'"Q7"', 1))
    elif damage == "bad-offsets":
        _patch_header(path, lambda h: json.dumps({**json.loads(h), "model.norm.weight": {
            "dtype": "F32", "shape": [32], "data_offsets": [0, 12]}}).encode())
    else:
        with open(path, "r+b") as f:
            f.write(struct.pack("<Q", 10**12))
    with pytest.raises(InputError) as e:
        ModelFolder(folder)
    assert path in str(e.value)


K, V = "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"


def _offsets(edit):
    """A header edit applied to the parsed JSON: `edit(header)` changes tensors' entries in place."""
    def patch(raw: bytes) -> bytes:
        header = json.loads(raw)
        edit(header)
        return json.dumps(header).encode()
    return patch


def _k_into_v(h):  # k_proj's offsets point at v_proj's bytes (the shapes are equal): an overlap
    h[K]["data_offsets"] = list(h[V]["data_offsets"])


def _shift_all(h):  # every tensor starts 4 bytes later: a gap before the first, the last runs past the data
    for name, entry in h.items():
        if name != "__metadata__":
            entry["data_offsets"] = [entry["data_offsets"][0] + 4, entry["data_offsets"][1] + 4]


@pytest.mark.parametrize("damage, message", [
    ("overlap", rf"tensors '{K}' and '{V}' overlap: both hold bytes \[\d+, \d+\) of the data"),
    ("gap", r"no tensor holds bytes \[0, 4\) of the data \(before '[\w.]+'\)"),
    ("trailing", r"bytes \[\d+, \d+\) of the data, after the last tensor '[\w.]+', belong to no tensor"),
    ("past-the-end", r"truncated: tensor '[\w.]+' ends at byte \d+ but the file has \d+"),
], ids=["overlap", "gap", "trailing", "past-the-end"])
def test_tensor_byte_ranges_must_tile_the_data(llama, tmp_path, damage, message):
    """Every tensor's bytes are its own, in order, with nothing between them or after the last one, as
    the safetensors library requires: a file it refuses is refused here too, naming the file and tensors."""
    folder = copy_model(llama["base"], tmp_path / "m")
    path = os.path.join(folder, WEIGHTS)
    if damage == "overlap":
        _patch_header(path, _offsets(_k_into_v))
    elif damage == "gap":
        _patch_header(path, _offsets(_shift_all))
        with open(path, "ab") as f:
            f.write(b"\0" * 4)  # the data grows by the gap, so the file is not merely cut short
    elif damage == "trailing":
        with open(path, "ab") as f:
            f.write(b"\0" * 16)
    else:
        _patch_header(path, _offsets(_shift_all))
    with pytest.raises(Exception, match=r"(?i)invalid|incomplete|offset|metadata"):  # the reference refuses it
        with safe_open(path, "pt") as f:
            [f.get_tensor(k) for k in f.keys()]
    with pytest.raises(InputError, match=message) as e:
        ModelFolder(folder)
    assert str(e.value).startswith(f"{path}: ")


def test_tensors_stored_out_of_name_order_are_accepted(llama, tmp_path):
    """Offsets need not follow the names' order: only the byte ranges, sorted, must tile the data."""
    folder = copy_model(llama["base"], tmp_path / "m")
    path = os.path.join(folder, WEIGHTS)
    tensors = {n: t.clone() for n, t in load_file(path).items()}  # copies: the file is rewritten under its map
    names = sorted(tensors, reverse=True)
    header, _ = build_header([(n, tensors[n].dtype, tuple(tensors[n].shape)) for n in names], {"format": "pt"})
    with open(path, "wb") as f:
        f.write(header)
        for n in names:
            f.write(tensors[n].contiguous().view(torch.uint8).numpy().tobytes())
    with safe_open(path, "pt") as f:
        assert sorted(f.keys()) == sorted(names)
    folder_ = ModelFolder(folder)
    assert all(torch.equal(folder_.read(n), t) for n, t in tensors.items())


def test_truncated_shard_is_named(llama_sharded, tmp_path):
    folder = copy_model(llama_sharded["base"], tmp_path / "m")
    last = os.path.join(folder, shard_files(folder)[-1])
    _cut(last, os.path.getsize(last) - 8)
    with pytest.raises(InputError, match="truncated") as e:
        ModelFolder(folder)
    assert last in str(e.value)


def test_index_listing_a_missing_shard(llama_sharded, tmp_path):
    folder = copy_model(llama_sharded["base"], tmp_path / "m")
    gone = shard_files(folder)[0]
    os.remove(os.path.join(folder, gone))
    with pytest.raises(InputError, match="model.safetensors.index.json: lists shard") as e:
        ModelFolder(folder)
    assert gone in str(e.value)


@pytest.fixture
def pickled(llama, tmp_path) -> str:
    """models/math re-saved as pytorch_model.bin (a torch.save'd state dict) beside its config."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(load_file(os.path.join(llama["math"], WEIGHTS)), folder / "pytorch_model.bin")
    for f in os.listdir(llama["math"]):
        if f.endswith((".json", ".jinja")):
            shutil.copy(os.path.join(llama["math"], f), folder / f)
    return str(folder)


def test_pickle_only_folder_refused_without_allow_pickle(pickled):
    with pytest.raises(InputError, match="pytorch_model.bin.*--allow-pickle") as e:
        ModelFolder(pickled)
    assert pickled in str(e.value)


def test_pickle_only_folder_loaded_with_allow_pickle(pickled, llama):
    folder, ref = ModelFolder(pickled, allow_pickle=True), ModelFolder(llama["math"])
    assert {n: (i.shape, i.dtype) for n, i in folder.tensors.items()} == \
        {n: (i.shape, i.dtype) for n, i in ref.tensors.items()}
    for name, info in ref.tensors.items():
        assert torch.equal(folder.read(name), ref.read(name))
        rows = (1, 3) if len(info.shape) > 1 else (0, 1)  # a 1-d tensor is one row
        assert torch.equal(folder.read(name, rows), ref.read(name, rows))


def test_pickle_input_merges_like_its_safetensors_twin(pickled, llama, tmp_path):
    spec = {"merge_method": "linear", "models": [{"model": pickled, "parameters": {"weight": 0.6}},
                                                 {"model": llama["code"], "parameters": {"weight": 0.4}}]}
    with pytest.raises(InputError, match="--allow-pickle"):
        plan_merge(parse_spec(spec), "spec.yaml")
    out = run_merge(plan_merge(parse_spec(spec), "spec.yaml", allow_pickle=True), str(tmp_path / "a"))
    spec["models"][0]["model"] = llama["math"]
    twin = merge(spec, str(tmp_path / "b"))
    a, b = load_all(out), load_all(twin)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- writer --------------------------------------------------------------------------------------

def test_plan_shards_is_greedy_under_the_cap():
    """Sizes 40, 40, 40, 200, 8 bytes with a 100-byte cap: [40, 40] (a third 40 would make 120),
    [40] (200 would pass the cap), [200] (alone, over the cap: a tensor is never split), [8]."""
    f32 = torch.float32
    entries = [("a", f32, (10,)), ("b", f32, (10,)), ("c", f32, (10,)), ("d", f32, (50,)), ("e", f32, (2,))]
    shards = plan_shards(entries, 100)
    assert [[n for n, _, _ in s.entries] for s in shards] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert [s.file for s in shards] == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert [s.file for s in plan_shards(entries, 10**6)] == [WEIGHTS]


def test_writer_streams_row_blocks_and_empty_tensors(tmp_path):
    """Tensors arrive in blocks of rows (an empty one as one empty block); every shard reads back."""
    tensors = {"a": torch.randn(7, 3), "empty": torch.zeros(0, 5), "b": torch.randn(4).bfloat16(),
               "c": torch.arange(12).reshape(6, 2)}
    for cap in (10**6, 1):
        folder = tmp_path / str(cap)
        folder.mkdir()
        writer = ShardWriter(str(folder), plan_shards([(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], cap),
                             {"k": "v"})
        for name, t in tensors.items():
            for block in (torch.split(t, 2) if t.dim() > 1 and t.shape[0] else [t]):
                writer.write(name, block)
        writer.finish()
        back = load_all(str(folder))
        assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
        assert (len(shard_files(str(folder))) > 1) == (cap == 1)


def test_sharded_output_respects_the_cap(llama, tmp_path):
    cap = 20_000
    spec = {"merge_method": "ties", "base_model": llama["base"], "seed": 3,
            "models": [{"model": llama[m], "parameters": {"weight": 1.0, "density": 0.5}} for m in ("math", "code")]}
    out = merge(spec, str(tmp_path / "out"), shard_size=cap)
    files = shard_files(out)
    assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    written = {}
    for f in files:
        tensors = load_file(os.path.join(out, f))
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= cap or len(tensors) == 1, f
        written.update({n: f for n in tensors})
    assert index["weight_map"] == written
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in load_all(out).values())
    assert written.keys() == ModelFolder(llama["base"]).tensors.keys()


def test_every_shard_records_provenance(llama, tmp_path):
    spec = parse_spec({"merge_method": "linear", "models": [{"model": llama["math"], "parameters": {"weight": 1.0}},
                                                            {"model": llama["code"], "parameters": {"weight": 2.0}}]})
    out = run_merge(plan_merge(spec, "spec.yaml"), str(tmp_path / "out"), Options(shard_size=30_000))
    assert len(shard_files(out)) > 1
    for f in shard_files(out):
        with safe_open(os.path.join(out, f), "pt") as st:
            meta = st.metadata()
        assert meta["surgery.version"] == surgery.__version__
        assert meta["surgery.method"] == "linear"
        assert json.loads(meta["surgery.spec"]) == spec.model_dump(mode="json", exclude_none=True)
        assert meta["surgery.spec_sha256"] == hashlib.sha256(meta["surgery.spec"].encode()).hexdigest() == spec.digest()
        assert llama["math"] in meta["surgery.models"] and llama["code"] in meta["surgery.models"]


def test_output_loads_with_transformers(llama, tmp_path):
    """A passthrough of models/math gives back its weights: transformers loads the folder with its
    tokenizer and chat template, and the logits equal the source model's exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge({"merge_method": "passthrough", "models": [{"model": llama["math"]}]}, str(tmp_path / "out"))
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref = AutoModelForCausalLM.from_pretrained(llama["math"])
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, ref(IDS).logits)
    tok, ref_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(llama["math"])
    messages = [{"role": "user", "content": "the way of the water"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\nthe way") and tok.chat_template == CHATML
    assert tok("the way of").input_ids == ref_tok("the way of").input_ids


def test_spec_dtype_and_chat_template(llama, tmp_path):
    """`dtype: bfloat16` casts every tensor and the config's dtype; `chat_template` replaces the base's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    spec = {"merge_method": "task_arithmetic", "base_model": llama["base"], "dtype": "bfloat16",
            "chat_template": template, "models": [{"model": llama["chat"], "parameters": {"weight": 0.5}}]}
    out = merge(spec, str(tmp_path / "out"))
    assert {t.dtype for t in load_all(out).values()} == {torch.bfloat16}
    config = json.load(open(os.path.join(out, "config.json")))
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[user] hi\n"


def test_tied_embeddings_gpt2(gpt2, tmp_path):
    """GPT-2 stores no lm_head (it is the input embedding): none is written, the config keeps the tie,
    and transformers ties the head to the merged embedding."""
    from transformers import AutoModelForCausalLM

    spec = {"merge_method": "ties", "base_model": gpt2["base"],
            "models": [{"model": gpt2[m], "parameters": {"weight": 1.0, "density": 0.5}} for m in ("math", "code")]}
    out = merge(spec, str(tmp_path / "out"))
    written = load_all(out)
    assert not any("lm_head" in n for n in written)
    assert written.keys() == ModelFolder(gpt2["base"]).tensors.keys()
    assert json.load(open(os.path.join(out, "config.json")))["tie_word_embeddings"] is True
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    assert torch.equal(model.lm_head.weight, written["transformer.wte.weight"])
    with torch.no_grad():
        assert torch.isfinite(model(IDS).logits).all()


def test_tied_model_lends_its_embedding_as_lm_head(llama, build, tmp_path):
    """Merging an untied Llama (it stores lm_head) with a tied one (it does not): the tied model's
    input embedding stands in for its head, so lm_head = (math's lm_head + tied's embed_tokens) / 2."""
    tied = build(str(tmp_path / "tied"), "llama", seed=5, tie_word_embeddings=True)
    assert "lm_head.weight" not in ModelFolder(tied).tensors
    spec = {"merge_method": "linear", "models": [{"model": llama["math"], "parameters": {"weight": 1.0}},
                                                 {"model": tied, "parameters": {"weight": 1.0}}]}
    written = load_all(merge(spec, str(tmp_path / "out")))
    head = load_file(os.path.join(llama["math"], WEIGHTS))["lm_head.weight"]
    embed = load_file(os.path.join(tied, WEIGHTS))["model.embed_tokens.weight"]
    assert torch.equal(written["lm_head.weight"], (head + embed) / 2)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc")
def test_no_input_file_stays_open_after_a_merge(llama_sharded, tmp_path):
    def open_inputs() -> list[str]:
        links = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                 if os.path.islink(f"/proc/self/fd/{fd}")]
        return [p for p in links if p.startswith(os.path.dirname(llama_sharded["base"]))]

    spec = {"merge_method": "ties", "base_model": llama_sharded["base"],
            "models": [{"model": llama_sharded["math"], "parameters": {"weight": 1.0, "density": 0.5}}]}
    before = open_inputs()
    merge(spec, str(tmp_path / "out"))
    assert open_inputs() == before

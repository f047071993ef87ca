"""`surgery diff` against independent torch computations on whole tensors (read with the reference
safetensors loader): relative changes, task-vector cosines and sign-conflict shares per tensor, per
layer, per module type and for the whole model, with blocks small enough that every tensor is read
in several pieces. The conflict definition is checked on a case worked by hand."""

from __future__ import annotations

import json
import math
import re
from itertools import combinations

import pytest
import torch

from surgery.diagnose.diff import diff_models, task_sums
from surgery.diagnose.diff_report import grids
from surgery.errors import InputError
from tests.surgery.reference_checkpoints import run_cli, state_dict

BLOCK = 2048  # bytes: the 128 x 32 embedding is read in many blocks


def test_conflict_share_by_hand():
    """Parameters 0, 1 and 3 are contested (two or more nonzero task-vector entries); 0 (+, +, −) and
    1 (−, +) have both signs, 3 (+, +) does not: 2 conflicts out of 3."""
    base = torch.zeros(5)
    models = [base + torch.tensor(t) for t in ([1., -1, 0, 2, 0], [1., 1, 3, 0, 0], [-1., 0, 0, 1, 0])]
    sums = task_sums(base, models)
    assert (sums["contested"], sums["conflicts"]) == (3, 2)
    assert sums["dot:0:1"] == 1 * 1 + (-1) * 1 and sums["t2:1"] == 1 + 1 + 9


def reference(tensors: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, float]:
    """Whole-tensor figures over the concatenation of `names`: base first, then the models."""
    flat = [torch.cat([t[n].double().flatten() for n in names]) for t in tensors]
    base, taus = flat[0], [m - flat[0] for m in flat[1:]]
    out = {f"change {i}": (t.norm() / base.norm()).item() for i, t in enumerate(taus)}
    for i, j in combinations(range(len(taus)), 2):
        out[f"cos {i},{j}"] = (taus[i] @ taus[j] / (taus[i].norm() * taus[j].norm())).item()
    signs = torch.stack([t.sign() for t in taus])  # (N, P)
    nonzero, positive, negative = (signs != 0).sum(0), (signs > 0).any(0), (signs < 0).any(0)
    out["conflicts"] = ((positive & negative).sum() / (nonzero >= 2).sum()).item()
    return out


def ours(d, sums) -> dict[str, float]:
    values = list(d.metrics(sums).values())
    keys = [f"change {i}" for i in range(3)] + [f"cos {i},{j}" for i, j in combinations(range(3), 2)] + ["conflicts"]
    return dict(zip(keys, values))


@pytest.mark.parametrize("family", ["llama", "llama_bf16"])
def test_task_vector_figures_equal_whole_tensor_computations(request, family):
    models = request.getfixturevalue(family)
    d = diff_models([models["math"], models["code"], models["chat"]], models["base"], block_bytes=BLOCK)
    tensors = [state_dict(models[k]) for k in ("base", "math", "code", "chat")]
    names = sorted(tensors[0])
    groups = {"one": ["model.layers.1.mlp.up_proj.weight"], "all": names,
              "layer 0": [n for n in names if ".layers.0." in n], "q": [n for n in names if "q_proj" in n],
              "norm": [n for n in names if "norm" in n]}
    got = {"one": d.tensors["model.layers.1.mlp.up_proj.weight"], "all": d.total(),
           "layer 0": d.group(lambda n: ".layers.0." in n)[True], "q": d.group(lambda n: "q_proj" in n)[True],
           "norm": d.group(lambda n: "norm" in n)[True]}
    for group, members in groups.items():
        want = reference(tensors, members)
        assert ours(d, got[group]) == pytest.approx(want, rel=1e-5, abs=1e-7), group  # float32 task vectors
    if family == "llama_bf16":  # bf16 rounding leaves some entries unchanged: fewer contested parameters
        assert d.total()["contested"] < d.total()["n"]


def test_pairwise_change_without_base(llama, tmp_path):
    result = run_cli("diff", llama["math"], llama["code"], llama["chat"], "--json", "--quiet", "--block-size", "4K")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    tensors = {k: state_dict(llama[k]) for k in ("math", "code", "chat")}
    name = "model.embed_tokens.weight"
    for a, b in combinations(("math", "code", "chat"), 2):
        want = ((tensors[a][name] - tensors[b][name]).double().norm() / tensors[b][name].double().norm()).item()
        assert report["tensors"][name][f"change {a}/{b}"] == pytest.approx(want, rel=1e-6)
    layer1 = [n for n in tensors["math"] if ".layers.1." in n]
    diff2 = sum((tensors["math"][n] - tensors["chat"][n]).double().pow(2).sum() for n in layer1)
    ref2 = sum(tensors["chat"][n].double().pow(2).sum() for n in layer1)
    assert report["layers"]["1"]["change math/chat"] == pytest.approx(math.sqrt(diff2 / ref2), rel=1e-6)
    assert set(report["types"]) == {"embed", "q", "k", "v", "o", "gate", "up", "down", "norm", "head"}


def test_table_and_heat_map(llama, tmp_path):
    png = tmp_path / "map.png"
    result = run_cli("diff", llama["math"], llama["code"], "--base", llama["base"], "--png", png, "--quiet")
    assert result.exit_code == 0, result.output
    assert "sign conflicts" in result.stdout and "model.layers.0.self_attn.q_proj.weight" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not list(tmp_path.glob(".map.png.partial*"))


def test_heat_map_grid_cells(llama):
    d = diff_models([llama["math"], llama["code"]], llama["base"])
    rows, cols, panels = grids(d)
    assert rows == ["0", "1", "other"] and cols[:2] == ["embed", "q"]
    cell = panels["sign conflicts"][1][cols.index("down")]
    assert cell == d.metrics(d.tensors["model.layers.1.mlp.down_proj.weight"])["sign conflicts"]
    assert math.isnan(panels["cos math,code"][0][cols.index("embed")])  # no embedding inside a layer
    t = [state_dict(llama[k])["model.layers.1.mlp.down_proj.weight"].double() for k in ("base", "math", "code")]
    signs = torch.stack([t[1] - t[0], t[2] - t[0]]).sign()
    assert cell == pytest.approx(((signs[0] * signs[1]) < 0).double().mean().item(), rel=1e-9)


def test_skipped_tensors_and_errors(llama, build, tmp_path):
    wide = build(str(tmp_path / "wide"), "llama", seed=3, vocab_size=160)
    d = diff_models([llama["base"], wide])
    assert "shapes differ" in d.skipped["model.embed_tokens.weight"] and "model.norm.weight" in d.tensors
    with pytest.raises(InputError, match="two models"):
        diff_models([llama["base"]])
    result = run_cli("diff", llama["base"], tmp_path / "nope")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_png_into_a_missing_folder_is_refused_before_the_scan(llama, tmp_path, monkeypatch):
    import surgery.diagnose.diff

    def scan(*args, **kwargs):
        raise AssertionError("the models were scanned before the output path was checked")

    monkeypatch.setattr(surgery.diagnose.diff, "run_diff", scan)
    png = tmp_path / "missing" / "map.png"
    result = run_cli("diff", llama["math"], llama["code"], "--png", png, "--quiet")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"error: --png {png}: the folder '{png.parent}' does not exist; create it or "
                                     "choose another path")
    assert not png.parent.exists()


def natural(name: str) -> list:
    """Numbers in a name compared as numbers (an independent statement of natural order)."""
    return [int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name))]


@pytest.fixture(scope="module")
def deep(tmp_path_factory, build) -> dict[str, str]:
    """Twelve layers: string order would put layers.10 and layers.11 before layers.2."""
    root = tmp_path_factory.mktemp("deep")
    size = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=12, num_attention_heads=2, num_key_value_heads=1)
    base = build(str(root / "base"), "llama", seed=0, **size)
    return {"base": base, "tuned": build(str(root / "tuned"), "llama", seed=1, base=base, **size)}


def test_tensors_are_listed_in_natural_order(deep):
    for args, key in ((("inspect", deep["tuned"], "--json"), "tensors"), (("diff", deep["base"], deep["tuned"],
                                                                           "--json", "--quiet"), "tensors")):
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
        listed = json.loads(result.stdout)[key]
        names = [t["name"] for t in listed] if isinstance(listed, list) else list(listed)
        assert names == sorted(names, key=natural) and names != sorted(names), args[0]
        layers = [int(n.split(".")[2]) for n in names if n.startswith("model.layers.")]
        assert layers == sorted(layers) and layers[-1] == 11


def test_cosine_panels_use_the_whole_cosine_range(tmp_path):
    """Cosines within 1e-12 of 1 are one colour on a fixed [-1, 1] scale, with no offset on the colour
    bar (an automatic scale stretched rounding noise over the whole map under a '1e-10+1' offset)."""
    from surgery.diagnose.diff_report import colour_ranges
    from surgery.diagnose.heatmap import heatmap_figure

    panels = {"cos a,b": [[1 - 1e-12, 1.0], [1.0, 1 - 3e-12]], "sign conflicts": [[0.1, 0.2], [0.3, 0.4]],
              "change a": [[0.5, 1.5], [2.5, 0.25]]}
    fig = heatmap_figure(["0", "1"], ["q", "k"], panels, colour_ranges(list(panels)))
    fig.canvas.draw()
    images = {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}
    assert images["cos a,b"].get_clim() == (-1.0, 1.0)
    assert images["sign conflicts"].get_clim() == (0.0, 1.0)
    assert images["change a"].get_clim() == (0.0, 2.5)
    bars = [ax for ax in fig.axes if not ax.images]
    assert all(bar.yaxis.get_offset_text().get_text() == "" for bar in bars)

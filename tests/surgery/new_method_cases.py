"""The merge configs of the methods mergekit 0.1.5 added after the task-vector family, over the tiny
Llama family: shared by the mergekit parity tests and the CUDA tests (which need no mergekit)."""

from __future__ import annotations


def entry(path: str, **params) -> dict:
    return {"model": path, "parameters": params} if params else {"model": path}


GRADIENT = [0.2, 0.8]
FILTERED = [{"filter": "self_attn", "value": 0.3}, {"filter": "mlp", "value": [0.7, 0.4]}, {"value": 0.5}]


def config(method: str, f: dict, models: list[dict], base: bool = True, **params) -> dict:
    spec = {"merge_method": method, "models": models, "parameters": params, "dtype": "float32"}
    return {**spec, "base_model": f["base"]} if base else spec


def pair(f: dict, w1, w2) -> list[dict]:
    return [entry(f["math"], weight=w1), entry(f["code"], weight=w2)]


def three(f: dict) -> list[dict]:
    return [entry(f["math"]), entry(f["code"]), entry(f["chat"])]


CASES = {
    "nuslerp": lambda f: config("nuslerp", f, pair(f, GRADIENT, 0.5), base=False),
    "nuslerp_base_rows": lambda f: config("nuslerp", f, pair(f, 0.6, FILTERED), nuslerp_flatten=False),
    "nuslerp_base_columns": lambda f: config("nuslerp", f, pair(f, 0.6, 0.4), nuslerp_flatten=False,
                                             nuslerp_row_wise=True),
    "nuslerp_columns": lambda f: config("nuslerp", f, pair(f, 0.3, 0.7), base=False, nuslerp_row_wise=True,
                                        nuslerp_flatten=[{"filter": "mlp", "value": False}, {"value": True}]),
    "nuslerp_zero_sum": lambda f: config("nuslerp", f, pair(f, -0.5, 0.5), nuslerp_flatten=False),
    "multislerp": lambda f: config("multislerp", f, pair(f, GRADIENT, 0.5) + [entry(f["chat"], weight=FILTERED)]),
    "multislerp_no_base": lambda f: config("multislerp", f, pair(f, 0.6, 0.4), base=False, normalize_weights=False),
    "karcher": lambda f: config("karcher", f, three(f), base=False,
                                max_iter=[{"filter": "mlp", "value": 3}, {"value": 10}]),
    "karcher_base_input": lambda f: config("karcher", f, three(f)[:2], tol=1e-6),
    "sce": lambda f: config("sce", f, three(f), select_topk=0.3),
    "sce_gradient": lambda f: config("sce", f, three(f)[:2], select_topk=[0.2, 1.0], int8_mask=True),
    "arcee_fusion": lambda f: config("arcee_fusion", f, three(f)[:1]),
    "nearswap": lambda f: config("nearswap", f, three(f)[:1], t=[{"filter": "mlp", "value": 1e-4}, {"value": 3e-4}]),
    "ram": lambda f: config("ram", f, three(f), epsilon=2e-4),
    "ramplus_tl": lambda f: config("ramplus_tl", f, three(f), epsilon=2e-4, r=[0.5, 1.0], alpha=0.9),
}

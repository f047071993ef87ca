"""The merge methods, one module each; the YAML `merge_method` string is the module name."""

from __future__ import annotations

from importlib import import_module

from surgery.merge.methods.method import Method

NAMES = (
    "linear", "model_soup", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp",
    "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "passthrough",
    "nuslerp", "multislerp", "karcher", "sce", "arcee_fusion", "nearswap", "ram", "ramplus_tl",
)

REGISTRY: dict[str, Method] = {name: import_module(f"surgery.merge.methods.{name}").METHOD for name in NAMES}

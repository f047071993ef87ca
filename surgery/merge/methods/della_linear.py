"""DELLA's MagPrune sparsification with a plain weighted sum (https://arxiv.org/abs/2406.11617)."""

from pydantic import Field

from surgery.merge.methods.task_vectors import MagPrune, Shared, task_vector_method


class DellaLinearShared(Shared):
    rescale: bool = Field(True, description="rescale survivors to the task vector's original L1 norm")


METHOD = task_vector_method("della_linear", "magprune", False, DellaLinearShared, MagPrune,
                            "magnitude-ranked random drop, weighted sum", "https://arxiv.org/abs/2406.11617")

"""DARE with a plain weighted sum: drop each task-vector entry with probability 1 - density and
rescale the survivors (Yu et al. 2023, https://arxiv.org/abs/2311.03099). As in mergekit, the rescale
restores each task vector's L1 norm, which equals 1/density in expectation."""

from pydantic import Field

from surgery.merge.methods.task_vectors import Shared, Sparse, task_vector_method


class DareShared(Shared):
    rescale: bool = Field(True, description="rescale survivors to the task vector's original L1 norm")


METHOD = task_vector_method("dare_linear", "random", False, DareShared, Sparse,
                            "random drop and rescale, weighted sum", "https://arxiv.org/abs/2311.03099")

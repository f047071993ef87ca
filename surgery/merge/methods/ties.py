"""TIES-merging: trim each task vector to its largest `density` share, elect a sign per entry, and
average only the entries that agree with it (Yadav et al. 2023, https://arxiv.org/abs/2306.01708)."""

from pydantic import Field

from surgery.merge.methods.task_vectors import Elected, Sparse, task_vector_method


class TiesShared(Elected):
    normalize: bool = Field(True, description="divide by the sum of the weights that agree with the elected sign")


METHOD = task_vector_method("ties", "magnitude", True, TiesShared, Sparse,
                            "trim by magnitude, elect signs, disjoint mean", "https://arxiv.org/abs/2306.01708")

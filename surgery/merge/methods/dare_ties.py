"""DARE sparsification followed by TIES sign election (Yu et al. 2023, https://arxiv.org/abs/2311.03099)."""

from pydantic import Field

from surgery.merge.methods.task_vectors import Elected, Sparse, task_vector_method


class DareTiesShared(Elected):
    rescale: bool = Field(True, description="rescale survivors to the task vector's original L1 norm")


METHOD = task_vector_method("dare_ties", "random", True, DareTiesShared, Sparse,
                            "random drop and rescale, elect signs", "https://arxiv.org/abs/2311.03099")

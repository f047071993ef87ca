"""DELLA: drop entries at random with a keep probability that grows with the entry's magnitude rank
in its row (MagPrune), rescale, then elect signs (Deep et al. 2024, https://arxiv.org/abs/2406.11617)."""

from pydantic import Field

from surgery.merge.methods.task_vectors import Elected, MagPrune, task_vector_method


class DellaShared(Elected):
    normalize: bool = Field(True, description="divide by the sum of the weights that agree with the elected sign")
    rescale: bool = Field(True, description="rescale survivors to the task vector's original L1 norm")


METHOD = task_vector_method("della", "magprune", True, DellaShared, MagPrune,
                            "magnitude-ranked random drop, elect signs", "https://arxiv.org/abs/2406.11617")

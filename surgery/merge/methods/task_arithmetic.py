"""Task arithmetic: base + sum_i w_i (m_i - base); a negative weight subtracts a task vector
(Ilharco et al. 2022, https://arxiv.org/abs/2212.04089)."""

from surgery.merge.methods.method import compat
from surgery.merge.methods.task_vectors import Shared, Weighted, task_vector_method


class TaskArithmeticShared(Shared):
    rescale: bool = compat(False, "the L1 rescale of sparsified task vectors; task arithmetic sparsifies none")


METHOD = task_vector_method("task_arithmetic", "none", False, TaskArithmeticShared, Weighted,
                            "add weighted task vectors to the base", "https://arxiv.org/abs/2212.04089")

"""Task arithmetic: base + sum_i w_i (m_i - base); a negative weight subtracts a task vector
(Ilharco et al. 2022, https://arxiv.org/abs/2212.04089)."""

from surgery.merge.methods.task_vectors import Shared, Weighted, task_vector_method

METHOD = task_vector_method("task_arithmetic", "none", "none", Shared, Weighted,
                            "add weighted task vectors to the base", "https://arxiv.org/abs/2212.04089")

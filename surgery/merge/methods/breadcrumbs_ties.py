"""Model Breadcrumbs sparsification with TIES sign election (https://arxiv.org/abs/2312.06795)."""

from surgery.merge.methods.task_vectors import Elected, Outliers, task_vector_method

METHOD = task_vector_method("breadcrumbs_ties", "outliers", True, Elected, Outliers,
                            "drop small entries and large outliers, elect signs", "https://arxiv.org/abs/2312.06795")

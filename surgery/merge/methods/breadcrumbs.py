"""Model Breadcrumbs: drop both the smallest entries and the largest `gamma` outliers of each task
vector, keeping `density` of it (Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795)."""

from surgery.merge.methods.task_vectors import Outliers, Shared, task_vector_method

METHOD = task_vector_method("breadcrumbs", "outliers", False, Shared, Outliers,
                            "drop small entries and large outliers, weighted sum", "https://arxiv.org/abs/2312.06795")

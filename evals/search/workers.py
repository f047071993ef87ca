"""Ray workers for the evolutionary search: each candidate is one Ray task that merges, scores and deletes
it (`evolve.run_candidate`) with the CPUs and GPU Ray gives it. `ray.init()` starts a local cluster of
`workers` CPUs; an address joins an existing cluster, whose nodes need this package installed and, for
the merges, the input models at the same paths. The only module that imports ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from evals.search.evolve import InProcess, Job, Outcome, run_candidate
from surgery.errors import InputError


class RayWorkers:
    """Candidates as Ray tasks; results come back in the order of the jobs, whatever order they finish in."""

    def __init__(self, workers: int, address: str | None = None, cpus: int = 1, gpus: float = 0.0):
        try:
            import ray
        except ImportError:
            raise InputError("Ray is not installed: pip install 'surgery[ray]', or run with --workers 1 "
                             "(candidates one after another in this process)") from None
        self.ray = ray
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers, 1) * cpus, num_gpus=workers * gpus if gpus else None,
                     include_dashboard=False, log_to_driver=False)
        self.task = ray.remote(num_cpus=cpus, num_gpus=gpus)(run_candidate)

    def map(self, jobs: Sequence[Job], done: Callable[[int], None] = lambda _: None) -> list[Outcome]:
        refs = [self.task.remote(job) for job in jobs]
        index = {ref: i for i, ref in enumerate(refs)}
        out: list[Outcome | None] = [None] * len(jobs)
        pending = list(refs)
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1)
            for ref in ready:
                out[index[ref]] = self._get(ref, pending)
                done(index[ref])
        return out

    def _get(self, ref, pending: list) -> Outcome:
        """The task's outcome; a task's error is raised as itself (a located SurgeryError stays one)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            for other in pending:
                self.ray.cancel(other)
            cause = getattr(e, "cause", None)
            raise (cause if isinstance(cause, Exception) else e) from None

    def close(self) -> None:
        self.ray.shutdown()


def workers_for(count: int, address: str | None, cpus: int, gpus: float) -> InProcess | RayWorkers:
    """In this process for one worker on this machine; Ray tasks for more, or to join a cluster."""
    return RayWorkers(count, address, cpus, gpus) if address or count > 1 else InProcess()

"""The jobs a sweep submitted through submitit: waiting for their results.

submitit sees a job that died without writing its result (scancel, time limit, out of memory)
only through Slurm accounting (``sacct``); without it, it would wait for such a job forever.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from cnnlab import cluster

log = logging.getLogger(__name__)

# How long a job may be missing from squeue without a result before it counts as dead.
VANISH_GRACE_S = 15.0


def wait_for_jobs(todo: list, jobs: list, accounting: bool) -> dict[int, JobReturn]:
    """Each job's JobReturn by job number; a job that died without a result is a failed one.

    ``todo`` holds (number, overrides, run dir) per submitted job. Without Slurm accounting
    (``accounting=False``), a job missing from squeue for ``VANISH_GRACE_S`` is dead.
    """
    if not accounting:
        log.warning(
            "sacct does not answer (no Slurm accounting): a job that dies without a result "
            "(scancel, time limit, out of memory) is reported once it leaves squeue."
        )
    pending = {num: (overrides, job) for (num, overrides, _), job in zip(todo, jobs, strict=True)}
    results: dict[int, JobReturn] = {}
    missing_since: dict[int, float] = {}
    while pending:
        for num, (overrides, job) in list(pending.items()):
            if job.done():
                results[num] = job_result(job, overrides)
                del pending[num]
        if pending and not accounting:
            ids = [job.job_id for _, job in pending.values()]
            queued = cluster.queued_job_ids(ids)
            for num, (overrides, job) in list(pending.items()):
                if queued is None or job.job_id in queued:
                    missing_since.pop(num, None)
                elif time.monotonic() - missing_since.setdefault(num, time.monotonic()) > (
                    VANISH_GRACE_S
                ):
                    message = (
                        f"Slurm job {job.job_id} left the queue without a result (cancelled, "
                        "time limit, out of memory or node failure?); without sacct its end "
                        f"state is unknown. Its log: {job.paths.stderr}"
                    )
                    results[num] = failed(overrides, RuntimeError(message))
                    del pending[num]
        if pending:
            time.sleep(1.0)
    return results


def failed(overrides: list[str], error: BaseException) -> JobReturn:
    """A failed job's JobReturn: Hydra's sweepers raise ``error`` when they read it."""
    return JobReturn(overrides, status=JobStatus.FAILED, _return_value=error)


def job_result(job: Any, overrides: list[str]) -> JobReturn:
    """The JobReturn of a finished job, or a failed one that says how it ended."""
    try:
        return job.results()[0]
    except Exception as err:  # the job died: cancelled, killed, time limit, out of memory
        try:
            state = job.state
        except Exception:
            state = "UNKNOWN"
        lines = [line for line in str(err).splitlines() if line.strip()]
        message = (
            f"Slurm job {job.job_id} failed without a result (state {state}): "
            f"{lines[-1].strip() if lines else err}. Its log: {job.paths.stderr}"
        )
        return failed(overrides, RuntimeError(message))

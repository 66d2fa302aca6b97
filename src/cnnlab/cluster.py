"""What a job knows about the cluster it runs on: its Slurm job, its CPUs, its requeues,
the resources to ask for, and the signals that stop it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf


def slurm_job() -> dict[str, Any] | None:
    """The Slurm job this process runs in (job id, array index, node, rank), or None."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return None
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return {
        "job_id": f"{array_job}_{array_task}" if array_job and array_task else env["SLURM_JOB_ID"],
        "array_job_id": array_job,
        "array_task_id": int(array_task) if array_task else None,
        "node": env.get("SLURMD_NODENAME"),
        "partition": env.get("SLURM_JOB_PARTITION"),
        "ntasks": int(env.get("SLURM_NTASKS", "1")),
        "rank": int(env.get("SLURM_PROCID", "0")),
        "cpus_per_task": int(env["SLURM_CPUS_PER_TASK"]) if "SLURM_CPUS_PER_TASK" in env else None,
        "restart_count": requeue_count(),
    }


def requeue_count() -> int:
    """How often Slurm has requeued this job (preemption, ``scontrol requeue``); 0 outside Slurm."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def allocated_cpus() -> int:
    """The CPUs this process may use: ``SLURM_CPUS_PER_TASK`` in a Slurm job, else its affinity.

    A Slurm cluster without CPU binding (``TaskPlugin=task/none``) shows a job every core of the
    node, so the allocation is the better answer where Slurm states it.
    """
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def sacct_works() -> bool:
    """Whether Slurm accounting answers (submitit needs it to see a job die without a result)."""
    if shutil.which("sacct") is None:
        return False
    try:
        probe = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def _squeue(job_ids: list[str], fields: str) -> list[list[str]] | None:
    """squeue's rows (``fields``: its ``-o`` format) for the array tasks of ``job_ids`` still in
    the queue; None when squeue cannot say."""
    if not job_ids:
        return []
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", fields, "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # squeue refuses ids it has already forgotten
        return [] if "Invalid job id" in out.stderr else None
    return [line.split() for line in out.stdout.splitlines() if line.strip()]


def queued_job_ids(job_ids: list[str]) -> set[str] | None:
    """Which of ``job_ids`` squeue still lists (pending, running, requeued); None if unknown."""
    rows = _squeue(job_ids, "%i")
    return None if rows is None else {row[0] for row in rows}


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job still in the queue (``PENDING``, ``RUNNING``...)."""
    return {row[0]: row[1] for row in _squeue(job_ids, "%i %T") or [] if len(row) == 2}


class StopSignals:
    """SIGTERM and USR2 stop training at the end of the current batch (Lightning's SIGTERM).

    USR2 additionally asks for a requeue. Lightning chains the handler installed here into its
    own SIGTERM handler while ``fit`` runs.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.requeue = False
        self._previous = {
            s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGUSR2)
        }

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = self.received or signum
        if signum == signal.SIGUSR2:
            self.requeue = True
            from cnnlab.interrupts import requested_signal

            # Route USR2 through the graceful SIGTERM stop, unless a stop is under way already
            # (preemption sends SIGTERM then USR2: a second SIGTERM would end the process now).
            if first and requested_signal() is None:
                os.kill(os.getpid(), signal.SIGTERM)

    def wait_for_requeue(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.requeue and time.monotonic() < deadline:
            time.sleep(0.1)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def slurm_gpus(accelerator: str, devices: Any) -> int | None:
    """GPUs per node for a trainer: its device count on ``gpu``/``cuda``, else none requested."""
    return _device_count(devices) if str(accelerator) in ("gpu", "cuda") else None


def slurm_tasks(devices: Any) -> int:
    """Tasks per node: one per trainer device (Lightning's DDP under Slurm needs that)."""
    return _device_count(devices)


def _device_count(devices: Any) -> int:
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        return int(devices)
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    return 1  # "auto" or -1: one device per node unless said otherwise


def register_resolvers() -> None:
    """``${cnnlab_slurm_gpus:...}`` and ``${cnnlab_slurm_tasks:...}`` of the launcher configs."""
    OmegaConf.register_new_resolver("cnnlab_slurm_gpus", slurm_gpus, replace=True)
    OmegaConf.register_new_resolver("cnnlab_slurm_tasks", slurm_tasks, replace=True)


def parallel_jobs(setting: int | str | None, jobs: int | None = None) -> int:
    """Sweep jobs a launcher runs side by side: ``n_jobs`` as given (< 1: one per CPU), or
    ``auto``/None: one per CPU of :func:`allocated_cpus`, and no more than the ``jobs`` to run.

    One job per core: a second job is worth 2x, a second thread 1.6-1.9x to the CIFAR-2 nets on
    a quiet machine, far less on a busy one; the cores of ended jobs pass to the running ones
    (:mod:`cnnlab.thread_share`).
    """
    cores = allocated_cpus()
    if setting in (None, "auto"):
        return max(1, min(cores, jobs or cores))
    count = int(setting)
    return count if count > 0 else cores  # joblib's -1: one per core


def thread_count(setting: int | str | None) -> int:
    """``torch_threads``: a number, None (torch's default), or ``auto``: this process's CPUs
    (its Slurm allocation) divided by the sweep jobs running side by side."""
    import torch

    if setting is None:
        return torch.get_num_threads()
    if setting != "auto":
        return int(setting)
    from hydra.core.hydra_config import HydraConfig

    parallel = 1
    if HydraConfig.initialized():
        parallel = parallel_jobs(HydraConfig.get().launcher.get("n_jobs") or 1)
    return max(1, allocated_cpus() // parallel)

"""``hydra/launcher=parallel``: a sweep's jobs side by side, each in a fork of the launcher.

Hydra's joblib launcher runs jobs in worker processes that import torch, Lightning and
torchmetrics again (~4 s each), more than parallel jobs of small nets gain. Here every job runs
in a fresh ``fork`` of the launching process, which has imported all of it already, exactly as
the basic launcher runs it in-process (same run directory, config record and results),
``n_jobs`` jobs at a time (``auto``: one per core, at most one per job). For each job:

- an error, or a process that dies, fails that job only; the other jobs run, the sweep exits 1;
- SIGINT/SIGTERM to the sweep reach each running job once (jobs run in their own process
  groups, so a terminal's Ctrl-C does not reach them twice): they stop resumably (status
  ``interrupted``), no further job starts, and the sweep exits 130/143; a second signal ends
  the jobs and the sweep at once. Jobs whose launching process dies get SIGTERM (Linux);
- with ``torch_threads=auto`` a job gets ``cores // n_jobs`` threads, and once no job is left
  to start, the running ones take the cores of those that end (:mod:`cnnlab.thread_share`).

The stdlib's pools do not fit: ``ProcessPoolExecutor`` refuses ``fork`` with
``max_tasks_per_child`` and breaks the whole pool when one worker dies, and a reused worker would
carry one job's state (threads, handlers, globals) into the next.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import pickle
import signal
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from cnnlab import cluster
from cnnlab.interrupts import RunInterrupted, signal_name
from cnnlab.job_signals import ForwardedSignals, become_job_process
from cnnlab.launchers import mark_jobs_launched
from cnnlab.run_lifecycle import remove_created_dirs
from cnnlab.thread_share import SHARE_ENV, ThreadShares

log = logging.getLogger(__name__)


@dataclass
class _Job:
    num: int
    overrides: list[str]
    process: Any = None
    results: Connection | None = None  # open until the job's outcome is read
    # what the job's process sent: ("return", JobReturn) or ("interrupted", signum, message)
    outcome: tuple[Any, ...] | None = None
    stopped: bool = False  # ended by the sweep's signal
    # its thread-count pipe's read end, $CNNLAB_THREAD_SHARE, the launcher's write ends
    share: tuple[int, str, list[int]] | None = None


class ForkingLauncher(Launcher):
    """Runs ``n_jobs`` sweep jobs at a time in forked processes (see the module docstring)."""

    def __init__(self, n_jobs: int | str = "auto") -> None:
        if not (n_jobs == "auto" or (isinstance(n_jobs, int) and n_jobs >= 1)):
            print(
                f"cnnlab: error: hydra.launcher.n_jobs={n_jobs} is not valid: give the number "
                "of jobs to run at once (>= 1), or auto (one per core).",
                file=sys.stderr,
            )
            remove_created_dirs()  # the sweep directory, made by OutputDirGuard just before
            raise SystemExit(2)
        self.n_jobs = n_jobs
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [_Job(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        n_jobs = cluster.parallel_jobs(self.n_jobs, len(jobs))
        log.info("Launching %d jobs, %d at a time, in forked processes", len(jobs), n_jobs)
        mark_jobs_launched()
        signum = self._run(deque(jobs), n_jobs)
        stopped = [j for j in jobs if j.stopped or (j.outcome and j.outcome[0] == "interrupted")]
        if signum is not None or stopped:
            first = next((j.outcome for j in stopped if j.outcome), None)
            signum = signum or (first[1] if first else signal.SIGTERM)
            nums = ", ".join(f"#{j.num}" for j in stopped) or "none"
            raise RunInterrupted(signum, f"{signal_name(signum)}: jobs {nums} stopped resumably")
        return [_job_return(j) for j in jobs]

    def _run(self, pending: deque[_Job], n_jobs: int) -> int | None:
        """Run the jobs, ``n_jobs`` at a time; return the signal that stopped the sweep."""
        context = multiprocessing.get_context("fork")
        # What every job imports (the training code, TensorBoard's writer: ~0.1 s), imported
        # once here for all the forks.
        import torch.utils.tensorboard  # noqa: F401

        import cnnlab.build  # noqa: F401

        # Everything imported so far is shared with the forks; kept out of the collector, it
        # stays shared instead of being copied page by page when a fork's gc walks it.
        gc.freeze()
        running: list[_Job] = []
        halted = False  # a job was interrupted: as with the basic launcher, no further job starts
        cores = cluster.allocated_cpus()
        with ForwardedSignals() as stop, ThreadShares(cores) as shares:
            while True:
                while pending and len(running) < n_jobs and stop.signum is None and not halted:
                    job = pending.popleft()
                    log.info("\t#%d : %s", job.num, " ".join(filter_overrides(job.overrides)))
                    job.results, sender = context.Pipe(duplex=False)
                    job.share = (
                        *shares.start(job.num, max(1, cores // n_jobs)),
                        shares.inherited(),
                    )
                    # The launching process has imported torch but run no torch op, so no
                    # thread pool exists that the fork would copy half of: keep it that way.
                    job.process = context.Process(
                        target=self._job_process,
                        args=(job, sender, n_jobs, os.getpid()),
                        daemon=False,
                    )
                    with stop.held():
                        job.process.start()
                        stop.pids.add(job.process.pid)
                    sender.close()
                    os.close(job.share[0])
                    running.append(job)
                if not running:
                    return stop.signum
                # A job's outcome is read as soon as it is sent (a large one fills the pipe
                # before the process can end), then its process is waited for.
                waiting = {(j.results or j.process.sentinel): j for j in running}
                for ready in wait(list(waiting)):
                    job = waiting[ready]
                    if ready is job.results:
                        job.outcome = _receive(job.results)
                        job.results = None
                        halted = halted or bool(job.outcome and job.outcome[0] == "interrupted")
                        continue
                    job.process.join()
                    stop.pids.discard(job.process.pid)
                    running.remove(job)
                    shares.end(job.num)
                    if halted or not pending:
                        shares.spread()
                    job.stopped = stop.signum is not None and job.outcome is None
                    if job.outcome is None and not job.stopped:
                        log.error("#%d ended without a result (%s)", job.num, _how(job.process))

    # ---- in the job's process ---------------------------------------------------------------
    def _job_process(self, job: _Job, sender: Connection, n_jobs: int, launcher: int) -> None:
        become_job_process(launcher)
        for fd in job.share[2] if job.share else ():  # so that the launcher's exit reads as EOF
            os.close(fd)
        outcome: tuple[Any, ...]
        try:
            outcome = ("return", self._run_job(job, n_jobs))
        except RunInterrupted as err:
            outcome = ("interrupted", err.signum, str(err))
        except KeyboardInterrupt:
            outcome = ("interrupted", signal.SIGINT, "SIGINT before the run started")
        except BaseException as err:  # run_job keeps Exceptions in the JobReturn
            outcome = (
                "return",
                JobReturn(job.overrides, status=JobStatus.FAILED, _return_value=err),
            )
        sender.send(_picklable(outcome))
        sender.close()

    def _run_job(self, job: _Job, n_jobs: int) -> JobReturn:
        """The job as Hydra's basic launcher runs it (its config, number and directory)."""
        assert self.hydra_context and self.config and self.task_function
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, job.overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = job.num
            cfg.hydra.job.num = job.num
            cfg.hydra.launcher.n_jobs = n_jobs  # what torch_threads=auto divides the cores by
        os.environ.pop(SHARE_ENV, None)  # not one from the launcher's environment
        if cfg.get("torch_threads") == "auto" and job.share:
            os.environ[SHARE_ENV] = job.share[1]
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


def _picklable(outcome: tuple[Any, ...]) -> tuple[Any, ...]:
    """The outcome, its error replaced by a RuntimeError with the same text if it won't pickle."""
    try:
        pickle.loads(pickle.dumps(outcome))
        return outcome
    except Exception:
        ret = outcome[1]
        err = ret._return_value
        ret._return_value = RuntimeError(f"{type(err).__name__}: {err}")
        return ("return", ret)


def _receive(results: Connection) -> tuple[Any, ...] | None:
    """What the job's own process (a fork of this one, not untrusted input) sent, if anything."""
    try:
        return results.recv()
    except EOFError:  # it died before sending
        return None
    finally:
        results.close()


def _job_return(job: _Job) -> JobReturn:
    if job.outcome is not None:
        return job.outcome[1]
    error = RuntimeError(f"sweep job #{job.num} ended without a result ({_how(job.process)})")
    return JobReturn(job.overrides, status=JobStatus.FAILED, _return_value=error)


def _how(process: Any) -> str:
    code = process.exitcode
    return f"killed by {signal_name(-code)}" if code < 0 else f"exit status {code}"

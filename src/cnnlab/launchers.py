"""cnnlab's submitit launchers (``hydra/launcher=slurm`` and ``submitit_local``).

On top of hydra-submitit-launcher they make a cluster sweep resumable and observable:

- a job that Slurm requeues (preemption, ``scontrol requeue``) or that receives USR2 (Slurm's
  warning before the time limit, submitit's preemption signal) stops at the end of the current
  batch and comes back with ``resume=true``: it continues from its ``last.ckpt``;
- with ``resume=true`` the jobs whose run directory is completed are not submitted at all;
- ``dry_run=true`` prints the sbatch script and submits nothing; ``detach=true`` submits and
  returns (``python -m cnnlab.status <sweep dir>`` follows the jobs);
- each run directory links its job's Slurm logs (``slurm.out``, ``slurm.err``), DDP ranks > 0
  log to ``train.rank<N>.log``, and jobs.json in the sweep directory lists every job;
- without accounting (``sacct``), a job that leaves the queue without a result fails the sweep
  with a message instead of keeping the submitting command waiting forever.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab import cluster
from cnnlab.provenance import COMMAND_ENV, command_line
from cnnlab.rundir import read_metrics, write_json_atomic
from cnnlab.submitted import wait_for_jobs

log = logging.getLogger(__name__)

RESUME = "resume=true"
MANIFEST = "jobs.json"


class _Launched:
    jobs = False
    dry_run = False


def jobs_were_launched() -> bool:
    """Whether this process ran sweep jobs (so an exit status 1 is a failed job, not a config)."""
    return _Launched.jobs


def mark_jobs_launched() -> None:
    """Say that sweep jobs were started (by a launcher or sweeper of cnnlab's)."""
    _Launched.jobs = True


def mark_dry_run() -> None:
    """Say that the launcher only printed what it would submit: no job ran, no sweep exists."""
    _Launched.jobs, _Launched.dry_run = False, True


def was_dry_run() -> bool:
    return _Launched.dry_run


class ResumableSubmitit(BaseSubmititLauncher):
    """The behaviour above; hydra_plugins.cnnlab_plugins binds it to submitit's executors."""

    def __init__(
        self, dry_run: bool = False, detach: bool = False, max_requeues: int = 5, **params: Any
    ) -> None:
        super().__init__(**params)
        self.dry_run = bool(dry_run)
        self.detach = bool(detach)
        self.max_requeues = int(max_requeues)
        self.command = command_line()

    # ---- the submitting process -------------------------------------------------------------
    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        results: dict[int, JobReturn] = {}
        todo: list[tuple[int, list[str], Path]] = []
        for i, overrides in enumerate(job_overrides):
            num, overrides = initial_job_idx + i, list(overrides)
            run_dir, cfg = self._job_run_dir(overrides, num)
            previous = read_metrics(run_dir) if cfg.get("resume") else None
            if previous and previous.get("status") == "completed":
                log.info("\t#%d completed in %s (resume=true): not submitted", num, run_dir)
                value = previous.get(cfg.get("optimized_metric") or "val/acc_best")
                results[num] = JobReturn(overrides, status=JobStatus.COMPLETED, _return_value=value)
            else:
                log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
                todo.append((num, overrides, run_dir))
        if todo and self.dry_run:
            self._print_dry_run(todo)
            mark_dry_run()
            results.update({n: _not_run(o) for n, o, _ in todo})
        elif todo:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            executor = self._executor()
            params = [
                (o, "hydra.sweep.dir", n, f"job_id_for_{n}", _singletons()) for n, o, _ in todo
            ]
            jobs = executor.map_array(self, *zip(*params, strict=True))
            mark_jobs_launched()
            self._write_manifest(sweep_dir, todo, jobs)
            if self.detach:
                print(
                    f"Submitted {len(jobs)} job(s) ({jobs[0].job_id.split('_')[0]}); follow them "
                    f"with: python -m cnnlab.status {sweep_dir}"
                )
                results.update({n: _not_run(o) for n, o, _ in todo})
            else:
                accounting = self._EXECUTOR != "slurm" or cluster.sacct_works()
                results.update(wait_for_jobs(todo, jobs, accounting))
        return [results[initial_job_idx + i] for i in range(len(job_overrides))]

    def _job_config(self, overrides: list[str], num: int) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        return cfg

    @staticmethod
    def _run_dir(cfg: DictConfig) -> Path:
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)

    def _job_run_dir(self, overrides: list[str], num: int) -> tuple[Path, DictConfig]:
        """The job's run directory and config; composing each job's config costs ~0.5 s, so
        it is done only where the job may resume or names its own directory."""
        assert self.config is not None
        default_subdir = (
            OmegaConf.to_container(self.config.hydra.sweep)["subdir"] == "${hydra.job.num}"
        )
        may_resume = self.config.get("resume") or any(o.startswith("resume=") for o in overrides)
        if default_subdir and not may_resume:
            return Path(str(self.config.hydra.sweep.dir)) / str(num), OmegaConf.create({})
        cfg = self._job_config(overrides, num)
        return self._run_dir(cfg), cfg

    def _executor(self) -> Any:
        """The submitit executor, configured as hydra-submitit-launcher configures it."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()}
        )
        return executor

    def _print_dry_run(self, todo: list[tuple[int, list[str], Path]]) -> None:
        lines = [f"# dry run: {len(todo)} job(s), nothing submitted"]
        lines += [f"#   job {n} -> {d}: {' '.join(o)}" for n, o, d in todo]
        if self._EXECUTOR == "slurm":
            from submitit.slurm.slurm import _make_sbatch_string

            slurm = self._executor()._executor
            params = dict(slurm.parameters)
            if len(todo) > 1:
                params["map_count"] = len(todo)
            lines.append(
                _make_sbatch_string(
                    command=slurm._submitit_command_str, folder=slurm.folder, **params
                )
            )
        print("\n".join(lines))

    def _write_manifest(self, sweep_dir: Path, todo: list, jobs: list) -> None:
        path = sweep_dir / MANIFEST
        manifest = json.loads(path.read_text()) if path.is_file() else {"jobs": {}}
        manifest["command"] = self.command
        manifest["executor"] = self._EXECUTOR
        for (num, overrides, run_dir), job in zip(todo, jobs, strict=True):
            manifest["jobs"][str(num)] = {
                "job_id": job.job_id,
                "run_dir": str(run_dir),
                "overrides": overrides,
                "stdout": str(job.paths.stdout),
                "stderr": str(job.paths.stderr),
            }
        write_json_atomic(path, manifest)

    # ---- the job (on the cluster node) ------------------------------------------------------
    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Any],
    ) -> JobReturn:
        import submitit
        from hydra.core.utils import setup_globals

        # Hydra's resolvers (``now`` of the default sweep dir), registered before the job's
        # run directory is resolved here; the submitter's resolved values come with the config.
        setup_globals()
        overrides = list(sweep_overrides)
        if cluster.requeue_count() > 0 and RESUME not in overrides:
            overrides.append(RESUME)  # requeued: continue from last.ckpt
        rank = submitit.JobEnvironment().global_rank
        if rank > 0:  # one log file per DDP rank
            overrides.append(
                "hydra.job_logging.handlers.file.filename="
                f"${{hydra.runtime.output_dir}}/${{hydra.job.name}}.rank{rank}.log"
            )
        os.environ[COMMAND_ENV] = self.command
        run_dir = self._run_dir(self._job_config(overrides, job_num))
        if rank == 0:
            _link_logs(run_dir)
        stop = cluster.StopSignals()
        try:
            result = super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)
        except BaseException:
            if stop.received is None:
                stop.restore()
                raise
        if stop.received is None and (read_metrics(run_dir) or {}).get("status") == "interrupted":
            stop.received = signal.SIGTERM  # a SIGTERM that another handler took
        if stop.received is not None:
            # submitit's preemption sends SIGTERM then USR2: the run may stop before USR2 arrives
            stop.wait_for_requeue(seconds=3.0)
            self._stopped(stop, rank)
        stop.restore()
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's resubmission after a time-out/preemption: the same job with resume=true."""
        import submitit

        overrides, *rest = args
        overrides = [*overrides, RESUME] if RESUME not in overrides else list(overrides)
        return submitit.helpers.DelayedSubmission(self, overrides, *rest, **kwargs)

    def _stopped(self, stop: cluster.StopSignals, rank: int) -> None:
        """After a stop signal: requeue the job (USR2, rank 0) and exit without a result."""
        import submitit

        name = signal.Signals(stop.received or signal.SIGTERM).name
        job = submitit.JobEnvironment().job_id
        if stop.requeue and rank == 0 and self._EXECUTOR == "slurm":
            if cluster.requeue_count() < self.max_requeues:
                # logged first: once requeued, Slurm may kill this process at any moment
                log.warning("%s: job %s stopped and requeued; it resumes from last.ckpt", name, job)
                subprocess.run(["scontrol", "requeue", job], check=False, timeout=60)
            else:
                log.error(
                    "%s: job %s was requeued %d times already (max_requeues)",
                    name,
                    job,
                    self.max_requeues,
                )
        else:
            log.warning("%s: job %s stopped; resume=true continues it from last.ckpt", name, job)
        # No result file: the submitter keeps waiting for the requeued job, or sees it cancelled.
        raise SystemExit(128 + (stop.received or signal.SIGTERM))


def _link_logs(run_dir: Path) -> None:
    """Link the job's Slurm logs from its run directory (slurm.out, slurm.err)."""
    import submitit

    run_dir.mkdir(parents=True, exist_ok=True)
    paths = submitit.JobEnvironment().paths
    for name, target in (("slurm.out", paths.stdout), ("slurm.err", paths.stderr)):
        link = run_dir / name
        if link.is_symlink() or not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to(target)


def _singletons() -> Any:
    from hydra.core.singleton import Singleton

    return Singleton.get_state()


def _not_run(overrides: list[str]) -> JobReturn:
    return JobReturn(overrides, status=JobStatus.COMPLETED, _return_value=None)


cluster.register_resolvers()

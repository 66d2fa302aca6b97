"""Cores handed on between runs that train side by side.

``hydra/launcher=parallel`` (with ``torch_threads=auto``) and ``python -m cnnlab.reproduce
--jobs N`` start each run with ``cores // jobs`` threads. Once no run is left to start, the
runs still going split all the cores, those of the runs that end too: the launcher
(:class:`ThreadShares`, this module, which imports neither torch nor Lightning) writes each
one's new thread count into a pipe whose read end the run inherits (``$CNNLAB_THREAD_SHARE``
names it and the launcher), and the run (:class:`cnnlab.callbacks.FollowThreadShare`, added
to the trainer when that variable is set) switches to it before its next batch. A sweep's
last, often longest, run would otherwise leave cores idle (README, Sweeps: on 2 cores the
small CIFAR-2 nets train 1.6x faster on 2 threads than on 1, the 100-block one 1.9x).

A switch changes the order of some floating-point sums (batch norm, reductions), so the last
digits of a run's metrics can depend on when the other runs ended. A run with
``trainer.deterministic=true`` therefore keeps its threads.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from cnnlab.cluster import allocated_cpus

if TYPE_CHECKING:  # the launcher's side runs without torch and Lightning imported
    import lightning as L

SHARE_ENV = "CNNLAB_THREAD_SHARE"


class ThreadShares:
    """The launcher's side: a pipe to each running run, carrying its thread count.

    ``start(key, threads)`` before a run starts gives the read end for the run to inherit (the
    launcher closes its own copy once the run has started); ``end(key)`` when it has ended;
    ``spread()`` once no run is left to start: the running runs that follow their pipe split
    the cores the others leave (the first ones get any remainder). A run that will not follow
    closes its read end (:func:`follow_callbacks`) and keeps its threads. A context manager
    that closes its pipes.
    """

    def __init__(self, cores: int) -> None:
        self.cores = max(1, cores)
        self.pipes: dict[Any, int] = {}  # key -> write end
        self.threads: dict[Any, int] = {}
        self.fixed: set[Any] = set()  # runs that do not follow their pipe

    def __enter__(self) -> ThreadShares:
        return self

    def __exit__(self, *exc: object) -> None:
        for key in list(self.pipes):
            self.end(key)

    def start(self, key: Any, threads: int) -> tuple[int, str]:
        """The pipe's read end for ``key``'s run, and the value of its ``$CNNLAB_THREAD_SHARE``."""
        read, write = os.pipe()
        os.set_blocking(write, False)  # a run that never reads must not stall the launcher
        self.pipes[key], self.threads[key] = write, threads
        return read, f"{read}:{os.getpid()}"

    def end(self, key: Any) -> None:
        self.threads.pop(key, None)
        self.fixed.discard(key)
        if (write := self.pipes.pop(key, None)) is not None:
            os.close(write)

    def spread(self) -> None:
        while True:  # again whenever a run turns out not to follow
            free = self.cores - sum(self.threads[k] for k in self.fixed)
            following = [k for k in self.threads if k not in self.fixed]
            for i, key in enumerate(following):
                share = free // len(following) + (i < free % len(following))
                if share < 1 or share == self.threads[key]:
                    continue
                try:
                    os.write(self.pipes[key], f"{share}\n".encode())
                except BrokenPipeError:  # it closed its end: it keeps its threads
                    self.fixed.add(key)
                    break
                except OSError:  # its pipe is full of unread counts: it is still busy
                    continue
                self.threads[key] = share
            else:
                return

    def inherited(self) -> list[int]:
        """The write ends, which a run forked by the launcher closes (its pipe's EOF then
        tells it that the launcher has gone)."""
        return list(self.pipes.values())


def run_side_by_side(argvs: list[list[str]], jobs: int, threads: int | None) -> list[int]:
    """Run the commands, ``jobs`` at a time; return their exit statuses in order.

    With ``threads`` (each run's share of the cores), once no command is left to start the
    runs still going split all the cores (:mod:`cnnlab.thread_share`).
    """
    codes: dict[int, int] = {}
    pending = deque(enumerate(argvs))
    with ThreadPoolExecutor(max_workers=jobs) as pool, ThreadShares(allocated_cpus()) as shares:
        running = {}
        while pending or running:
            while pending and len(running) < jobs:
                i, argv = pending.popleft()
                env = {k: v for k, v in os.environ.items() if k != SHARE_ENV}
                fds: tuple[int, ...] = ()
                if threads:
                    read, env[SHARE_ENV] = shares.start(i, threads)
                    fds = (read,)
                try:
                    process = subprocess.Popen(argv, env=env, pass_fds=fds)
                finally:
                    for fd in fds:  # the run has its own copy
                        os.close(fd)
                running[pool.submit(process.wait)] = i
            if not pending:
                shares.spread()
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                codes[i] = future.result()
                shares.end(i)
    return [codes[i] for i in range(len(argvs))]


def follow_callbacks(deterministic: bool) -> list[L.Callback]:
    """``[FollowThreadShare]`` when this process's launcher shares cores with it and the run
    need not be deterministic, else ``[]``. Consumes ``$CNNLAB_THREAD_SHARE``, so that the
    processes the run starts (DDP ranks, data workers) do not take it for theirs."""
    fd, _, launcher = os.environ.pop(SHARE_ENV, "").partition(":")
    if not fd.isdigit() or launcher != str(os.getppid()):
        return []
    try:
        if not stat.S_ISFIFO(os.fstat(int(fd)).st_mode):
            return []
        if deterministic:
            os.close(int(fd))  # the launcher then counts this run's threads as fixed
            return []
        from cnnlab.callbacks import FollowThreadShare

        return [FollowThreadShare(int(fd))]
    except OSError:  # not an open descriptor
        return []

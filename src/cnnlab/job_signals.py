"""Signals between a launcher and the job processes it forks (``hydra/launcher=parallel``).

The launcher forwards SIGINT/SIGTERM to its running jobs once (:class:`ForwardedSignals`); a
job's fork becomes a process of its own (:func:`become_job_process`): its own process group, so
that a terminal's Ctrl-C does not reach it twice, and SIGTERM should the launcher die.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

from cnnlab.interrupts import HANDLED, signal_name

log = logging.getLogger(__name__)


class ForwardedSignals:
    """While the jobs run: the first SIGINT/SIGTERM is passed on to every running job and stops
    new ones from starting; a second one ends the jobs and this process at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.pids: set[int] = set()

    def __enter__(self) -> ForwardedSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in HANDLED}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        second = self.signum is not None
        self.signum = self.signum or signum
        if not second:
            log.warning(
                "%s: stopping %d running job(s) at their next safe point; no job starts now",
                signal_name(signum),
                len(self.pids),
            )
        for pid in self.pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signum)
        if second:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Signals wait while a job's process is started: it begins with them blocked, and the
        launcher knows its pid before it forwards one."""
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


def become_job_process(launcher: int) -> None:
    """In a job's fresh fork (signals blocked): its own process group, Python's default signal
    handling, SIGTERM should the launching process (pid ``launcher``) die; then signals are let
    through."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != launcher:  # it died before prctl (it may be pid 1 in a container)
            os.kill(os.getpid(), signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)

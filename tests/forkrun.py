"""``python -m <module> args`` (or ``python script.py args``, ``python -c code``) as a fork of a
process that has imported cnnlab already.

A command-line run costs ~4 s of imports (torch, Lightning, torchmetrics) before it does anything;
the suite runs a few hundred of them. ``run_module`` gives the same observable behaviour as
``subprocess.run([sys.executable, "-m", module, *args], ...)`` (its own process, pid, working
directory, environment, argv, stdin from /dev/null, stdout/stderr, exit status, signals, atexit
handlers) but starts from a fork of a server process (``multiprocessing``'s forkserver) that has
done the imports once. The server never runs a torch op, so no thread pool exists when it forks.

The environment is applied as the interpreter would apply it at start-up: ``PYTHONPATH`` entries
go to the front of ``sys.path`` and a ``sitecustomize.py`` found there is run.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

# Everything a run imports, not only at start-up: the modules a first run loads lazily (the
# training module, TensorBoard's protos, rich, the launchers and sweepers, the other entry points)
# cost each forked child ~0.1 s otherwise. Imports only: no module here runs a torch op. Nothing
# that imports Hydra's core plugins (cnnlab.grid_sweeper): Hydra's plugin scan executes those
# modules anew, and a subclass of the preloaded copy fails in super().
PRELOAD = [
    "torch",
    "lightning",
    "torchmetrics",
    "torchvision",
    "hydra",
    "omegaconf",
    "cnnlab.train",
    "cnnlab.build",
    "cnnlab.callbacks",
    "cnnlab.checkpoint",
    "cnnlab.module",
    "cnnlab.hparams",
    "cnnlab.models.convnet",
    "cnnlab.models.mlp",
    "cnnlab.parallel_launcher",
    "cnnlab.optuna_sweeper",
    "cnnlab.eval",
    "cnnlab.status",
    "cnnlab.summary",
    "cnnlab.reproduce",
    "cnnlab.report.cli",
    "hydra._internal.logging_config",
    "hydra.experimental.callback",
    "hydra.experimental.compose",
    "hydra.experimental.initialize",
    "omegaconf._impl",
    "antlr4.LL1Analyzer",
    "cnnlab.output_guard",
    "torch.utils.serialization.config",
    "torch.utils.tensorboard",
    "tensorboard.plugins.hparams.summary_v2",
    "lightning.pytorch.loggers",
    "rich.syntax",
    "rich.tree",
    "pygments.lexers.data",
    "pygments.styles.monokai",
    "rich._emoji_codes",
    "matplotlib.figure",
]
_context = None


def _ctx() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(module: str, args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """Run ``module`` (a module name, or a path ending in .py: a script) as ``__main__``."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for path, fd in ((out, 1), (err, 2)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    # A fresh interpreter has chosen no start method yet; this child inherited "forkserver",
    # which would start DataLoader workers as cold interpreters (seconds each).
    multiprocessing.set_start_method(None, force=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    added = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = added
    code: int = 0
    try:
        for path in added:
            if (Path(path) / "sitecustomize.py").is_file():
                runpy.run_path(str(Path(path) / "sitecustomize.py"))
        if module == "-c":  # `python -c code args`: the working directory first on sys.path
            sys.argv = ["-c", *args[1:]]
            sys.orig_argv = [sys.executable, "-c", *args]
            sys.path.insert(0, "")
            exec(compile(args[0], "<string>", "exec"), {"__name__": "__main__"})
        elif module.endswith(".py"):  # `python script.py`: its folder first on sys.path
            sys.argv = [module, *args]
            sys.orig_argv = [sys.executable, module, *args]
            sys.path.insert(0, str(Path(module).resolve().parent))
            runpy.run_path(module, run_name="__main__")
        else:
            sys.argv = [module, *args]
            sys.orig_argv = [sys.executable, "-m", module, *args]  # as the interpreter sets it
            sys.modules.pop(module, None)  # as `python -m`: the module runs fresh as __main__
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    # The interpreter's own shutdown order: join threads (and their exit hooks: loky's), then
    # atexit handlers.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class ForkedRun:
    """A started run: ``pid``, ``poll()``, ``wait()``, ``send_signal()``, and its output so far."""

    def __init__(
        self,
        module: str,
        args: list[str],
        cwd: Path,
        env: Mapping[str, str],
        terminal: str | None = None,
    ) -> None:
        flag = [] if module.endswith(".py") or module == "-c" else ["-m"]
        self.args = [sys.executable, *flag, module, *args]
        self._dir = tempfile.TemporaryDirectory(prefix="forkrun-")
        # stdout and stderr: files read by output(), or a terminal (a pseudo-terminal's device)
        self.out_path = Path(terminal or Path(self._dir.name) / "stdout")
        self.err_path = Path(terminal or Path(self._dir.name) / "stderr")
        self._process = _ctx().Process(
            target=_child,
            args=(module, args, str(cwd), dict(env), str(self.out_path), str(self.err_path)),
        )
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self._process.kill()
        self._process.join()

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) written so far."""
        read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
        return read(self.out_path), read(self.err_path)

    def wait_for(self, text: str, timeout: float) -> bool:
        """Wait until ``text`` appears in stdout or stderr, or the run ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in part for part in self.output()):
                return True
            if self.poll() is not None:
                return any(text in part for part in self.output())
            time.sleep(0.05)
        return False

    def result(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        stdout, stderr = self.output()
        self._dir.cleanup()
        return subprocess.CompletedProcess(self.args, code, stdout, stderr)


def start_module(
    module: str,
    args: list[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    terminal: str | None = None,
) -> ForkedRun:
    """Start ``python -m module args``, ``python module args`` where ``module`` is a .py file,
    or ``python -c code args`` where ``module`` is ``"-c"`` and ``args[0]`` the code (see the
    module docstring), its output in files or on ``terminal`` (a device path); returns at once."""
    return ForkedRun(module, list(args), cwd, os.environ if env is None else env, terminal)


def run_module(
    module: str,
    args: list[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """``python -m module args`` to its end, as ``subprocess.run(..., capture_output=True)``."""
    return start_module(module, args, cwd, env).result(timeout)

"""What a run prints: its directory and config at start, a bar on a terminal and one line per
epoch in a log file, the epoch's own metrics, and none of the libraries' chatter."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import termios
from pathlib import Path

from forkrun import run_module, start_module

from conftest import ROOT

TINY = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "torch_threads=1",
]
FAST_DEV = ["print_config=false", "+trainer.fast_dev_run=true", "trainer.accelerator=cpu"]
CHATTER = ("transfer_batch_to_device", "Loading `train_dataloader`", "srun", "Warning")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_piped_output_has_one_line_per_epoch_and_the_run_directory_first(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_module(
        "cnnlab.train",
        [f"hydra.run.dir={run}", *TINY],
        env=_env(),
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "\r" not in out, "no progress bar fragments in a log file"
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if "Run directory:" in line)
    assert str(run) in lines[first]
    assert first < next(i for i, line in enumerate(lines) if "epoch 1/2" in line)
    # the config tree, before training
    assert re.search(r"^├── optimizer", out, re.M) and "lr: 0.001" in out
    epoch_lines = [line for line in lines if re.search(r"\bepoch \d/2\b", line)]
    assert [re.search(r"epoch (\d)/2", line).group(1) for line in epoch_lines] == ["1", "2"]
    metrics = _metrics(run)
    assert f"train/acc={metrics['train/acc']:.4f}" in epoch_lines[-1]
    assert f"val/acc={metrics['val/acc']:.4f}" in epoch_lines[-1]
    for noise in CHATTER:
        assert noise not in out, noise
    assert "Results in" in lines[-1] and str(run) in lines[-1]


def test_print_config_false_prints_no_tree(tmp_path: Path) -> None:
    result = run_module(
        "cnnlab.train",
        [f"hydra.run.dir={tmp_path}", *FAST_DEV],
        env=_env(),
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "├──" not in result.stdout and "Run directory:" in result.stdout + result.stderr


def _run_in_terminal(module: str, args: list[str]) -> str:
    """Run ``python -m module args`` (forked: tests/forkrun.py) with stdout and stderr on a
    pseudo-terminal; return what it showed."""
    leader, follower = pty.openpty()
    # a terminal 40 rows by 160 columns (a pseudo-terminal starts at 0 x 0: no room for a bar)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = start_module(module, args, ROOT, _env(), terminal=os.ttyname(follower))
    # the follower stays open here until the run ends: the run opens it by name, a terminal
    # whose last holder closes it ends the reading
    shown = b""
    while True:
        if select.select([leader], [], [], 0.1)[0]:
            shown += os.read(leader, 65536)
        elif proc.poll() is not None:
            break
    os.close(follower)
    code = proc.wait(timeout=600)
    os.close(leader)
    assert code == 0, shown.decode(errors="replace")[-3000:]
    return shown.decode(errors="replace")


def test_terminal_bar_shows_the_epochs_own_metrics_and_log_lines_on_their_own(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    shown = _run_in_terminal("cnnlab.train", [f"hydra.run.dir={run}", "print_config=false", *TINY])
    screen = _screen_lines(shown)
    # Log lines are never glued to the bar ...
    assert not [line for line in screen if "Epoch" in line and "][INFO]" in line]
    # ... and the finished bar stays once after training, with the epoch's own final train/acc.
    stopped = next(i for i, line in enumerate(screen) if "`Trainer.fit` stopped" in line)
    finished = [line for line in screen[stopped:] if line.startswith("Epoch 1: 100%")]
    assert len(finished) == 1, screen[stopped - 3 :]
    metrics = _metrics(run)
    assert f"train/acc={metrics['train/acc']:.3f}" in finished[0], finished[0]
    for noise in CHATTER:
        assert noise not in shown, noise


def _screen_lines(shown: str) -> list[str]:
    """What stays on screen of each line: the text after its last carriage return."""
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", shown)
    lines = []
    for line in plain.split("\n"):
        pieces = [p for p in line.split("\r") if p.strip()]
        lines.append(pieces[-1].strip() if pieces else "")
    return lines


def test_the_rich_progress_bar_is_an_option(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch.callbacks import RichProgressBar
    from omegaconf import open_dict

    from cnnlab.build import build_trainer
    from cnnlab.config import CONFIG_DIR
    from cnnlab.progress import ProgressBar

    def trainer_with(option: str):
        # composed here, not with conftest's compose_config: its FAST overrides turn the bar off
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", [f"callbacks/progress_bar={option}"], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig.instance().set_config(cfg)
        return build_trainer(cfg)

    assert isinstance(trainer_with("tqdm").progress_bar_callback, ProgressBar)
    assert isinstance(trainer_with("rich").progress_bar_callback, RichProgressBar)

"""Shared test tools: compose the real configs, list what conf/ holds, run training in-process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cnnlab.config import CONFIG_DIR, register_resolvers
from forkrun import run_module

ROOT = Path(__file__).resolve().parents[1]

# Small and quick: every test run is on CPU, with no progress bar.
FAST = [
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "torch_threads=1",
]

Compose = Callable[..., DictConfig]


def compose_config(
    *overrides: str, config: str = "train", output_dir: Path | None = None
) -> DictConfig:
    """The composed ``conf/<config>.yaml``; for ``train`` with :data:`FAST` and, when
    ``output_dir`` is given, Hydra's runtime set as a real run has it (``paths.output_dir``)."""
    GlobalHydra.instance().clear()
    extra = FAST if config == "train" else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(
            config, overrides=[*extra, *overrides], return_hydra_config=output_dir is not None
        )
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
    return cfg


def datamodule(*overrides: str) -> Any:
    """The data module the real config builds (``python -m cnnlab.train data=...``)."""
    from cnnlab.build import build_datamodule

    return build_datamodule(compose_config(*overrides))


@pytest.fixture
def compose(tmp_path: Path) -> Compose:
    """``compose(*overrides, config="train")``: the composed config of a run in ``tmp_path``."""

    def _compose(*overrides: str, config: str = "train") -> DictConfig:
        return compose_config(*overrides, config=config, output_dir=tmp_path)

    return _compose


def readme_block(after: str, language: str) -> str:
    """The first ```language block of the README after the line containing ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start : text.index("```", start)]


def presets(group: str) -> list[str]:
    """The options of a config group: the names of ``conf/<group>/*.yaml``."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def model_expectation(preset: str, conf_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """The ``# expect: params=N input=CxHxW classes=K outputs=O`` line of a model preset.

    Each model preset states the exact trainable parameter count it has on its published input,
    so that adding a model needs no test edit and a changed count fails the suite.
    """
    text = (conf_dir / "model" / f"{preset}.yaml").read_text()
    found = re.search(
        r"^# expect: params=(\d+) input=(\d+)x(\d+)x\d+ classes=(\d+) outputs=(\d+)$", text, re.M
    )
    assert found, (
        f"conf/model/{preset}.yaml needs a line '# expect: params=N input=CxHxW classes=K "
        "outputs=O' (its trainable parameters on its published input)"
    )
    params, channels, size, classes, outputs = (int(g) for g in found.groups())
    return {
        "params": params,
        "outputs": outputs,
        "data": synthetic_data(channels, size, classes),
    }


def synthetic_data(channels: int, size: int, classes: int) -> list[str]:
    """Overrides for the synthetic dataset with images of this shape and ``classes`` classes."""
    return [
        "data=synthetic",
        f"data.in_channels={channels}",
        f"data.image_size={size}",
        f"data.class_names=${{class_range:{classes}}}",
    ]


def offline(cfg: DictConfig) -> list[str]:
    """Overrides that keep a composed model from downloading weights in tests."""
    return ["model.pretrained=false"] if cfg.model.get("pretrained") else []


def train_in_process(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """Run ``cnnlab.train.train`` on the composed config; return its metrics."""
    from cnnlab.train import train

    cfg = compose_config(*overrides, output_dir=output_dir)
    with open_dict(cfg):
        del cfg["hydra"]
    return train(cfg)


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: int = 300) -> Any:
    """``python -m <module> args`` in its own process, as a user would type it (forked after
    the imports: :mod:`forkrun`)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return run_module(module, list(args), cwd=cwd or ROOT, env=env, timeout=timeout)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


SLURM_SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"


def slurm_script(action: str) -> subprocess.CompletedProcess:
    """``scripts/slurm_cluster.sh up|down``."""
    return subprocess.run([str(SLURM_SCRIPT), action], capture_output=True, text=True, timeout=900)


@pytest.fixture
def slurm_cluster(_slurm_session: None, request: pytest.FixtureRequest) -> None:
    """A real one-node Slurm, up for the session; skipped where it cannot be set up.

    Every test using it is in xdist group ``slurm``, so that one worker holds the cluster: one
    that stops it must not do so under another worker's jobs. Fails if that grouping is off."""
    if getattr(request.config.option, "loadgroup", False):  # an xdist worker of --dist loadgroup
        assert request.node.nodeid.endswith("@slurm"), (
            f"{request.node.nodeid} is not in xdist group 'slurm' (mark it; pytest>=9.2 breaks "
            "pytest-xdist's groups: pytest-xdist#1386)"
        )
    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        up = slurm_script("up")  # a test stopped it (the README's `slurm_cluster.sh down`)
        assert up.returncode == 0, up.stdout + up.stderr


@pytest.fixture(autouse=True, scope="session")
def _resolvers() -> None:
    """cnnlab's resolvers and data schemas, in the processes that run tests: registering them
    imports Lightning, which the xdist controller, running no test, is spared at start-up."""
    register_resolvers()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that share one worker (``xdist_group``: the Slurm cluster, the reproduction,
    the benchmarks, the install) come first, the longest group first, then the other ``slow``
    tests, so that the short ones fill the end and both workers finish together; the README's
    ``slurm_cluster.sh down`` runs after every other test of the cluster."""
    order = ("slurm", "reproduce", "bench", "tensorboard", "packaging")

    def rank(item: pytest.Item) -> tuple[int, bool]:
        groups = [m.args[0] for m in item.iter_markers("xdist_group") if m.args]
        group = min((order.index(g) for g in groups if g in order), default=len(order))
        return group, item.get_closest_marker("slow") is None

    items.sort(key=rank)  # stable: the collection order within each group
    last = [i for i in items if "slurm_cluster.sh down" in i.nodeid]
    items[:] = [i for i in items if i not in last] + last


@pytest.fixture(scope="session")
def _slurm_session() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the Slurm test cluster is set up as root (scripts/slurm_cluster.sh)")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        pytest.skip("no Slurm installed and no apt-get to install it")
    up = slurm_script("up")
    if up.returncode == 3:  # Slurm's packages are missing and apt-get cannot install them
        pytest.skip(up.stderr.strip())
    assert up.returncode == 0, up.stdout + up.stderr
    yield
    slurm_script("down")

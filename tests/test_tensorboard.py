"""TensorBoard shows what a sweep varied: read back from the event files, the HParams API, and
(when chromium and playwright are installed) the HParams table in a headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forkrun import run_module

from conftest import ROOT, compose_config

# One worker builds the sweep and the TensorBoard servers once (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("tensorboard")

SWEPT = ["data.batch_size", "optimizer.lr", "seed"]
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "torch_threads=1",
    "print_config=false",
]
FINAL_METRICS = ["hp/test/acc", "hp/test/loss", "hp/train/acc", "hp/val/acc", "hp/val/acc_best"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _train(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = run_module(
        "cnnlab.train",
        [*args, *TINY],
        cwd=cwd,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


@pytest.fixture(scope="session")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``outputs/`` holding a 2x2x2 sweep and one single run with other values."""
    cwd = tmp_path_factory.mktemp("project")
    log_dir = cwd / "outputs"
    sweep = ["data.batch_size=32,64", "optimizer.lr=0.01,0.003", "seed=1,2"]
    _train(["-m", *sweep, "tags=[study]"], cwd)
    _train([f"hydra.run.dir={log_dir}/runs/single", "optimizer.lr=0.02", "tags=[study]"], cwd)
    return log_dir


def _sweep_dir(outputs: Path) -> Path:
    (sweep,) = (outputs / "multiruns").glob("*/*")
    return sweep


def _multiplexer(logdir: Path) -> Any:
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return mux


def test_runs_are_named_after_their_directories(outputs: Path) -> None:
    mux = _multiplexer(_sweep_dir(outputs))
    runs = set(mux.Runs())
    assert {str(i) for i in range(8)} <= runs
    assert {f"{i}/hparams" for i in range(8)} <= runs
    assert not any("tensorboard" in r for r in runs)
    scalars = set(mux.Runs()["0"]["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc"} <= scalars


def test_event_files_hold_each_runs_hparams_and_final_metrics_but_no_experiment(
    outputs: Path,
) -> None:
    from tensorboard.plugins.hparams import metadata

    mux = _multiplexer(outputs)
    content = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    # An experiment summary would fix the columns for the whole logdir to one run's keys.
    assert not any(metadata.EXPERIMENT_TAG in tags for tags in content.values())
    sessions = {
        run: metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        for run, tags in content.items()
        if metadata.SESSION_START_INFO_TAG in tags
    }
    assert len(sessions) == 9
    values = {name: set() for name in SWEPT}
    for run, start in sessions.items():
        hparams = dict(start.hparams)
        for name in SWEPT:
            value = hparams[name]
            values[name].add(value.number_value)
        assert not [k for k in hparams if k.endswith("_target_")]
        assert "trainer.default_root_dir" not in hparams
        assert "data.seed" not in hparams  # an interpolation of seed
        assert hparams["model"].string_value == "small_cnn"
        assert hparams["tags"].string_value == '["study"]'
        assert set(mux.Runs()[run]["scalars"]) == set(FINAL_METRICS)
        assert start.group_name == run.removesuffix("/hparams")
    assert values == {
        "data.batch_size": {32.0, 64.0},
        "optimizer.lr": {0.01, 0.003, 0.02},
        "seed": {1.0, 2.0, 42.0},
    }
    single = mux.Tensors("runs/single/hparams", metadata.SESSION_END_INFO_TAG)
    assert single, "the session end (status) is recorded"
    metrics = json.loads((outputs / "runs" / "single" / "metrics.json").read_text())
    (event,) = mux.Scalars("runs/single/hparams", "hp/val/acc_best")
    assert event.value == pytest.approx(metrics["val/acc_best"])


def test_the_report_shows_the_tags(outputs: Path) -> None:
    from cnnlab.report.runs import find_runs

    runs = find_runs(outputs)
    assert len(runs) == 9 and all(run.tags == ["study"] for run in runs)


def test_run_hparams_drop_plumbing_and_copies_and_keep_tags(tmp_path: Path) -> None:
    from hydra.core.hydra_config import HydraConfig

    from cnnlab.hparams import run_hparams

    cfg = compose_config("tags=[baseline,v2]", "model.dropout=0.25", output_dir=tmp_path)
    hparams = run_hparams(cfg, HydraConfig.get().runtime.choices)
    assert hparams["tags"] == '["baseline", "v2"]'
    assert hparams["model.dropout"] == 0.25
    assert hparams["model.channels"] == "[32, 64]"
    assert hparams["optimizer"] == "adam" and hparams["data"] == "digits"
    assert "experiment" in hparams and hparams["experiment"] == "none"
    assert not [k for k in hparams if k.startswith(("paths", "hydra", "logger", "callbacks/"))]
    assert not [k for k in hparams if k.split(".")[-1] in ("_target_", "default_root_dir")]
    # interpolations: copies of other keys (data.seed: ${seed}, model.num_classes: ${data...})
    assert "data.seed" not in hparams and "model.num_classes" not in hparams
    assert all(isinstance(v, bool | int | float | str) for v in hparams.values())


@pytest.fixture(scope="session")
def tensorboard_url(outputs: Path) -> Iterator[callable]:
    servers: list[subprocess.Popen] = []

    def start(logdir: Path) -> str:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)),
                *("--host", "127.0.0.1", "--port", "0"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        servers.append(proc)
        deadline = time.monotonic() + 180
        for line in proc.stdout:  # "TensorBoard 2.x at http://127.0.0.1:PORT/ (Press CTRL+C ...)"
            match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if match or time.monotonic() > deadline:
                break
        assert match, "tensorboard did not start"
        url = match.group(1)
        while time.monotonic() < deadline:  # the runs are loaded in the background
            runs = json.loads(urllib.request.urlopen(f"{url}/data/runs", timeout=30).read())
            if sum(r.endswith("hparams") for r in runs) >= 8:
                return url
            time.sleep(1)
        raise AssertionError(f"tensorboard loaded only {runs}")

    yield start
    for proc in servers:
        proc.terminate()
        proc.wait(timeout=30)


def _experiment(url: str) -> dict:
    request = urllib.request.Request(
        f"{url}/data/plugin/hparams/experiment",
        data=json.dumps({"experimentName": "", "hparamsLimit": 1000}).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(request, timeout=60).read())


@pytest.mark.parametrize("logdir", ["sweep", "outputs"])
def test_hparams_api_lists_the_swept_keys_first(
    outputs: Path, tensorboard_url: callable, logdir: str
) -> None:
    url = tensorboard_url(_sweep_dir(outputs) if logdir == "sweep" else outputs)
    experiment = _experiment(url)
    infos = experiment["hparamInfos"]
    assert [i["name"] for i in infos[:3]] == SWEPT
    assert all(i.get("differs") for i in infos[:3])
    assert not any(i.get("differs") for i in infos[3:])
    assert sorted(m["name"]["tag"] for m in experiment["metricInfos"]) == FINAL_METRICS


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_hparams_table_in_a_browser_shows_the_swept_keys_first(
    outputs: Path, tensorboard_url: callable
) -> None:
    """In TensorBoard over the sweep directory, and over all of outputs/."""
    sync_api = pytest.importorskip("playwright.sync_api")
    urls = [tensorboard_url(_sweep_dir(outputs)), tensorboard_url(outputs)]
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            headers = []
            for url in urls:
                page = browser.new_page()
                page.goto(f"{url}/#hparams")
                # The table's header cells, in column order, pierce the dashboard's shadow DOM.
                cells = page.locator("tf-hparams-table-view vaadin-grid-cell-content")
                cells.filter(has_text="hp/val/acc_best").first.wait_for(timeout=120_000)
                headers.append([c.strip() for c in cells.all_inner_texts()])
                page.close()
        finally:
            browser.close()
    for url, header in zip(urls, headers, strict=True):
        columns = header[header.index("Show Metrics") + 1 :]
        assert columns[:3] == SWEPT, (url, header[:20])
        assert set(FINAL_METRICS) <= set(columns[:12]), url

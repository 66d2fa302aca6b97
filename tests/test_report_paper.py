"""The results page (``python -m cnnlab.report --paper``) from hand-written run directories."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

import pytest

from cnnlab.errors import ConfigError
from cnnlab.report.notes import GENERATED
from cnnlab.report.paper import write_paper
from rundirs import completed, write_run

from conftest import run_cli

JPEG = (
    "data=cifar10_jpeg",
    "paths.data_dir=/d",
    "data.classes=[airplane,bird]",
    "data.class_names=[airplane,bird]",
)


def _row(page: str, name: str) -> list[str]:
    line = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _runs(root: Path) -> None:
    # dlwpt_net: three seeds on the JPEG copy, all inside the band -> aggregated, compared.
    for seed, val in ((123, 0.88), (124, 0.89), (125, 0.90)):
        write_run(
            root,
            "dlwpt_net",
            seed,
            completed(val, best_epoch=seed - 123),
            overrides=JPEG,
            data="cifar10_jpeg",
            val_curve=[0.7, 0.8, val],
        )
    # dlwpt_depth: one seed 5 points below the published 0.90 (3 outside the band), one failed.
    write_run(root, "dlwpt_depth", 123, completed(0.85), val_curve=[0.8, 0.85])
    write_run(
        root,
        "dlwpt_depth",
        124,
        {"status": "failed", "error": "NonFiniteLossError: loss became nan at step 7"},
    )
    # dlwpt_res_deep: killed at epoch 2 (its lock is free), and one still training (live pid).
    killed = write_run(root, "dlwpt_res_deep", 123, {"status": "running"}, val_curve=[0.59, 0.61])
    (killed / ".lock").touch()
    alive = {"status": "running", "pid": os.getpid(), "hostname": socket.gethostname()}
    write_run(root, "dlwpt_res_deep", 124, alive, val_curve=[0.6])
    # nb_mnist_mlp on digits: not MNIST, so never compared with the MNIST figure.
    write_run(root, "nb_mnist_mlp", 42, completed(0.40), overrides=("data=digits",), data="digits")
    # dlwpt_batchnorm measured as the book did (its expected.as_published): a second row, compared
    # too; the same switch on gdl_cnn, whose published figure was not measured so, is not.
    write_run(root, "dlwpt_batchnorm", 123, completed(0.87))
    as_book = ("module.eval_norm=batch", "data.eval_batch_size=64")
    write_run(root, "dlwpt_batchnorm", 123, completed(0.885), overrides=as_book, name="as_book")
    # True as YAML reads it is the published true
    as_notebook = ("module.eval_dropout=True",)
    write_run(root, "dlwpt_dropout", 123, completed(0.87), overrides=as_notebook, name="as_nb")
    write_run(root, "gdl_cnn", 42, completed(0.76), overrides=as_book[:1])
    # another batch size: a data key, but not one that only says which copy was read
    write_run(root, "gdl_mlp", 42, completed(0.5), overrides=("data.batch_size=128",))
    # nb_cats_dogs_cnn run the standard way only: its as-published row waits for its run
    write_run(root, "nb_cats_dogs_cnn", 42, completed(0.5), data="cats_vs_dogs")
    # a fast_dev_run of dlwpt_width: left out of the page.
    write_run(root, "dlwpt_width", 123, completed(0.5), debug="fast_dev_run")


def test_page_has_every_column_aggregates_seeds_and_marks_what_is_not_compared(
    tmp_path: Path,
) -> None:
    root = tmp_path / "reproduce"
    _runs(root)
    page = write_paper(root, tmp_path / "docs" / "RESULTS.md").read_text()
    assert page.startswith(GENERATED)

    net = _row(page, "dlwpt_net")
    assert net[1] == "18,090"
    assert net[2] == "cifar10_jpeg (JPEG copy of CIFAR-10)"
    assert net[3] == "3" and net[4] == "3 completed"
    assert net[5] == "0.9400 ± 0.0100"  # train acc
    assert net[6] == "0.8900 ± 0.0100"  # val acc
    assert net[8] == "0.9000 ± 0.0100 (1, 2, 3)"  # best val with the 1-based epoch of each seed
    assert net[9] == "train 0.93, val 0.89"
    assert net[10] == "+0.00 ± 1.00"
    assert net[11] == "±2 pts" and net[12] == "✓"
    assert net[13] == "5 min"

    depth = _row(page, "dlwpt_depth")
    assert depth[3] == "1" and depth[4] == "1 completed; 1 failed"
    assert depth[10] == "-5.00"
    assert depth[12] == "✗ 3.0 pts outside, 1 seed"
    assert "NonFiniteLossError: loss became nan at step 7" in page

    deep = _row(page, "dlwpt_res_deep")
    assert deep[4] == (
        "1 interrupted at epoch 2/100 (last val 0.6100); 1 running at epoch 1/100 (last val 0.6000)"
    )
    assert deep[10] == "not completed" and deep[12] == ""

    assert _row(page, "dlwpt_batchnorm")[10:13] == ["-2.00", "±2 pts", "✓"]
    as_book = _row(page, "dlwpt_batchnorm (module.eval_norm=batch, data.eval_batch_size=64)")
    assert as_book[10:13] == ["-0.50", "±2 pts", "✓"]
    assert _row(page, "dlwpt_dropout (module.eval_dropout=True)")[10:13] == ["-1.00", "±2 pts", "✓"]
    waiting = _row(page, "nb_cats_dogs_cnn (module.eval_norm=batch, module.eval_dropout=true)")
    assert waiting[3:5] == ["0", "no run yet (make reproduce runs it)"]
    assert waiting[9] == "test 0.566"
    # a run of the as-published variant fills that row (True and true are one value)
    assert "`dlwpt_dropout (module.eval_dropout=true)`" not in page
    assert "`dlwpt_batchnorm (module.eval_norm=batch, data.eval_batch_size=64)` | - |" not in page
    gdl = _row(page, "gdl_cnn (module.eval_norm=batch)")
    assert gdl[10] == "not compared: module.eval_norm differs from the experiment's protocol"
    mlp = _row(page, "gdl_mlp (data.batch_size=128)")
    assert mlp[10] == "not compared: data.batch_size differs from the experiment's protocol"

    digits = _row(page, "nb_mnist_mlp")
    assert "data=digits is not the experiment's data (mnist)" in digits[10]
    assert digits[12] == ""

    resnet = _row(page, "nb_resnet18_transfer")
    assert resnet[4].startswith("no run yet (it needs")
    assert "ResNet-18 ImageNet weights file" in resnet[4]
    assert resnet[9] == "test 0.81"
    assert "dlwpt_width" not in page.split("## DLWPT")[1].split("## MLPT")[0].split("|---|")[1]
    # The exact command of each row and the figures, linked from the page.
    assert "python -m cnnlab.train experiment=dlwpt_net seed=123 torch_threads=1" in page
    for png in ("results_curves_dlwpt.png", "results_cifar2_study.png", "results_params.png"):
        assert f"]({png})" in page
        assert (tmp_path / "docs" / png).read_bytes().startswith(b"\x89PNG")


def test_a_running_status_is_running_while_the_lock_is_held(tmp_path: Path) -> None:
    run = write_run(tmp_path, "dlwpt_res_deep", 123, {"status": "running"}, val_curve=[0.6])
    out = tmp_path / "RESULTS.md"
    with (run / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _row(write_paper(tmp_path, out).read_text(), "dlwpt_res_deep")[4].startswith(
            "1 running at epoch 1/100"
        )
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert _row(write_paper(tmp_path, out).read_text(), "dlwpt_res_deep")[4].startswith(
        "1 interrupted at epoch 1/100"
    )


def test_page_regenerates_byte_identically_and_keeps_the_notes(tmp_path: Path) -> None:
    root = tmp_path / "reproduce"
    _runs(root)
    out = tmp_path / "docs" / "RESULTS.md"
    write_paper(root, out)
    notes = "The gap of `dlwpt_depth`, explained.\n\nSecond paragraph.\n"
    out.write_text(
        out.read_text().replace("<!-- notes:dlwpt -->\n", f"<!-- notes:dlwpt -->\n{notes}")
    )
    first = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    result = run_cli("cnnlab.report", "--paper", str(root), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    second = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert first == second
    assert f"<!-- notes:dlwpt -->\n{notes}<!-- /notes:dlwpt -->" in out.read_text()


def test_a_page_it_did_not_write_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    out = tmp_path / "RESULTS.md"
    out.write_text("# typed by hand\n")
    with pytest.raises(ConfigError, match="not written by"):
        write_paper(tmp_path / "runs", out)
    result = run_cli("cnnlab.report", "--paper", str(tmp_path / "runs"), "--out", str(out))
    assert result.returncode == 2 and "not written by" in result.stderr
    assert out.read_text() == "# typed by hand\n"


def test_report_help_exits_zero() -> None:
    result = run_cli("cnnlab.report", "--help")
    assert result.returncode == 0 and "--paper" in result.stdout


def test_experiment_answers_are_kept_in_the_cache_until_a_config_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import cnnlab.config
    from cnnlab.report import catalog

    conf = tmp_path / "conf"
    shutil.copytree(cnnlab.config.CONFIG_DIR, conf)
    monkeypatch.setattr(cnnlab.config, "CONFIG_DIR", conf)
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    for cached in (catalog.experiment_config, catalog._cache_path):
        monkeypatch.setattr(catalog, cached.__name__, cached.__wrapped__)  # no in-process memo
    first = catalog.experiment_config("gdl_cnn")
    (kept,) = (tmp_path / "cache").glob("experiments-*.json")
    assert json.loads(kept.read_text()) == {"gdl_cnn": first} and first["classes"] is None
    assert first["expected"]["value"] == pytest.approx(0.7552)
    # an edited experiment composes again, under a new digest
    yaml = conf / "experiment" / "gdl_cnn.yaml"
    yaml.write_text(yaml.read_text().replace("value: 0.7552", "value: 0.5"))
    assert catalog.experiment_config("gdl_cnn")["expected"]["value"] == pytest.approx(0.5)
    assert len(list((tmp_path / "cache").glob("experiments-*.json"))) == 2

"""``make reproduce`` / ``scripts/reproduce.sh`` / ``python -m cnnlab.reproduce`` on fake data."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from cnnlab.reproduce import reproduce
from datafiles import write_mnist
from rundirs import completed, write_run

from conftest import ROOT, run_cli


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_dry_run_skips_missing_data_and_done_runs_resumes_killed_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write_mnist(data / "mnist", train=20, test=10)
    (out / "nb_mnist_cnn" / "seed_42").mkdir(parents=True)
    (out / "nb_mnist_cnn" / "seed_42" / "metrics.json").write_text('{"status": "completed"}')
    (out / "mlpt_mnist_cnn" / "seed_1").mkdir(parents=True)
    (out / "mlpt_mnist_cnn" / "seed_1" / "metrics.json").write_text('{"status": "interrupted"}')
    (out / "nb_mnist_mlp" / "seed_42" / ".hydra").mkdir(parents=True)  # killed before metrics
    busy = out / "mlpt_mnist_cnn" / "seed_2"
    busy.mkdir(parents=True)
    (busy / "metrics.json").write_text('{"status": "running"}')
    page = tmp_path / "RESULTS.md"
    with (busy / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status = reproduce(
            [str(data), "--seeds", "2", "--out", str(out), "--page", str(page), "--dry-run"]
        )
    text = capsys.readouterr().out
    assert status == 0 and not page.exists()
    # One line per experiment whose data is missing, naming what is missing.
    assert "skip gdl_cnn: missing CIFAR-10: cifar-10-batches-py/ or cifar10-jpeg/" in text
    assert "skip mlpt_smile_cnn: missing CelebA: celeba/" in text
    assert "skip nb_resnet18_transfer: missing Cats vs dogs: PetImages/" in text
    assert f"skip {out}/nb_mnist_cnn/seed_42: completed" in text
    assert f"skip {busy}: another process is training in it" in text
    resumed = _lines(text, "resume: ")
    assert resumed == [
        # one run per core by default (--jobs), so each run gets one thread
        "resume: python -m cnnlab.train experiment=mlpt_mnist_cnn seed=1 torch_threads=1 "
        f"callbacks.progress_bar.refresh_rate=0 paths.data_dir={data}/mnist "
        f"hydra.run.dir={out}/mlpt_mnist_cnn/seed_1 resume=true"
    ]
    started = _lines(text, "start: ")
    assert all("resume=true" not in line for line in started)
    assert [line.split("hydra.run.dir=")[1] for line in started] == [
        f"{out}/nb_mnist_mlp/seed_42",  # its directory exists but holds no run yet
        f"{out}/nb_mnist_cnn/seed_43",
        f"{out}/nb_mnist_mlp/seed_43",
    ]
    # a torch_threads of the command's own replaces the derived one
    reproduce([str(data), "torch_threads=3", "--out", str(out), "--page", str(page), "--dry-run"])
    started = _lines(capsys.readouterr().out, "start: ")
    assert started and all(line.count("torch_threads=") == 1 for line in started)
    assert all("torch_threads=3" in line for line in started)
    # --records: a completed record of the same run is done; one of other overrides is not
    records = tmp_path / "records"
    write_run(records, "nb_mnist_cnn", 43, completed(0.97))
    write_run(records, "nb_mnist_mlp", 43, completed(0.95), overrides=("trainer.max_epochs=1",))
    args = [str(data), "--seeds", "2", "--out", str(out), "--page", str(page), "--dry-run"]
    reproduce([*args, "--records", str(records)])
    text = capsys.readouterr().out
    assert f"skip {out}/nb_mnist_cnn/seed_43: its record in {records} is completed" in text
    assert "start: python -m cnnlab.train experiment=nb_mnist_mlp seed=43 " in text
    assert not records.joinpath("mlpt_mnist_cnn").exists()  # a dry run records nothing


def test_cifar_rows_use_the_jpeg_copy_when_only_it_is_present(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cifar10-jpeg").mkdir()
    args = [str(tmp_path), "--out", str(tmp_path / "o"), "--page", str(tmp_path / "R.md")]
    reproduce([*args, "--only", "dlwpt_net", "dlwpt_res_deep", "gdl_mlp", "--dry-run"])
    text = capsys.readouterr().out
    common = f"data=cifar10_jpeg paths.data_dir={tmp_path}"
    cifar2 = "'data.classes=[airplane,bird]' 'data.class_names=[airplane,bird]'"
    assert "experiment=gdl_mlp seed=42 " in text and f"{common} hydra.run.dir=" in text
    assert "experiment=dlwpt_net seed=123 " in text and f"{common} {cifar2} hydra.run" in text
    # The 100-block net comes last, with its time budget.
    assert _lines(text, "start: ")[-1].split()[4:6] == ["experiment=dlwpt_res_deep", "seed=123"]
    assert f"{cifar2} ++trainer.max_time=00:01:00:00 hydra.run.dir=" in text
    # A row whose published figure was measured otherwise gets a second run measured that way
    # (its overrides last: they win over the command's); a row without a figure does not.
    (tmp_path / "PetImages").mkdir()
    only = ["--only", "dlwpt_batchnorm", "nb_cats_dogs_cnn_full", "--dry-run"]
    reproduce([*args, *only, "module.eval_norm=running"])
    plain, as_published, full = _lines(capsys.readouterr().out, "start: ")
    assert plain.endswith(
        f"{cifar2} module.eval_norm=running hydra.run.dir={tmp_path}/o/dlwpt_batchnorm/seed_123"
    )
    assert as_published.endswith(
        f"{cifar2} module.eval_norm=running module.eval_norm=batch data.eval_batch_size=64 "
        f"hydra.run.dir={tmp_path}/o/dlwpt_batchnorm/as_published/seed_123"
    )
    assert full.endswith(f"hydra.run.dir={tmp_path}/o/nb_cats_dogs_cnn_full/seed_42")
    (tmp_path / "cifar-10-batches-py").mkdir()  # the official files win
    reproduce([*args, "--only", "gdl_mlp", "--dry-run"])
    assert (
        "seed=42 torch_threads=1 callbacks.progress_bar.refresh_rate=0 "
        f"paths.data_dir={tmp_path} hydra.run.dir=" in capsys.readouterr().out
    )


def test_a_time_limited_run_gets_its_time_so_far_plus_one_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # max_time counts every call's training time (its timer is saved in the checkpoint): the
    # same budget again would stop the resumed run before its first step.
    (tmp_path / "cifar10-jpeg").mkdir()
    out = tmp_path / "o"
    run = out / "dlwpt_res_deep" / "seed_123"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text('{"status": "time_limit"}')
    timer = {"Timer": {"time_elapsed": {"train": 3725.2, "validate": 40.0}}}
    torch.save({"callbacks": timer}, run / "checkpoints" / "last.ckpt")
    args = [str(tmp_path), "--out", str(out), "--page", str(tmp_path / "R.md"), "--dry-run"]
    # overrides may follow --only's names
    reproduce([*args, "--only", "dlwpt_res_deep", "trainer.max_epochs=3", "--seeds", "2"])
    text = capsys.readouterr().out
    resumed, started = _lines(text, "resume: "), _lines(text, "start: ")
    assert len(resumed) == len(started) == 1
    assert "++trainer.max_time=00:02:02:06 trainer.max_epochs=3 hydra.run.dir=" in resumed[0]
    assert "++trainer.max_time=00:01:00:00 trainer.max_epochs=3 " in started[0]  # seed 124
    # so may the data folder
    reproduce([*args[1:], "--only", "dlwpt_res_deep", args[0], "--res-deep-time", "01:00:30:00"])
    assert "++trainer.max_time=01:01:32:06 hydra" in _lines(capsys.readouterr().out, "resume: ")[0]
    for bad in ("1h", "00:01:60:00", "0:1:0:0", "00:00:00:00"):
        refused = run_cli("cnnlab.reproduce", *args, "--res-deep-time", bad)
        assert refused.returncode == 2, refused.stderr
        assert f"--res-deep-time={bad!r} is not a duration DD:HH:MM:SS" in refused.stderr
    assert not out.joinpath("dlwpt_res_deep", "seed_124").exists()


@pytest.mark.slow
def test_a_real_tiny_reproduction_then_a_rerun_that_skips_it(tmp_path: Path) -> None:
    data, out, page = tmp_path / "data", tmp_path / "out", tmp_path / "docs" / "RESULTS.md"
    records = tmp_path / "docs" / "runs"
    write_mnist(data, train=60, test=20)
    # python -m cnnlab.reproduce, as scripts/reproduce.sh runs it (the README's case runs that)
    command = [
        str(data),
        "--only",
        "nb_mnist_mlp",
        "--out",
        str(out),
        "--page",
        str(page),
        "--records",
        str(records),
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
    ]
    first = run_cli("cnnlab.reproduce", *command)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    metrics = json.loads((out / "nb_mnist_mlp" / "seed_42" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    assert "1 of 1 runs ended without error" in first.stdout
    row = next(line for line in page.read_text().splitlines() if line.startswith("| `nb_mnist_mlp"))
    assert "1 completed" in row
    # Trained for 1 epoch instead of 10: not the experiment's protocol, so not compared.
    assert "not compared: trainer.max_epochs differs from the experiment's protocol" in row
    assert (page.parent / "results_curves_nb.png").is_file()
    second = run_cli("cnnlab.reproduce", *command)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"skip {out}/nb_mnist_mlp/seed_42: completed" in second.stdout
    assert "0 of 0 runs ended without error" in second.stdout
    # The run directories are gone (another machine): the records keep the run and its row.
    record = records / "nb_mnist_mlp" / "seed_42"
    assert json.loads((record / "metrics.json").read_text()) == metrics
    assert (record / ".hydra" / "config.yaml").is_file() and not (record / "checkpoints").exists()
    shutil.rmtree(out)
    third = run_cli("cnnlab.reproduce", *command)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"skip {out}/nb_mnist_mlp/seed_42: its record in {records} is completed" in third.stdout
    assert row in page.read_text().splitlines()


def test_bad_input_is_refused_before_any_work(tmp_path: Path) -> None:
    missing = run_cli("cnnlab.reproduce", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "nope does not exist" in missing.stderr
    unknown = run_cli("cnnlab.reproduce", str(tmp_path), "--only", "gdl_mpl", "--dry-run")
    assert unknown.returncode == 2 and "Unknown experiment(s) for --only: gdl_mpl" in unknown.stderr
    hand_typed = tmp_path / "RESULTS.md"
    hand_typed.write_text("typed\n")
    refused = run_cli(
        "cnnlab.reproduce", str(tmp_path), "--page", str(hand_typed), "--out", str(tmp_path / "o")
    )
    assert refused.returncode == 2 and "not written by" in refused.stderr
    assert not (tmp_path / "o").exists() and hand_typed.read_text() == "typed\n"
    helped = run_cli("cnnlab.reproduce", "--help")
    # the options, not only the docstring
    assert helped.returncode == 0 and all(
        o in helped.stdout for o in ("--only", "--jobs", "--dry-run")
    )


def test_make_reproduce_passes_data_and_seeds() -> None:
    result = subprocess.run(
        ["make", "-n", "reproduce", "DATA=/d", "SEEDS=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "-m cnnlab.reproduce --data /d --seeds 3" in result.stdout

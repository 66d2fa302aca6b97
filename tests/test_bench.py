"""The benchmark script runs and reports every number; the speed options train on CPU.

Functional checks only: no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import ROOT, train_in_process

# One step of training, no validation or test: only the option under test costs time.
ONE_STEP = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "test_after_fit=false",
    "logger=none",
]


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch) -> Path:
    """scripts/ importable, as when a script runs from it."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    return ROOT / "scripts"


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


def _tiny_cifar_jpeg(bench_throughput: Any, tmp_path: Path) -> Path:
    """A 40-image copy of the CIFAR-10 JPEG folder (4 train and 2 test images a class)."""
    from PIL import Image

    classes = bench_throughput.compose(["experiment=gdl_cnn"], tmp_path).data.class_names
    rng = torch.Generator().manual_seed(0)
    for split, count in (("train", 4), ("test", 2)):
        for name in classes:
            folder = tmp_path / "data" / "cifar10-jpeg" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=rng, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i:04d}.jpg")
    return tmp_path / "data"


@pytest.mark.slow
def test_tiny_throughput_benchmark_writes_every_number(
    scripts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every number, the peers and --full-row (gdl_cnn's protocol on a JPEG folder with the
    source's loop and with python -m cnnlab.train; here 1 epoch of a 40-image copy)."""
    import bench_throughput

    out = tmp_path / "bench.json"
    data = _tiny_cifar_jpeg(bench_throughput, tmp_path)
    monkeypatch.setenv("CNNLAB_OUTPUTS", str(tmp_path / "outputs"))  # the full row's cache
    result = bench_throughput.main(
        ["--tiny", "--repeats", "1", "--threads", "1", "--variants", "bf16-mixed,channels_last",
         "--full-row", str(data), "--full-row-epochs", "1",
         "--json", str(out), "--workdir", str(tmp_path / "work")]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    machine = saved["machine"]
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    assert machine["cpu"] and _positive(machine["cores"]) and _positive(machine["threads"])
    # the peers' default models join --models
    assert set(saved["models"]) == {"gdl_mlp", "gdl_cnn", "dlwpt_net"}
    for name, model in saved["models"].items():
        for key in (
            "raw_images_per_s",
            "cnnlab_images_per_s",
            "ratio",
            "raw_images_per_cpu_s",
            "cnnlab_images_per_cpu_s",
            "ratio_cpu",
            "epoch_end_s",
        ):
            assert _positive(model[key]), (name, key)
        assert len(model["raw_runs"]) == len(model["cnnlab_runs"]) == 1
        assert set(model["peers"]) == {"template", "source"}, name
        for peer, numbers in model["peers"].items():
            for key in ("images_per_s", "images_per_cpu_s", "ratio", "ratio_cpu"):
                assert _positive(numbers[key]), (name, peer, key)
            assert len(numbers["runs"]) == 1
        for run in (*model["raw_runs"], *model["cnnlab_runs"]):
            assert run["page_faults_per_step"] >= 0
    variants = saved["models"]["gdl_cnn"]["variants"]
    assert set(variants) == {"bf16-mixed", "channels_last", "unfused"}
    for name, variant in variants.items():
        for key in ("images_per_s", "images_per_cpu_s", "ratio_to_raw", "ratio_to_default"):
            assert _positive(variant[key]), (name, key)
    # the raw loop's optimizer implementation, on every model
    assert set(saved["models"]["gdl_mlp"]["variants"]) == {"unfused"}
    assert variants["unfused"]["overrides"] == ["optimizer.fused=false"]
    for key in ("pipeline_images_per_s", "pipeline_images_per_cpu_s"):
        assert _positive(saved[key]), key
    assert set(saved["pipeline_over_training"]) == {"gdl_mlp", "gdl_cnn", "dlwpt_net"}
    row = saved["full_row"]
    assert row["experiment"] == "gdl_cnn" and row["epochs"] == 1 and row["batch_size"] == 32
    assert len(row["source"]["epoch_s"]) == 1 and 0 <= row["source"]["test_acc"] <= 1
    assert row["cnnlab"]["from"].startswith("timed by this invocation")
    for key in ("ratio", "ratio_without_load"):
        assert _positive(row[key]), key
    for key in ("wall_time_s", "process_s", "process_cpu_s"):
        assert _positive(row["cnnlab"][key]), key
    printed = bench_throughput.table(result)
    assert "peers/template/ratio" in printed and "peers/source/ratio_cpu" in printed
    assert "Full row gdl_cnn" in printed
    assert bench_throughput.parse_args(["--peers", "none"]).peers == []
    # the training rounds leave nothing behind; the full row keeps its cnnlab run and log
    assert {p.name for p in (tmp_path / "work").iterdir()} == {
        "full_row_cnnlab",
        "full_row_cnnlab.log",
    }


@pytest.mark.slow
def test_tiny_startup_benchmark_and_a_one_job_sweep(scripts: Path, tmp_path: Path) -> None:
    import bench_startup

    out = tmp_path / "startup.json"
    # the sweeps of both launchers: the README's `make bench-startup`; one basic job below
    argv = ["--tiny", "--repeats", "1", "--sweep-jobs", "0", "--json", str(out)]
    result = bench_startup.main(argv)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["machine"]["device"] == "cpu"
    startup = saved["startup_runs"][0]
    assert 0 < startup["to_trainer_built_s"] <= startup["to_fit_start_s"] <= startup["startup_s"]
    assert _positive(startup["cpu_s"]) and saved["startup_s"] == startup["startup_s"]
    # --sweep-jobs N times the same sweep with both launchers; one job with the basic one here.
    args = bench_startup.parse_args(["--tiny", "--sweep-jobs", "1"])
    sweep = bench_startup.sweep_run(args, tmp_path, parallel=False)
    assert sweep["jobs"] == 1
    for key in ("wall_s", "jobs_per_min", "train_s_mean"):
        assert _positive(sweep[key]), key
    assert sweep["overhead_per_job_s"] == sweep["wall_s"] - sweep["train_s_mean"]


def test_tiny_sweep_benchmark_times_the_parallel_launcher(scripts: Path, tmp_path: Path) -> None:
    import os

    import bench_sweep

    out = tmp_path / "sweep.json"
    argv = ["--tiny", "--launchers", "parallel", "--jobs", "2", "--json", str(out)]
    result = bench_sweep.main([*argv, "--workdir", str(tmp_path / "work")])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["command"][:4] == ["python", "-m", "cnnlab.train", "sweep=cifar2_study"]
    parallel = saved["launchers"]["parallel"]
    assert _positive(parallel["wall_s"]) and _positive(parallel["train_s"])
    jobs = parallel["runs"][0]["jobs"]
    assert [job["row"] for job in jobs] == ["dlwpt_net", "dlwpt_width"]
    cores = len(os.sched_getaffinity(0))
    assert all(job["threads"] == max(1, cores // 2) for job in jobs)
    assert saved["speedup"] == {}, "a speed-up is measured against the basic launcher only"
    # the sequential reference gives each job every core
    assert bench_sweep.launcher_overrides("basic", 2, 4) == [
        "hydra/launcher=basic",
        "torch_threads=4",
    ]


def test_bf16_mixed_trains_one_step_on_cpu(tmp_path: Path) -> None:
    metrics = train_in_process(
        ["model=small_cnn", "trainer.precision=bf16-mixed", *ONE_STEP], tmp_path
    )
    assert metrics["status"] == "completed" and metrics["global_step"] == 1
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_channels_last_trains_one_step_and_keeps_the_format(tmp_path: Path) -> None:
    metrics = train_in_process(
        ["model=small_cnn", "module.channels_last=true", *ONE_STEP], tmp_path
    )
    assert metrics["status"] == "completed" and metrics["global_step"] == 1
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    conv = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 4]
    assert conv and all(w.is_contiguous(memory_format=torch.channels_last) for w in conv)


def test_compile_trains_one_step_on_cpu(tmp_path: Path) -> None:
    pytest.importorskip("torch._inductor")
    metrics = train_in_process(["model=mlp", "module.compile=true", *ONE_STEP], tmp_path)
    assert metrics["status"] == "completed" and metrics["global_step"] == 1
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any("_orig_mod." in k for k in state), "the model ran as torch.compile's wrapper"


def test_tiny_recipe_benchmark_times_the_experiments_own_steps(
    scripts: Path, tmp_path: Path
) -> None:
    import bench_recipe

    out = tmp_path / "recipe.json"
    result = bench_recipe.main(["--tiny", "--threads", "1", "--anchor", "115", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["experiment"] == "cifar10_fast" and result["timed_steps"] == 3
    assert result["steps_per_epoch"] == 512 // 64  # the tiny set over its batch, drop_last
    keys = ("s_per_step", "cpu_s_per_step", "s_per_epoch", "images_per_s", "raw_s_per_step")
    for key in (*keys, "ratio_to_raw", "ratio_to_anchor"):
        assert _positive(result[key]), key
    assert result["s_per_epoch"] == pytest.approx(result["s_per_step"] * 8)


def test_the_notebooks_own_cats_dogs_loop_runs_on_a_petimages_folder(
    scripts: Path, tmp_path: Path
) -> None:
    import source_cats_dogs
    from datafiles import write_image_folder

    write_image_folder(tmp_path / "PetImages", classes=("Cat", "Dog"), per_class=12, size=(24, 24))
    out = tmp_path / "source.json"
    argv = [str(tmp_path), "--seeds", "1", "2", "--epochs", "2", "--split", "8", "6"]
    result = source_cats_dogs.main([*argv, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    for run in result["runs"]:
        assert run["sizes"] == [8, 6, 10] and len(run["epochs"]) == 2
        assert 0 <= run["test_acc"] <= 1 and all(e["train_loss"] > 0 for e in run["epochs"])
    assert result["test_acc_std"] is not None
    with pytest.raises(SystemExit) as missing:
        source_cats_dogs.main([str(tmp_path / "nowhere")])
    assert missing.value.code == 2

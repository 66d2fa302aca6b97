#!/usr/bin/env python
"""Training throughput of cnnlab against a raw PyTorch loop, data pipeline speed, start-up time.

``python scripts/bench.py [--models gdl_mlp,gdl_cnn] [--steps 200] [--repeats 3] [--json FILE]``
(``make bench ARGS="..."``). Everything runs in this one process except the start-up and sweep
measurements, which time ``python -m cnnlab.train`` as a user types it.

What is timed, and why
----------------------
* **raw**: the loop of the source texts: the training images as float tensors in memory
  (scaled like cnnlab's normalization), one shuffle per epoch, contiguous batch slices, Adam,
  cross-entropy, ``loss.item()`` every step, ``model.train()``. ``--warmup`` steps first, then
  ``--steps`` timed steps.
* **cnnlab**: ``cnnlab.train.train(cfg)`` in this process on the composed config, with the
  framework's default callbacks (checkpointing, learning-rate monitor, progress bar) and the
  TensorBoard logger, on the same model (same seed, so the same initial weights), the same
  images (uint8 in memory, converted and normalized per batch by the data module as in any
  run), the same batch size and number of optimizer steps. A callback added to the run records
  the clock at the start of training batch ``--warmup`` and at the end of the last batch: the
  window holds exactly ``--steps`` optimizer steps with every per-step cost of the framework
  (hooks, logging every ``log_every_n_steps``, progress bar refreshes), and none of the one-time
  costs (imports, building the objects, data generation, the first-step warm-up, compilation
  with ``module.compile``). Validation and test are switched off on this side
  (``limit_val_batches=0``, ``test_after_fit=false``) since the raw loop has none; the epoch-end
  work (metric computation, the checkpoint files) falls after the window and is reported
  separately as ``epoch_end_s``.
* Both sides alternate (raw, cnnlab, variants, raw, cnnlab, ...) for ``--repeats`` rounds and
  the medians are reported, so drifting machine load hits both alike; ``ratio`` is the median of
  the per-round cnnlab/raw ratios. Every window is also timed in process CPU seconds
  (``images_per_cpu_s``, ``ratio_cpu``): on a machine shared with other jobs that figure moves
  far less than wall time (use ``--threads 1`` there: spinning OpenMP threads on a busy core
  make wall time meaningless).
* The two sides run the same PyTorch code for the model and the optimizer (Adam with its
  defaults), so the ratio is the cost of the framework: Lightning's loop and hooks, callbacks,
  logging, metrics and the per-batch uint8 -> float conversion.
* **pipeline**: the in-memory data path alone: TensorBatchLoader batches plus the data module's
  ``on_after_batch_transfer`` (uint8 -> float, flip + crop augmentation of data/augment=flip_crop,
  normalization) on the training device, in images/s.
* **start-up**: seconds from launching ``python -m cnnlab.train data=synthetic ...`` (default
  callbacks, sanity validation) to the start of its first training batch: a callback of this
  file (``+callbacks.first_step._target_=bench.first_step_hook``) records the clock when the
  callbacks are built (imports and config done), at fit start and at the first batch.
* **variants** (``--variants``, on ``--variant-models``): cnnlab with ``trainer.precision=
  bf16-mixed``, ``module.channels_last=true`` or ``module.compile=true``; and on every model
  ``unfused`` (``optimizer.fused=false``): the same per-parameter Adam as the raw loop, so its
  ratio is the framework's own overhead, apart from the faster fused optimizer of the defaults.
* ``--sweep-jobs N`` (off by default; ``--sweep-only`` for just that) also times an N-job ``-m``
  sweep (``data=synthetic seed=0..N-1 trainer.max_epochs=1``) with the basic launcher and with
  ``hydra/launcher=joblib`` (2 jobs at once): wall time, jobs per minute, and the per-job
  overhead = wall time / N - the jobs' own ``wall_time_s`` (fit + test).
* ``--data-root DIR`` trains both sides on an image folder decoded into memory instead
  (``cifar10-jpeg`` -> ``data=cifar10_jpeg``; any other folder -> ``data=image_folder``);
  ``--tiny`` is a seconds-long configuration for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent

VARIANTS: dict[str, list[str]] = {
    "bf16-mixed": ["trainer.precision=bf16-mixed"],
    "channels_last": ["module.channels_last=true"],
    "compile": ["module.compile=true"],
}
# Run on every model: cnnlab with the raw loop's optimizer implementation.
UNFUSED = ["optimizer.fused=false"]


# ---- callbacks used inside runs (targets of +callbacks.* entries) ---------------------------
def step_timer(out: str, skip: int) -> Any:
    """Callback: clock at the start of batch ``skip`` and at the end of the last batch."""
    import lightning as L
    import torch

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.times: dict[str, float] = {}

        def _sync(self, trainer: Any) -> None:
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self.times["fit_start"] = time.perf_counter()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
            if idx == skip:
                self._sync(trainer)
                self.times["t0"] = time.perf_counter()
                self.times["cpu0"] = time.process_time()
                self.times["faults0"] = _minor_faults()

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
        ) -> None:
            if idx == trainer.num_training_batches - 1:
                self._sync(trainer)
                self.times["t1"] = time.perf_counter()
                self.times["cpu1"] = time.process_time()
                self.times["faults1"] = _minor_faults()
                self.times["steps"] = idx + 1 - skip

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self.times["fit_end"] = time.perf_counter()
            Path(out).write_text(json.dumps(self.times))

    return StepTimer()


def first_step_hook(out: str) -> Any:
    """Callback: wall clock (``time.time()``) when the callbacks are built (imports and config
    done), at the start of fit and at the start of the first training batch, and the process's
    CPU seconds by then; written to ``out`` at the first batch."""
    import lightning as L

    class FirstStep(L.Callback):
        def __init__(self) -> None:
            self.times = {"trainer_built": time.time()}

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self.times["fit_start"] = time.time()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
            if "first_step" not in self.times:
                self.times["first_step"] = time.time()
                self.times["cpu_s"] = time.process_time()
                Path(out).write_text(json.dumps(self.times))

    return FirstStep()


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ---- configuration ---------------------------------------------------------------------------
def data_overrides(args: argparse.Namespace, batches: int) -> list[str]:
    """The data config of both sides: synthetic 3 x size x size, 10 classes, or --data-root."""
    bs = args.batch_size
    if args.data_root:
        root = Path(args.data_root).resolve()
        if root.name == "cifar10-jpeg":
            return ["data=cifar10_jpeg", f"paths.data_dir={root.parent}", f"data.batch_size={bs}"]
        return [
            "data=image_folder",
            f"data.root={root}",
            f"data.image_size={args.image_size}",
            f"data.batch_size={bs}",
            "data.storage=memory",
            *args.data_args,
        ]
    return [
        "data=synthetic",
        f"data.image_size={args.image_size}",
        "data.in_channels=3",
        f"data.class_names=${{class_range:{args.num_classes}}}",
        f"data.num_train={batches * bs + bs}",
        f"data.val_split={bs}",
        f"data.num_test={bs}",
        f"data.batch_size={bs}",
    ]


def run_overrides(args: argparse.Namespace, model: str) -> list[str]:
    batches = args.warmup + args.steps
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    return [
        *data_overrides(args, batches),
        f"model={model}",
        f"trainer.accelerator={accelerator}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "test_after_fit=false",
        f"torch_threads={args.threads}",
        f"seed={args.seed}",
    ]


def compose(overrides: list[str], output_dir: Path) -> Any:
    """The composed train config with Hydra's runtime set as a real run has it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from cnnlab.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# ---- the two sides ---------------------------------------------------------------------------
def datamodule(args: argparse.Namespace, model: str, workdir: Path, extra: list[str]) -> Any:
    """The run's data module, set up (images decoded or generated, splits made)."""
    from cnnlab.build import build_datamodule

    dm = build_datamodule(compose([*run_overrides(args, model), *extra], workdir / "data"))
    dm.prepare_data()
    dm.setup("fit")
    return dm


class RawData:
    """The training tensors of the configured data module, as the raw loop holds them."""

    def __init__(self, args: argparse.Namespace, model: str, workdir: Path) -> None:
        import torch

        dm = datamodule(args, model, workdir, [])
        x, y = dm.splits["train"].images, dm.splits["train"].labels
        mean, std = dm.mean[None, :, None, None], dm.std[None, :, None, None]
        device = torch.device(args.device)
        self.images = ((x.float() / 255 - mean) / std).to(device)
        self.labels = y.to(device)


def raw_run(
    args: argparse.Namespace, model_name: str, data: RawData, workdir: Path
) -> dict[str, float]:
    """Images/s (wall and CPU) of the texts' loop: ``--steps`` steps after ``--warmup``."""
    import torch
    import torch.nn.functional as F

    from cnnlab.build import build_model
    from cnnlab.train import _thread_count

    cfg = compose(run_overrides(args, model_name), workdir / "raw")
    torch.set_num_threads(_thread_count(cfg.torch_threads))
    torch.manual_seed(args.seed)
    import lightning as L

    L.seed_everything(args.seed, workers=True, verbose=False)
    device = torch.device(args.device)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    bs = args.batch_size
    total = args.warmup + args.steps
    # One shuffle, as each epoch of the texts; only the images the run reaches are copied.
    perm = torch.randperm(len(data.labels), device=device)[: total * bs]
    x_all, y_all = data.images[perm], data.labels[perm]
    n = len(y_all)
    model.train()
    running_loss = 0.0
    t0 = cpu0 = 0.0
    faults0 = 0
    for step in range(total):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, cpu0, faults0 = time.perf_counter(), time.process_time(), _minor_faults()
        start = (step * bs) % max(n - bs + 1, 1)
        x = x_all[start : start + bs]
        y = y_all[start : start + bs]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "images_per_s": args.steps * bs / elapsed,
        "images_per_cpu_s": args.steps * bs / cpu,
        "page_faults_per_step": (_minor_faults() - faults0) / args.steps,
    }


def framework_run(
    args: argparse.Namespace, model_name: str, extra: list[str], workdir: Path
) -> dict[str, float]:
    """Images/s of ``cnnlab.train.train`` over the timed window, plus its epoch-end seconds."""
    from omegaconf import open_dict

    from cnnlab.train import train

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        run_dir = Path(tmp) / "run"
        cfg = compose([*run_overrides(args, model_name), *extra], run_dir)
        timer_file = Path(tmp) / "timer.json"
        with open_dict(cfg):
            cfg.callbacks["bench_timer"] = {
                "_target_": "bench.step_timer",
                "out": str(timer_file),
                "skip": args.warmup,
            }
        train(cfg)
        times = json.loads(timer_file.read_text())
    window = times["t1"] - times["t0"]
    if times["steps"] != args.steps:
        raise RuntimeError(f"timed {times['steps']} steps instead of {args.steps}")
    return {
        "images_per_s": args.steps * args.batch_size / window,
        "images_per_cpu_s": args.steps * args.batch_size / (times["cpu1"] - times["cpu0"]),
        "page_faults_per_step": (times["faults1"] - times["faults0"]) / args.steps,
        "epoch_end_s": times["fit_end"] - times["t1"],
    }


def pipeline_run(args: argparse.Namespace, dm: Any) -> dict[str, float]:
    """Images/s of TensorBatchLoader + on_after_batch_transfer (data/augment=flip_crop)."""
    from types import SimpleNamespace

    import torch

    device = torch.device(args.device)
    dm.trainer = SimpleNamespace(
        training=True, global_rank=0, world_size=1, current_epoch=0, is_global_zero=True
    )
    loader = dm.train_dataloader()
    images = 0
    batches = args.pipeline_batches
    t0, cpu0 = time.perf_counter(), time.process_time()
    while images < batches * args.batch_size:
        for x, y in loader:
            x, y = dm.on_after_batch_transfer((x.to(device), y.to(device)), 0)
            images += len(y)
            if images >= batches * args.batch_size:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    dm.trainer = None
    return {"images_per_s": images / elapsed, "images_per_cpu_s": images / cpu}


def startup_run(args: argparse.Namespace, model: str, workdir: Path) -> dict[str, float]:
    """Seconds from launching ``python -m cnnlab.train`` to its first training batch."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out = Path(tmp) / "first_step.json"
        accelerator = "gpu" if args.device == "cuda" else "cpu"
        command = [
            sys.executable,
            "-m",
            "cnnlab.train",
            "data=synthetic",
            f"data.image_size={args.image_size}",
            "data.in_channels=3",
            f"data.class_names=${{class_range:{args.num_classes}}}",
            f"model={model}",
            f"trainer.accelerator={accelerator}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "test_after_fit=false",
            f"hydra.run.dir={Path(tmp) / 'run'}",
            "+callbacks.first_step._target_=bench.first_step_hook",
            f"+callbacks.first_step.out={out}",
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), *_pythonpath()])}
        started = time.time()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"start-up run failed:\n{done.stderr[-3000:]}")
        times = json.loads(out.read_text())
    return {
        "startup_s": times["first_step"] - started,
        "to_trainer_built_s": times["trainer_built"] - started,
        "to_fit_start_s": times["fit_start"] - started,
        "cpu_s": times["cpu_s"],
    }


def _pythonpath() -> list[str]:
    value = os.environ.get("PYTHONPATH")
    return value.split(os.pathsep) if value else []


def sweep_run(args: argparse.Namespace, workdir: Path, parallel: bool) -> dict[str, float]:
    """Wall time of an N-job sweep on synthetic data, and the jobs' own training seconds."""
    jobs = args.sweep_jobs
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        sweep_dir = Path(tmp) / "sweep"
        command = [
            sys.executable,
            "-m",
            "cnnlab.train",
            "-m",
            "data=synthetic",
            f"seed={','.join(str(i) for i in range(jobs))}",
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={sweep_dir}",
            *(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if parallel else []),
        ]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"sweep failed:\n{done.stderr[-3000:]}")
        train_s = [
            json.loads((sweep_dir / str(i) / "metrics.json").read_text())["wall_time_s"]
            for i in range(jobs)
        ]
    return {
        "jobs": jobs,
        "wall_s": wall,
        "jobs_per_min": 60 * jobs / wall,
        "train_s_mean": statistics.mean(train_s),
        "overhead_per_job_s": wall / jobs - statistics.mean(train_s),
    }


# ---- report ----------------------------------------------------------------------------------
def machine(args: argparse.Namespace) -> dict[str, Any]:
    import lightning
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = args.device
    if device == "cuda":
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    return {
        "cpu": cpu,
        "cores": cores,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "device": device,
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def _speeds(runs: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in runs]


def _paired(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> float:
    """Median over rounds of a/b: each pair ran back to back under the same load."""
    return median([x[key] / y[key] for x, y in zip(a, b, strict=True)])


def summarize(
    args: argparse.Namespace,
    raw: dict[str, list[dict]],
    fw: dict[str, list[dict]],
    var: dict[str, dict[str, list[dict]]],
    pipe: list[dict[str, float]],
    startup: list[dict[str, float]],
) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name in args.models:
        entry: dict[str, Any] = {
            "raw_images_per_s": median(_speeds(raw[name], "images_per_s")),
            "cnnlab_images_per_s": median(_speeds(fw[name], "images_per_s")),
            "ratio": _paired(fw[name], raw[name], "images_per_s"),
            "raw_images_per_cpu_s": median(_speeds(raw[name], "images_per_cpu_s")),
            "cnnlab_images_per_cpu_s": median(_speeds(fw[name], "images_per_cpu_s")),
            "ratio_cpu": _paired(fw[name], raw[name], "images_per_cpu_s"),
            "epoch_end_s": median(_speeds(fw[name], "epoch_end_s")),
            "raw_runs": raw[name],
            "cnnlab_runs": fw[name],
            "variants": {},
        }
        for variant, runs in var.get(name, {}).items():
            entry["variants"][variant] = {
                "overrides": args.variant_overrides[variant],
                "images_per_s": median(_speeds(runs, "images_per_s")),
                "images_per_cpu_s": median(_speeds(runs, "images_per_cpu_s")),
                "ratio_to_raw": _paired(runs, raw[name], "images_per_s"),
                "ratio_to_raw_cpu": _paired(runs, raw[name], "images_per_cpu_s"),
                "ratio_to_default": _paired(runs, fw[name], "images_per_s"),
                "ratio_to_default_cpu": _paired(runs, fw[name], "images_per_cpu_s"),
                "runs": runs,
            }
        models[name] = entry
    pipeline = median(_speeds(pipe, "images_per_s"))
    pipeline_cpu = median(_speeds(pipe, "images_per_cpu_s"))
    return {
        "machine": machine(args),
        "settings": {
            "data": args.data_root or f"synthetic 3x{args.image_size}x{args.image_size}",
            "num_classes": args.num_classes,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "threads": args.threads,
            "loadavg_1min_start": args.loadavg_start,
            "loadavg_1min_end": _loadavg(),
        },
        "models": models,
        "pipeline_images_per_s": pipeline,
        "pipeline_images_per_cpu_s": pipeline_cpu,
        "pipeline_runs": pipe,
        "pipeline_over_training": {
            name: pipeline / models[name]["cnnlab_images_per_s"] for name in models
        },
        "pipeline_over_training_cpu": {
            name: pipeline_cpu / models[name]["cnnlab_images_per_cpu_s"] for name in models
        },
        "startup_s": median(_speeds(startup, "startup_s")) if startup else None,
        "startup_runs": startup,
    }


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def table(result: dict[str, Any]) -> str:
    """The markdown report printed at the end (the same numbers as the JSON file)."""
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, "
        f"torch {m['torch']}, lightning {m['lightning']}, device {m['device']}"
    ]
    if "models" in result:
        lines += _training_table(result)
    if result.get("sweep"):
        lines += [
            "",
            "| sweep (data=synthetic, 1 epoch per job) | jobs | wall s | jobs/min "
            "| train s/job | overhead s/job |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, sw in result["sweep"].items():
            lines.append(
                f"| {label} | {sw['jobs']:.0f} | {sw['wall_s']:.1f} | {sw['jobs_per_min']:.1f} "
                f"| {sw['train_s_mean']:.2f} | {sw['overhead_per_job_s']:.2f} |"
            )
    return "\n".join(lines)


def _training_table(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    lines = [
        f"Data: {s['data']}, {s['num_classes']} classes, batch {s['batch_size']}, {s['steps']} "
        f"timed steps after {s['warmup']} warm-up steps; medians of {s['repeats']} "
        f"interleaved rounds (1-min load average {s['loadavg_1min_start']:.1f} -> "
        f"{s['loadavg_1min_end']:.1f})",
        "",
        "| run | raw img/s | cnnlab img/s | cnnlab/raw | raw img/CPU-s | cnnlab img/CPU-s "
        "| cnnlab/raw (CPU) | epoch end s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in result["models"].items():
        lines.append(
            f"| {name} | {e['raw_images_per_s']:.0f} | {e['cnnlab_images_per_s']:.0f} "
            f"| {e['ratio']:.3f} | {e['raw_images_per_cpu_s']:.0f} "
            f"| {e['cnnlab_images_per_cpu_s']:.0f} | {e['ratio_cpu']:.3f} "
            f"| {e['epoch_end_s']:.2f} |"
        )
        for variant, v in e["variants"].items():
            lines.append(
                f"| {name} {variant} | | {v['images_per_s']:.0f} | {v['ratio_to_raw']:.3f} "
                f"({v['ratio_to_default']:.2f}x default) | | {v['images_per_cpu_s']:.0f} "
                f"| {v['ratio_to_raw_cpu']:.3f} ({v['ratio_to_default_cpu']:.2f}x default) | |"
            )
    lines += ["", "| measure | value |", "|---|---:|"]
    for key, label in (("", "img/s"), ("_cpu", "img/CPU-s")):
        over = result[f"pipeline_over_training{key}"]
        ratios = ", ".join(f"{v:.1f}x {k}" for k, v in over.items())
        lines.append(
            f"| data pipeline {label} (TensorBatchLoader + flip_crop) "
            f"| {result[f'pipeline_images_per{key}_s']:.0f} ({ratios} training) |"
        )
    if result["startup_s"] is not None:
        runs = result["startup_runs"]
        parts = ", ".join(
            f"{label} {median(_speeds(runs, k)):.2f}"
            for k, label in (
                ("to_trainer_built_s", "imports+config+build"),
                ("to_fit_start_s", "fit start"),
                ("cpu_s", "CPU s"),
            )
        )
        lines.append(
            f"| start-up: launch to first training step, s | {result['startup_s']:.2f} ({parts}) |"
        )
    return lines


# ---- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gdl_mlp,gdl_cnn", help="comma-separated model configs")
    p.add_argument("--steps", type=int, default=300, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps before the window")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--threads", default="auto", help="torch_threads of both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--data-root",
        default=None,
        help="an image folder (e.g. ../shared/data/cifar10-jpeg) instead of synthetic data",
    )
    p.add_argument(
        "--data-args", nargs="*", default=[], help="extra data overrides for --data-root"
    )
    p.add_argument(
        "--variants",
        default="bf16-mixed,channels_last,compile",
        help=f"built-in cnnlab variants run on --variant-models: any of {', '.join(VARIANTS)}",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:OVERRIDES",
        help="an extra cnnlab variant run on every model, e.g. "
        "'sgd:optimizer=sgd' (overrides separated by spaces; repeatable)",
    )
    p.add_argument("--variant-models", default="gdl_cnn", help="models of --variants")
    p.add_argument("--pipeline-batches", type=int, default=500)
    p.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    p.add_argument("--sweep-jobs", type=int, default=0, help="also time an N-job sweep")
    p.add_argument("--sweep-repeats", type=int, default=1, help="rounds of the two sweeps")
    p.add_argument("--sweep-only", action="store_true", help="only the sweep timings")
    p.add_argument("--tiny", action="store_true", help="a few steps on 8x8 images (tests)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers to this file")
    p.add_argument("--workdir", type=Path, default=None, help="run directories (default: tmp)")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.image_size, args.pipeline_batches = 3, 2, 8, 5
    args.models = [m for m in args.models.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")
    args.variant_overrides = {v: VARIANTS[v] for v in args.variants}
    args.variant_overrides["unfused"] = UNFUSED
    args.custom_variants = ["unfused"]  # on every model
    for spec in args.variant:
        name, sep, overrides = spec.partition(":")
        if not sep or not name or not overrides.split():
            p.error(f"--variant {spec!r}: expected NAME:OVERRIDE [OVERRIDE ...]")
        args.variant_overrides[name] = overrides.split()
        args.custom_variants.append(name)
    args.variant_models = [m for m in args.variant_models.split(",") if m in args.models]
    if args.sweep_only and not args.sweep_jobs:
        args.sweep_jobs = 8
    if args.repeats < 1 or args.steps < 1 or args.warmup < 1:
        p.error("--repeats, --steps and --warmup must be >= 1")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.loadavg_start = _loadavg()
    if str(SCRIPTS) not in sys.path:  # callback targets bench.step_timer / first_step_hook
        sys.path.insert(0, str(SCRIPTS))
    from cnnlab.cli import quiet_third_party

    quiet_third_party()
    workdir_ctx = tempfile.TemporaryDirectory(prefix="cnnlab-bench-")
    workdir = args.workdir or Path(workdir_ctx.name)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.sweep_only:
        result: dict[str, Any] = {"machine": machine(args), "sweep": sweeps(args, workdir)}
    else:
        result = training_rounds(args, workdir)
        if args.sweep_jobs:
            result["sweep"] = sweeps(args, workdir)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    workdir_ctx.cleanup()
    return result


def training_rounds(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Raw, cnnlab and variants in turn, ``--repeats`` times; pipeline and start-up too."""
    data = {name: RawData(args, name, workdir) for name in args.models}
    pipeline_dm = datamodule(args, args.models[0], workdir, ["data/augment=flip_crop"])
    if not pipeline_dm.augment.enabled:
        raise RuntimeError("data/augment=flip_crop did not switch augmentation on")
    raw: dict[str, list[dict]] = {m: [] for m in args.models}
    fw: dict[str, list[dict]] = {m: [] for m in args.models}
    var: dict[str, dict[str, list[dict]]] = {m: {} for m in args.models}
    pipe: list[dict[str, float]] = []
    startup: list[dict[str, float]] = []
    for round_ in range(args.repeats):
        for name in args.models:
            raw[name].append(raw_run(args, name, data[name], workdir))
            fw[name].append(framework_run(args, name, [], workdir))
            for variant, overrides in args.variant_overrides.items():
                if name in args.variant_models or variant in args.custom_variants:
                    run = framework_run(args, name, overrides, workdir)
                    var[name].setdefault(variant, []).append(run)
        pipe.append(pipeline_run(args, pipeline_dm))
        if not args.no_startup:
            startup.append(startup_run(args, args.models[-1], workdir))
        print(f"round {round_ + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    return summarize(args, raw, fw, var, pipe, startup)


def sweeps(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The same sweep with the basic launcher and with joblib (2 jobs at once), alternated."""
    launchers = {"basic": False, "joblib n_jobs=2": True}
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in launchers}
    for _ in range(args.sweep_repeats):
        for label, parallel in launchers.items():
            runs[label].append(sweep_run(args, workdir, parallel))
    return {
        label: {**{k: median(_speeds(r, k)) for k in r[0]}, "runs": r} for label, r in runs.items()
    }


if __name__ == "__main__":
    main()

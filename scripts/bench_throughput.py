#!/usr/bin/env python
"""Training throughput of cnnlab against a raw PyTorch loop and its peers, and of the data path.

``python scripts/bench_throughput.py [--models gdl_mlp,gdl_cnn] [--steps 300] [--repeats 3]
[--peers template,source] [--json FILE]`` (``make bench ARGS="..."``). Everything runs in this
one process (``--full-row``'s cnnlab side excepted).
``scripts/bench_startup.py`` times the start-up and sweeps.

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
  run), the same batch size and number of optimizer steps. cnnlab's ``StepClock`` callback,
  added by config, records the clock at the start of training batch ``--warmup`` and at the
  end of the last batch: the window holds exactly ``--steps`` optimizer steps with every
  per-step cost of the framework (hooks, logging every ``log_every_n_steps``, progress bar
  refreshes), and none of the one-time costs (imports, building the objects, data generation,
  the first-step warm-up, compilation with ``module.compile``). Validation and test are
  switched off on this side (``limit_val_batches=0``, ``test_after_fit=false``) since the raw
  loop has none; the epoch-end work (metric computation, the checkpoint files) falls after the
  window and is reported separately as ``epoch_end_s``.
* Both sides alternate (raw, cnnlab, variants, raw, cnnlab, ...) for ``--repeats`` rounds and
  the medians are reported, so drifting machine load hits both alike; ``ratio`` is the median of
  the per-round cnnlab/raw ratios. Every window is also timed in process CPU seconds
  (``images_per_cpu_s``, ``ratio_cpu``): on a machine shared with other jobs that figure moves
  far less than wall time (use ``--threads 1`` there: spinning OpenMP threads on a busy core
  make wall time meaningless).
* The two sides run the same PyTorch code for the model and the optimizer (Adam with its
  defaults), so the ratio is the cost of the framework: Lightning's loop and hooks, callbacks,
  logging, metrics and the per-batch uint8 -> float conversion.
* **peers** (``--peers template,source`` on ``--peer-models``, default gdl_mlp, gdl_cnn and
  DLWPT's dlwpt_net, which join ``--models``; ``--peers none`` skips them), in the same rounds
  and over the same window, from the same initial weights, on the same images, batch size and
  steps (details in ``scripts/bench_peers.py``). **template**: the lightning-hydra-template's
  way: a plain LightningModule (cross-entropy, torchmetrics loss mean and accuracy logged per
  epoch, Adam), ``L.Trainer`` with its default callbacks and the TensorBoard logger, a shuffled
  ``DataLoader`` over a ``TensorDataset`` of the raw loop's float images; cnnlab's
  ``StepClock`` takes its window as on cnnlab's side. **source**: the notebooks' loop: a
  torchvision dataset of the uint8 images turned into tensors per sample (PIL ->
  ``ToTensor``/``Normalize``), a shuffled ``DataLoader``, Adam, ``loss.item()`` every step; its
  window holds the per-sample loading of the timed batches. ``peers/<peer>/ratio`` (and
  ``ratio_cpu``) is cnnlab's throughput / the peer's, the median of the per-round ratios.
* **full row** (``--full-row DATA_DIR``): one whole reproduction row, ``experiment=gdl_cnn``
  (10 epochs of the 50,000 CIFAR-10 images of ``DATA_DIR/cifar10-jpeg``, each epoch evaluated on
  the 10,000 test images), with the source's loop against ``python -m cnnlab.train
  experiment=gdl_cnn data=cifar10_jpeg paths.data_dir=DATA_DIR`` at the same threads, run
  right after it: about half an hour each on one core, so seldom run. ``--full-row-cnnlab
  RUN_DIR`` takes cnnlab's ``wall_time_s`` from an existing run of that command instead (a
  weaker comparison: another time, perhaps another load; the JSON says which);
  ``--full-row-epochs N`` shortens both sides alike. Compared: the source's seconds (JPEG
  decoding, training, evaluations) against cnnlab's ``wall_time_s`` (data loading, from its
  cache once filled, training, validation, test; no start-up), with and without the source's
  decoding.
* **pipeline**: the in-memory data path alone: the training loader's batches plus the data
  module's ``on_after_batch_transfer`` (uint8 -> float, flip + crop augmentation of
  data/augment=flip_crop, normalization) on the training device, in images/s.
* **variants** (``--variants``, on ``--variant-models``): cnnlab with ``trainer.precision=
  bf16-mixed``, ``module.channels_last=true`` or ``module.compile=true``; and on every model
  ``unfused`` (``optimizer.fused=false``): the same per-parameter Adam as the raw loop, so its
  ratio is the framework's own overhead, apart from the faster fused optimizer of the defaults.
* ``--data-root DIR`` trains both sides on an image folder decoded into memory instead
  (``cifar10-jpeg`` -> ``data=cifar10_jpeg``; any other folder -> ``data=image_folder``);
  ``--tiny`` is a seconds-long configuration for tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    clock_callback,
    compose,
    device_of,
    loadavg,
    machine,
    median,
    paired,
    plain_step,
    speeds,
)
from bench_peers import PEERS, full_row, full_row_lines, peer_table, source_run, template_run
from cnnlab.cluster import allocated_cpus

VARIANTS: dict[str, list[str]] = {
    "bf16-mixed": ["trainer.precision=bf16-mixed"],
    "channels_last": ["module.channels_last=true"],
    "compile": ["module.compile=true"],
}
# Run on every model: cnnlab with the raw loop's optimizer implementation.
UNFUSED = ["optimizer.fused=false"]


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def thread_count(setting: str) -> int:
    """torch threads of a single run: ``auto`` is every core this process may use."""
    if setting != "auto":
        return int(setting)
    return allocated_cpus()


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


# ---- the two sides ---------------------------------------------------------------------------
def datamodule(args: argparse.Namespace, model: str, workdir: Path, extra: list[str]) -> Any:
    """The run's data module, set up (images decoded or generated, splits made)."""
    from cnnlab.build import build_datamodule

    dm = build_datamodule(compose([*run_overrides(args, model), *extra], workdir / "data"))
    dm.prepare_data()
    dm.setup("fit")
    return dm


class RawData:
    """The training images as the raw loop holds them: float, normalized by the data module;
    and as the source peer holds them: the data module's uint8 images, ``(N, H, W, C)``."""

    def __init__(self, args: argparse.Namespace, model: str, workdir: Path) -> None:
        import torch

        dm = datamodule(args, model, workdir, [])
        # The data module's own per-batch preparation (no trainer: no augmentation).
        batches = [dm.on_after_batch_transfer(batch, 0) for batch in dm.train_dataloader()]
        device = torch.device(args.device)
        self.images = torch.cat([x for x, _ in batches]).to(device)
        self.labels = torch.cat([y for _, y in batches]).to(device)
        train = dm.splits["train"]
        self.pixels = train.images.cpu().permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = train.labels.cpu().tolist()
        self.stats = (dm.mean.tolist(), dm.std.tolist())


def raw_run(
    args: argparse.Namespace, model_name: str, data: RawData, workdir: Path
) -> dict[str, float]:
    """Images/s (wall and CPU) of the texts' loop: ``--steps`` steps after ``--warmup``."""
    import torch

    from cnnlab.build import build_model

    cfg = compose(run_overrides(args, model_name), workdir / "raw")
    torch.set_num_threads(thread_count(args.threads))
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
        running_loss += plain_step(model, optimizer, x, y)
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
    from cnnlab.train import train

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        run_dir = Path(tmp) / "run"
        timer_file = Path(tmp) / "timer.json"
        clock = clock_callback(timer_file, skip=args.warmup)
        train(compose([*run_overrides(args, model_name), *extra, *clock], run_dir))
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
    """Images/s of the training loader + on_after_batch_transfer (data/augment=flip_crop)."""
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


# ---- report ----------------------------------------------------------------------------------
def summarize(
    args: argparse.Namespace,
    raw: dict[str, list[dict]],
    fw: dict[str, list[dict]],
    var: dict[str, dict[str, list[dict]]],
    pipe: list[dict[str, float]],
    peers: dict[str, dict[str, list[dict]]],
) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name in args.models:
        entry: dict[str, Any] = {
            "raw_images_per_s": median(speeds(raw[name], "images_per_s")),
            "cnnlab_images_per_s": median(speeds(fw[name], "images_per_s")),
            "ratio": paired(fw[name], raw[name], "images_per_s"),
            "raw_images_per_cpu_s": median(speeds(raw[name], "images_per_cpu_s")),
            "cnnlab_images_per_cpu_s": median(speeds(fw[name], "images_per_cpu_s")),
            "ratio_cpu": paired(fw[name], raw[name], "images_per_cpu_s"),
            "epoch_end_s": median(speeds(fw[name], "epoch_end_s")),
            "raw_runs": raw[name],
            "cnnlab_runs": fw[name],
            "variants": {},
            "peers": {},
        }
        for peer, runs in peers.get(name, {}).items():
            entry["peers"][peer] = {
                "images_per_s": median(speeds(runs, "images_per_s")),
                "images_per_cpu_s": median(speeds(runs, "images_per_cpu_s")),
                "ratio": paired(fw[name], runs, "images_per_s"),
                "ratio_cpu": paired(fw[name], runs, "images_per_cpu_s"),
                "runs": runs,
            }
        for variant, runs in var.get(name, {}).items():
            entry["variants"][variant] = {
                "overrides": args.variant_overrides[variant],
                "images_per_s": median(speeds(runs, "images_per_s")),
                "images_per_cpu_s": median(speeds(runs, "images_per_cpu_s")),
                "ratio_to_raw": paired(runs, raw[name], "images_per_s"),
                "ratio_to_raw_cpu": paired(runs, raw[name], "images_per_cpu_s"),
                "ratio_to_default": paired(runs, fw[name], "images_per_s"),
                "ratio_to_default_cpu": paired(runs, fw[name], "images_per_cpu_s"),
                "runs": runs,
            }
        models[name] = entry
    pipeline = median(speeds(pipe, "images_per_s"))
    pipeline_cpu = median(speeds(pipe, "images_per_cpu_s"))
    return {
        "machine": machine(args.device),
        "settings": {
            "data": args.data_root or f"synthetic 3x{args.image_size}x{args.image_size}",
            "num_classes": args.num_classes,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "threads": args.threads,
            "peers": args.peers,
            "peer_models": args.peer_models,
            "loadavg_1min_start": args.loadavg_start,
            "loadavg_1min_end": loadavg(),
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
    }


def table(result: dict[str, Any]) -> str:
    """The markdown report printed at the end (the same numbers as the JSON file)."""
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, "
        f"torch {m['torch']}, lightning {m['lightning']}, device {m['device']}"
    ]
    lines += _training_table(result) + peer_table(result)
    if "full_row" in result:
        lines += full_row_lines(result["full_row"])
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
            f"| data pipeline {label} (loader + flip_crop) "
            f"| {result[f'pipeline_images_per{key}_s']:.0f} ({ratios} training) |"
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
    p.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"peers timed against cnnlab on --peer-models: any of {', '.join(PEERS)}, or none",
    )
    p.add_argument(
        "--peer-models",
        default="gdl_mlp,gdl_cnn,dlwpt_net",
        help="models of --peers (added to --models)",
    )
    p.add_argument(
        "--full-row",
        type=Path,
        default=None,
        metavar="DATA_DIR",
        help="also time one full gdl_cnn row on DATA_DIR/cifar10-jpeg: source loop vs cnnlab",
    )
    p.add_argument(
        "--full-row-cnnlab",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="cnnlab's side of --full-row from this existing run instead of a new run",
    )
    p.add_argument(
        "--full-row-epochs", type=int, default=None, help="epochs of --full-row (both sides)"
    )
    p.add_argument("--pipeline-batches", type=int, default=500)
    p.add_argument("--tiny", action="store_true", help="a few steps on 8x8 images (tests)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers to this file")
    p.add_argument("--workdir", type=Path, default=None, help="run directories (default: tmp)")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.image_size, args.pipeline_batches = 3, 2, 8, 5
    args.models = [m for m in args.models.split(",") if m]
    args.peers = [] if args.peers == "none" else [v for v in args.peers.split(",") if v]
    unknown = [v for v in args.peers if v not in PEERS]
    if unknown:
        p.error(f"unknown --peers {unknown}; choose from {list(PEERS)} or none")
    args.peer_models = [m for m in args.peer_models.split(",") if m] if args.peers else []
    args.models += [m for m in args.peer_models if m not in args.models]
    if args.full_row_cnnlab and not args.full_row:
        p.error("--full-row-cnnlab needs --full-row DATA_DIR")
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
    if args.repeats < 1 or args.steps < 1 or args.warmup < 1:
        p.error("--repeats, --steps and --warmup must be >= 1")
    args.device = device_of(args.device)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.loadavg_start = loadavg()
    from cnnlab.cli import quiet_third_party

    quiet_third_party()
    workdir_ctx = tempfile.TemporaryDirectory(prefix="cnnlab-bench-")
    workdir = args.workdir or Path(workdir_ctx.name)
    workdir.mkdir(parents=True, exist_ok=True)
    result = training_rounds(args, workdir)
    if args.full_row:
        result["full_row"] = full_row(
            args.full_row,
            thread_count(args.threads),
            workdir,
            cnnlab_run=args.full_row_cnnlab,
            epochs=args.full_row_epochs,
        )
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    workdir_ctx.cleanup()
    return result


def training_rounds(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Raw, cnnlab, variants and peers in turn, ``--repeats`` times; the data pipeline too."""
    data = {name: RawData(args, name, workdir) for name in args.models}
    pipeline_dm = datamodule(args, args.models[0], workdir, ["data/augment=flip_crop"])
    if not pipeline_dm.augment.enabled:
        raise RuntimeError("data/augment=flip_crop did not switch augmentation on")
    raw: dict[str, list[dict]] = {m: [] for m in args.models}
    fw: dict[str, list[dict]] = {m: [] for m in args.models}
    var: dict[str, dict[str, list[dict]]] = {m: {} for m in args.models}
    peers: dict[str, dict[str, list[dict]]] = {m: {} for m in args.models}
    pipe: list[dict[str, float]] = []
    for round_ in range(args.repeats):
        for name in args.models:
            raw[name].append(raw_run(args, name, data[name], workdir))
            fw[name].append(framework_run(args, name, [], workdir))
            for variant, overrides in args.variant_overrides.items():
                if name in args.variant_models or variant in args.custom_variants:
                    run = framework_run(args, name, overrides, workdir)
                    var[name].setdefault(variant, []).append(run)
            if name in args.peer_models:
                for peer in args.peers:
                    run = peer_run(args, name, peer, data[name], workdir)
                    peers[name].setdefault(peer, []).append(run)
        pipe.append(pipeline_run(args, pipeline_dm))
        print(f"round {round_ + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    return summarize(args, raw, fw, var, pipe, peers)


def peer_run(
    args: argparse.Namespace, name: str, peer: str, data: RawData, workdir: Path
) -> dict[str, float]:
    """One run of ``peer`` (scripts/bench_peers.py) on the model and data of cnnlab's side."""
    cfg = compose(run_overrides(args, name), workdir / peer)
    if peer == "template":
        return template_run(args, cfg, data.images, data.labels, workdir)
    return source_run(args, cfg, data.pixels, data.targets, data.stats)


if __name__ == "__main__":
    main()

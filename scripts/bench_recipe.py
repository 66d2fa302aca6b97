#!/usr/bin/env python
"""Seconds per training step and per epoch of an experiment's whole recipe.

``python scripts/bench_recipe.py [--experiment cifar10_fast] [--data-dir DIR] [--threads 2]
[--steps 20] [--warmup 3] [--json FILE]``

``scripts/bench_throughput.py`` compares the framework with other loops on the same small
model; this times one experiment as ``python -m cnnlab.train experiment=...`` trains it: its
model, batch size, optimizer, schedule, augmentation and callbacks (for cifar10_fast: the
airbench net, batches of 1024, alternating flips and translate, lookahead), in this process.
cnnlab's ``StepClock`` callback records the clock from the start of training batch
``--warmup`` to the end of the last one (``--warmup + --steps`` batches of one epoch), so the
window holds training steps only: no imports, data decoding, validation or test-time
augmentation. Seconds per epoch are seconds per step times the experiment's steps per epoch
(its training set over its batch size).

**raw**: the floor on this machine: the experiment's own network (built from its config, in
its memory format) and optimizer in a plain PyTorch loop over random batches of its size,
``loss.backward(); optimizer.step()``, no augmentation, no framework: what any loop training
this net pays per step. ``cnnlab ÷ raw`` near 1 means the framework adds nothing that counts.
``--anchor S`` also prints the ratio to another method's seconds per epoch (issue 16:
airbench94 on this project's CPU, float32, 2 threads: 189.1 s of training steps per epoch).

``--data-dir`` is the folder holding the experiment's dataset (``cifar10-jpeg/`` for the JPEG
copy, read with ``data=cifar10_jpeg``; ``cifar-10-batches-py/``); without it the images are
synthetic, of the experiment's shape and number. ``--tiny`` is a seconds-long run on a few
synthetic images and a narrower net, whatever ``--data-dir`` says (for tests).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_common import clock_callback, compose, loadavg, machine, markdown_table


def data_overrides(args: argparse.Namespace) -> list[str]:
    """The experiment's own data, the JPEG copy, or synthetic images of its shape."""
    if args.data_dir is None or args.tiny:
        size = "data.num_train=512" if args.tiny else "data.num_train=50000"
        return ["data=synthetic", "data.in_channels=3", "data.image_size=32", size]
    root = Path(args.data_dir).resolve()
    jpeg = ["data=cifar10_jpeg"] if (root / "cifar10-jpeg").is_dir() else []
    return [*jpeg, f"paths.data_dir={root}"]


def recipe_run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Train ``--warmup + --steps`` steps of the experiment; the timed window's figures."""
    from cnnlab.build import build_datamodule
    from cnnlab.train import train

    timer = workdir / "timer.json"
    overrides = [
        f"experiment={args.experiment}",
        *data_overrides(args),
        *_tiny(args),
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.warmup + args.steps}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "test_after_fit=false",
        "logger=none",
        "callbacks.progress_bar=null",
        "+trainer.enable_progress_bar=false",
        f"torch_threads={args.threads}",
        *clock_callback(timer, skip=args.warmup),
    ]
    cfg = compose(overrides, workdir / "run")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    steps_per_epoch = len(dm.train_dataloader())
    train(cfg)
    times = json.loads(timer.read_text())
    step_s = (times["t1"] - times["t0"]) / times["steps"]
    return {
        "experiment": args.experiment,
        "batch_size": int(cfg.data.batch_size),
        "steps_per_epoch": steps_per_epoch,
        "timed_steps": times["steps"],
        "s_per_step": step_s,
        "cpu_s_per_step": (times["cpu1"] - times["cpu0"]) / times["steps"],
        "s_per_epoch": step_s * steps_per_epoch,
        "images_per_s": cfg.data.batch_size / step_s,
    }


def raw_run(args: argparse.Namespace, workdir: Path) -> float:
    """Seconds per step of the experiment's network and optimizer in a plain loop."""
    import time

    import torch
    import torch.nn.functional as F

    from cnnlab.build import build_model
    from cnnlab.cluster import thread_count
    from cnnlab.optim import make_optimizer, parameter_groups

    cfg = compose([f"experiment={args.experiment}", *data_overrides(args), *_tiny(args)], workdir)
    torch.set_num_threads(thread_count(args.threads))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    size, channels = int(cfg.data.image_size), int(cfg.data.in_channels)
    x = torch.randn(int(cfg.data.batch_size), channels, size, size)
    y = torch.randint(0, int(cfg.data.num_classes), (len(x),))
    if cfg.module.get("channels_last"):
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    from hydra.utils import instantiate

    factory = instantiate(cfg.optimizer, _partial_=True)
    groups = parameter_groups(
        model, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.get("weight_decay", 0.0)
    )
    optimizer = make_optimizer(factory, groups)
    smoothing = float(cfg.module.get("label_smoothing", 0.0))
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / args.steps


def _tiny(args: argparse.Namespace) -> list[str]:
    return ["data.batch_size=64", "model.widths=[8,16]"] if args.tiny else []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="cifar10_fast")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding the dataset")
    p.add_argument("--threads", default="2", help="torch_threads (default 2, the anchor's)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the window")
    p.add_argument("--anchor", type=float, default=None, help="another method's s/epoch")
    p.add_argument("--tiny", action="store_true", help="a few small steps (tests)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers to this file")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: tmp)")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup = 3, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from cnnlab.cli import quiet_third_party

    quiet_third_party()
    start = loadavg()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cnnlab-recipe-", dir=args.workdir) as tmp:
        result = recipe_run(args, Path(tmp))
        result["raw_s_per_step"] = raw_run(args, Path(tmp) / "raw")
    result["ratio_to_raw"] = result["raw_s_per_step"] / result["s_per_step"]
    result["machine"] = {**machine("cpu"), "threads": args.threads}
    result["loadavg_1min"] = [start, loadavg()]
    if args.anchor:
        result["anchor_s_per_epoch"] = args.anchor
        result["ratio_to_anchor"] = args.anchor / result["s_per_epoch"]
    rows = [
        [args.experiment, f"{result['s_per_step']:.3f}", f"{result['s_per_epoch']:.1f}",
         f"{result['images_per_s']:.0f}", f"{result['raw_s_per_step']:.3f}",
         f"{result['ratio_to_raw']:.2f}"]
    ]  # fmt: skip
    header = ["experiment", "s/step", "s/epoch", "images/s", "raw s/step", "raw ÷ cnnlab s/step"]
    if args.anchor:
        header.append("anchor s/epoch ÷ this")
        rows[0].append(f"{result['ratio_to_anchor']:.2f}")
    print("\n".join(markdown_table(header, rows)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

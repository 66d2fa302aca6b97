"""The peers of ``scripts/bench_throughput.py``: what a user would write instead of cnnlab.

Each peer trains the model that cnnlab's ``build_model`` makes from the same composed config,
seeded the same way (so from the same initial weights), on the same images, batch size and
number of optimizer steps as cnnlab's side, and is timed over the same window: ``--warmup``
untimed steps, then ``--steps`` timed optimizer steps, in wall and process-CPU seconds. The
data loading of the timed batches is inside the window on every side (the per-sample work is
the point of the source peer).

* :func:`template_run`: the lightning-hydra-template's way. A plain LightningModule (the
  template's ``MNISTLitModule``: cross-entropy, a ``MeanMetric`` of the loss and a torchmetrics
  ``Accuracy``, both logged ``on_step=False, on_epoch=True, prog_bar=True``; Adam), an
  ``L.Trainer`` with its defaults (its ModelCheckpoint, progress bar and model summary: the
  Rich ones where ``rich`` is installed, as the template's own are) and the TensorBoard logger
  the template configures, writing into a temporary directory, and a ``DataLoader(
  TensorDataset(...), batch_size, shuffle=True, num_workers=0)`` over the same float images
  the raw loop holds (the template's MNIST data module style). cnnlab's ``StepClock`` callback
  takes the window, exactly as on cnnlab's side. Left out, since they act only at epoch ends,
  outside the window, or need the validation this benchmark does not run: the template's
  ReduceLROnPlateau scheduler, its EarlyStopping and its val/test metrics. Both Lightning
  sides fetch each batch one step ahead, so their windows hold the same loading work.
* :func:`source_run`: the sources' own loop, as the notebooks wrote it. A torchvision
  ``VisionDataset`` holding uint8 images and producing each sample as
  ``torchvision.datasets.CIFAR10.__getitem__`` does (``PIL.Image.fromarray`` -> ``transform``),
  ``transforms.Compose([ToTensor(), Normalize(mean, std)])`` (``Normalize`` only where the data
  is normalized beyond [0, 1], as the GDL texts do not), ``DataLoader(shuffle=True,
  batch_size)`` and ``for x, y in loader: opt.zero_grad(); loss = F.cross_entropy(model(x), y);
  loss.backward(); opt.step(); running_loss += loss.item()`` with ``torch.optim.Adam``. The
  images are the same uint8 images cnnlab's data module holds; nothing is downloaded.
* :func:`full_row`: one whole reproduction row, ``experiment=gdl_cnn`` on the CIFAR-10 JPEG copy
  (10 epochs, batch 32, Adam 5e-4, every epoch evaluated on the 10,000 test images, a final
  test), with the source's loop against ``python -m cnnlab.train``. See its docstring for what
  is compared and where the comparison is weaker.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import compose, markdown_table, plain_step

PEERS = ("template", "source")
# The row of --full-row, and what its cnnlab side runs.
FULL_ROW_EXPERIMENT = "gdl_cnn"


# ---- the template peer -----------------------------------------------------------------------
def template_module(net: Any, num_classes: int, lr: float) -> Any:
    """The lightning-hydra-template's ``MNISTLitModule``, its training half, around ``net``."""
    import lightning as L
    import torch
    from torchmetrics import MeanMetric
    from torchmetrics.classification import Accuracy

    class TemplateLitModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.criterion = torch.nn.CrossEntropyLoss()
            self.train_acc = Accuracy(task="multiclass", num_classes=num_classes)
            self.train_loss = MeanMetric()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def model_step(self, batch: Any) -> tuple[torch.Tensor, ...]:
            x, y = batch
            logits = self.forward(x)
            loss = self.criterion(logits, y)
            preds = torch.argmax(logits, dim=1)
            return loss, preds, y

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss, preds, targets = self.model_step(batch)
            self.train_loss(loss)
            self.train_acc(preds, targets)
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
            return loss

        def configure_optimizers(self) -> Any:
            return {"optimizer": torch.optim.Adam(self.parameters(), lr=lr, weight_decay=0.0)}

    return TemplateLitModule()


def template_run(
    args: argparse.Namespace, cfg: Any, images: Any, labels: Any, workdir: Path
) -> dict[str, float]:
    """Images/s (wall and CPU) of the template's Trainer over the window; ``images``/``labels``:
    the raw loop's float training images (on any device; the template keeps them on the CPU)."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    from cnnlab.build import build_model
    from cnnlab.callbacks import StepClock
    from cnnlab.cluster import thread_count

    torch.set_num_threads(thread_count(cfg.torch_threads))
    L.seed_everything(args.seed, workers=True, verbose=False)
    module = template_module(build_model(cfg), int(cfg.data.num_classes), lr=1e-3)
    dataset = TensorDataset(images.cpu(), labels.cpu())
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0)
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        clock = StepClock(str(Path(tmp) / "timer.json"), skip=args.warmup)
        trainer = L.Trainer(
            accelerator="gpu" if args.device == "cuda" else "cpu",
            devices=1,
            max_epochs=1,
            limit_train_batches=total,
            logger=TensorBoardLogger(save_dir=str(Path(tmp) / "tensorboard"), name=None),
            callbacks=[clock],
            default_root_dir=tmp,
        )
        trainer.fit(module, train_dataloaders=loader)
    times = clock.times
    return _window(args, times["t1"] - times["t0"], times["cpu1"] - times["cpu0"], times["steps"])


# ---- the source peer -------------------------------------------------------------------------
def source_dataset(pixels: Any, targets: list[int], mean: list[float], std: list[float]) -> Any:
    """A torchvision dataset of uint8 ``(N, H, W, C)`` images (numpy), producing each sample as
    ``torchvision.datasets.CIFAR10`` does, through ``ToTensor`` (and ``Normalize``)."""
    from PIL import Image
    from torchvision import transforms
    from torchvision.datasets import VisionDataset

    steps: list[Any] = [transforms.ToTensor()]
    if any(m != 0 for m in mean) or any(s != 1 for s in std):
        steps.append(transforms.Normalize(mean, std))

    class UInt8Images(VisionDataset):
        def __init__(self) -> None:
            super().__init__(root=None, transform=transforms.Compose(steps))
            # single-channel images as PIL mode "L" wants them, (N, H, W), as MNIST holds them
            self.data = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
            self.targets = targets

        def __getitem__(self, index: int) -> tuple[Any, int]:
            img, target = self.data[index], self.targets[index]
            img = Image.fromarray(img)
            if self.transform is not None:
                img = self.transform(img)
            return img, target

        def __len__(self) -> int:
            return len(self.data)

    return UInt8Images()


def source_run(
    args: argparse.Namespace, cfg: Any, pixels: Any, targets: list[int], stats: tuple
) -> dict[str, float]:
    """Images/s (wall and CPU) of the notebooks' loop over the window; ``pixels``: the data
    module's uint8 training images as numpy ``(N, H, W, C)``, ``stats``: its (mean, std)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from cnnlab.build import build_model
    from cnnlab.cluster import thread_count

    torch.set_num_threads(thread_count(cfg.torch_threads))
    L.seed_everything(args.seed, workers=True, verbose=False)
    device = torch.device(args.device)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(source_dataset(pixels, targets, *stats), batch_size=args.batch_size,
                        shuffle=True)  # fmt: skip
    total = args.warmup + args.steps
    model.train()
    running_loss = 0.0
    t0 = cpu0 = 0.0
    batches = iter(loader)
    for step in range(total):
        if step == args.warmup:  # before the batch is fetched: the window holds its loading
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, cpu0 = time.perf_counter(), time.process_time()
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        running_loss += plain_step(model, optimizer, x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _window(args, time.perf_counter() - t0, time.process_time() - cpu0, args.steps)


def _window(args: argparse.Namespace, wall: float, cpu: float, steps: int) -> dict[str, float]:
    if steps != args.steps:
        raise RuntimeError(f"timed {steps} steps instead of {args.steps}")
    images = args.steps * args.batch_size
    return {"images_per_s": images / wall, "images_per_cpu_s": images / cpu}


# ---- one full reproduction row ---------------------------------------------------------------
def full_row(
    data_dir: Path,
    threads: int,
    workdir: Path,
    cnnlab_run: Path | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    """``experiment=gdl_cnn`` on ``data_dir/cifar10-jpeg``: the source's loop against cnnlab.

    The source's side, in this process with ``threads`` torch threads: the JPEG files decoded
    once into uint8 arrays (as ``torchvision.datasets.CIFAR10`` holds its pickles; timed as
    ``load_s``), then the experiment's protocol in the notebooks' loop (``source_run``'s
    dataset and step; the experiment's epochs, batch size and Adam learning rate; after every
    epoch the test images evaluated, as the experiment's ``val_split: test`` does, with the data
    config's evaluation batch size; a last test pass, as cnnlab's test after fit).

    cnnlab's side: ``python -m cnnlab.train experiment=gdl_cnn data=cifar10_jpeg
    paths.data_dir=DATA_DIR torch_threads=THREADS`` in a subprocess, right after, under the same
    threads; its ``metrics.json`` ``wall_time_s`` (the fit, every validation, the test and the
    data loading, which reads cnnlab's decoded-image cache when an earlier run filled it; no
    imports or start-up) is compared with the source's total, and the process's own wall and
    CPU seconds (with start-up) are reported too. With ``cnnlab_run`` an existing run directory
    of that command stands in for it: no second long run, but the two sides then ran at
    different times, possibly under different load, so that comparison is weaker (the JSON
    says which it is, and the run's torch_threads must equal ``threads``).
    """
    import torch

    folder = Path(data_dir).resolve() / "cifar10-jpeg"
    if not folder.is_dir():
        raise SystemExit(f"--full-row: {folder} is not a folder (the CIFAR-10 JPEG copy)")
    overrides = [
        f"experiment={FULL_ROW_EXPERIMENT}",
        "data=cifar10_jpeg",
        f"paths.data_dir={folder.parent}",
        f"torch_threads={threads}",
    ]
    if epochs is not None:
        overrides.append(f"trainer.max_epochs={epochs}")
    cfg = compose(overrides, workdir / "full_row")
    recorded = _cnnlab_record(cnnlab_run, threads, int(cfg.trainer.max_epochs))
    t0, cpu0 = time.perf_counter(), time.process_time()
    names = list(cfg.data.class_names)
    train = _decode(folder / "train", names)
    test = _decode(folder / "test", names)
    load_s = time.perf_counter() - t0
    if recorded and recorded["train_images"] != len(train[1]):
        raise SystemExit(
            f"--full-row-cnnlab {cnnlab_run} trained on {recorded['train_images']} images, "
            f"{folder / 'train'} holds {len(train[1])}"
        )
    torch.set_num_threads(threads)
    source = _source_protocol(cfg, train, test)
    source.update(
        load_s=load_s,
        total_s=time.perf_counter() - t0,
        total_cpu_s=time.process_time() - cpu0,
        threads=threads,
    )
    cnnlab = recorded or _cnnlab_subprocess(overrides, workdir)
    return {
        "experiment": FULL_ROW_EXPERIMENT,
        "data": str(folder),
        "epochs": int(cfg.trainer.max_epochs),
        "batch_size": int(cfg.data.batch_size),
        "source": source,
        "cnnlab": cnnlab,
        # cnnlab's speed over the source's: source seconds / cnnlab seconds, with and without
        # the source's JPEG decoding (cnnlab's wall_time_s holds its own data loading)
        "ratio": source["total_s"] / cnnlab["wall_time_s"],
        "ratio_without_load": (source["total_s"] - load_s) / cnnlab["wall_time_s"],
    }


def _decode(split: Path, names: list[str]) -> tuple[Any, list[int]]:
    """Every ``split/<class>/*.jpg`` as uint8 ``(N, H, W, 3)`` and labels in class-name order."""
    import numpy as np
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(names):
        for path in sorted((split / name).glob("*.jpg")):
            with Image.open(path) as img:
                images.append(np.asarray(img.convert("RGB")))
            labels.append(label)
    if not images:
        raise SystemExit(f"--full-row: no images under {split}/<class>/*.jpg")
    return np.stack(images), labels


def _source_protocol(cfg: Any, train: tuple, test: tuple) -> dict[str, Any]:
    """The notebooks' loop over the experiment's epochs, each followed by a test evaluation."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from cnnlab.build import build_model

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.optimizer.lr))
    stats = _stats(cfg, train[0])
    train_set = source_dataset(*train, *stats)
    test_set = source_dataset(*test, *stats)
    loader = DataLoader(train_set, batch_size=int(cfg.data.batch_size), shuffle=True)
    eval_batch = int(cfg.data.get("eval_batch_size") or cfg.data.batch_size)
    test_loader = DataLoader(test_set, batch_size=eval_batch, shuffle=False)

    def evaluate() -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        return correct / len(test_set)

    epochs, accuracies = [], []
    for _ in range(int(cfg.trainer.max_epochs)):
        start = time.perf_counter()
        model.train()
        running_loss = 0.0
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        accuracies.append(evaluate())
        epochs.append(time.perf_counter() - start)
    start = time.perf_counter()
    test_acc = evaluate()
    return {
        "epoch_s": epochs,
        "test_s": time.perf_counter() - start,
        "val_acc": accuracies,
        "test_acc": test_acc,
        "train_loss_last_epoch": running_loss / len(loader),
    }


def _stats(cfg: Any, pixels: Any) -> tuple[list[float], list[float]]:
    """The data config's normalization; values left null computed on the training images."""
    import torch

    from cnnlab.data.normalize import channel_stats

    mean, std = cfg.data.normalize.get("mean"), cfg.data.normalize.get("std")
    if mean is None or std is None:
        computed = channel_stats(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        mean, std = (computed[0] if mean is None else mean), (computed[1] if std is None else std)
    return [float(m) for m in mean], [float(s) for s in std]


def _cnnlab_record(run: Path | None, threads: int, epochs: int) -> dict[str, Any] | None:
    """An existing cnnlab run of the row: its metrics.json, checked to be that row."""
    if run is None:
        return None
    from omegaconf import OmegaConf

    metrics = json.loads((run / "metrics.json").read_text())
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    problems = []
    if metrics.get("status") != "completed" or metrics.get("epochs") != epochs:
        problems.append(f"status {metrics.get('status')}, {metrics.get('epochs')} epochs")
    if str(config.get("torch_threads")) != str(threads):
        problems.append(f"torch_threads={config.get('torch_threads')}, not {threads}")
    if (metrics.get("data") or {}).get("name") != "cifar10_jpeg":
        problems.append("not data=cifar10_jpeg")
    if problems:
        raise SystemExit(f"--full-row-cnnlab {run}: not this row ({'; '.join(problems)})")
    return {
        "from": f"existing run {run} (not timed by this invocation)",
        "wall_time_s": metrics["wall_time_s"],
        "test_acc": metrics.get("test/acc"),
        "val_acc_best": metrics.get("val/acc_best"),
        "train_images": metrics["data"]["sizes"]["train"],
    }


def _cnnlab_subprocess(overrides: list[str], workdir: Path) -> dict[str, Any]:
    run_dir = workdir / "full_row_cnnlab"
    argv = [sys.executable, "-m", "cnnlab.train", *overrides, f"hydra.run.dir={run_dir}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    log = workdir / "full_row_cnnlab.log"
    with log.open("w") as out:
        # from the current directory, as a user runs it: its outputs/cache is the one they have
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(argv[1:])} failed ({done.returncode}):\n{tail}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "from": "timed by this invocation, right after the source's side",
        "command": " ".join(argv[1:]),
        "wall_time_s": metrics["wall_time_s"],
        "process_s": wall,
        "process_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "test_acc": metrics.get("test/acc"),
        "val_acc_best": metrics.get("val/acc_best"),
    }


# ---- report ----------------------------------------------------------------------------------
def peer_table(result: dict[str, Any]) -> list[str]:
    """cnnlab against each peer: img/s and the ratios, wall and CPU."""
    peers = result["settings"]["peers"]
    rows = []
    for name, e in result["models"].items():
        if e["peers"]:
            row = [name, f"{e['cnnlab_images_per_s']:.0f}"]
            for peer in peers:
                p = e["peers"][peer]
                row += [f"{p['images_per_s']:.0f}", f"{p['ratio']:.3f}", f"{p['ratio_cpu']:.3f}"]
            rows.append(row)
    if not rows:
        return []
    header = ["peers", "cnnlab img/s"]
    for peer in peers:
        header += [f"{peer} img/s", f"peers/{peer}/ratio", f"peers/{peer}/ratio_cpu"]
    return ["", *markdown_table(header, rows)]


def full_row_lines(row: dict[str, Any]) -> list[str]:
    src, fw = row["source"], row["cnnlab"]
    return [
        "",
        f"Full row {row['experiment']} ({row['epochs']} epochs, batch {row['batch_size']}, "
        f"{row['data']}, {src['threads']} threads): source loop {src['total_s']:.0f} s "
        f"({src['load_s']:.0f} s of it decoding the JPEGs; test acc {src['test_acc']:.4f}), "
        f"cnnlab wall_time_s {fw['wall_time_s']:.0f} s (test acc {fw['test_acc']:.4f}; "
        f"{fw['from']}): cnnlab {row['ratio']:.2f}x the source's speed "
        f"({row['ratio_without_load']:.2f}x without the source's decoding)",
    ]

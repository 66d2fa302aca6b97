"""ClassifierModule: the one LightningModule that trains any image-classification architecture."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import Accuracy

from cnnlab.errors import ConfigError, NonFiniteLossError

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]

_NO_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


class ClassifierModule(L.LightningModule):
    """Wraps an ``nn.Module`` returning logits with loss, metrics, optimizer and scheduler.

    A model with one output unit is a binary classifier trained with BCE-with-logits; any other
    output width uses cross-entropy. ``l2_lambda`` adds ``l2_lambda * sum(w**2)`` over all
    trainable parameters to the loss (the explicit penalty of the texts, distinct from the
    optimizer's weight decay). ``decay_norm_and_bias=False`` exempts biases and normalization
    weights from weight decay; ``norm_lr_scale`` multiplies the learning rate of normalization
    layers (and divides their weight decay, so the decay per step is unchanged).
    ``channels_last=True`` keeps the model's 4-D weights and the image batches in
    ``torch.channels_last`` memory format (faster convolutions on GPUs with tensor cores and on
    some CPUs); ``compile=True`` wraps the model with ``torch.compile``.
    ``label_smoothing`` softens the training targets (cross-entropy's own option; for BCE the
    targets move towards 0.5); evaluation losses use the hard targets. ``eval_flip_tta=True``
    averages the logits of each evaluation image and its mirror image (test-time augmentation).

    The training step does as little Python as it can: the per-batch loss and predictions are
    queued as tensors and folded into the epoch metrics every ``log_every_n_steps`` steps, at
    the epoch end and whenever a checkpoint is taken (``state_dict``), and ``train/loss_step``
    is logged only on the steps Lightning writes to the loggers. No step reads a value back
    from the device except those logging steps.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: dict[str, Any] | None = None,
        l2_lambda: float = 0.0,
        decay_norm_and_bias: bool = True,
        class_names: Sequence[str] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        label_smoothing: float = 0.0,
        eval_flip_tta: bool = False,
        norm_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_config = scheduler or {}
        self.l2_lambda = float(l2_lambda)
        self.decay_norm_and_bias = decay_norm_and_bias
        if norm_lr_scale <= 0:
            raise ConfigError(
                f"module.norm_lr_scale={norm_lr_scale!r} must be positive "
                "(1: the optimizer's lr for every parameter)."
            )
        self.norm_lr_scale = float(norm_lr_scale)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else None
        self.compile = compile
        self.channels_last = bool(channels_last)
        if not 0 <= label_smoothing < 1:
            raise ConfigError(
                f"module.label_smoothing={label_smoothing!r} must be in [0, 1) (0: hard targets)."
            )
        self.label_smoothing = float(label_smoothing)
        self.eval_flip_tta = bool(eval_flip_tta)
        self.binary = self.num_classes == 2 and _output_width(model) == 1
        task = "binary" if self.binary else "multiclass"
        metric_kwargs: dict[str, Any] = {"task": task}
        if not self.binary:
            metric_kwargs["num_classes"] = self.num_classes
        self.train_acc = Accuracy(**metric_kwargs)
        self.val_acc = Accuracy(**metric_kwargs)
        self.test_acc = Accuracy(**metric_kwargs)
        per_class_kwargs = {"task": "multiclass", "num_classes": self.num_classes, "average": None}
        self.test_acc_per_class = Accuracy(**per_class_kwargs)
        self.train_loss = MeanMetric()
        # Saved in checkpoints, so a run resumed mid-epoch reports the same epoch accuracy.
        self.train_loss.persistent(True)
        self.train_acc.persistent(True)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        # Training losses and (predictions, targets) not yet folded into train_loss/train_acc.
        self._pending_losses: list[torch.Tensor] = []
        self._pending_preds: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_since = (0, 0)  # (global step, epoch) of the first queued loss
        self.register_state_dict_pre_hook(_flush_before_state_dict)
        self.best_val_acc: float | None = None
        self.best_epoch = -1
        # Plain config dict saved into checkpoints so that eval can rebuild the model.
        self.run_config: dict[str, Any] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name around every hook call, some 40 times a training step;
        # nn.Module.__setattr__ (parameter/module/buffer checks) makes that cost ~3 us each.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        # The loaders yield (images, labels): move the two tensors directly rather than walking
        # the batch as a generic collection (tens of microseconds a step for small models).
        if type(batch) in (tuple, list) and all(isinstance(t, torch.Tensor) for t in batch):
            non_blocking = device.type not in ("cpu", "mps")  # as Lightning's own transfer
            return type(batch)(t.to(device, non_blocking=non_blocking) for t in batch)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # ---- forward and loss -------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _loss_and_preds(
        self, logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.binary:
            logits = logits.squeeze(-1)
            soft = targets.float() * (1 - smoothing) + 0.5 * smoothing
            loss = F.binary_cross_entropy_with_logits(logits, soft)
            return loss, (logits > 0).long()
        loss = F.cross_entropy(logits, targets, label_smoothing=smoothing)
        return loss, logits.argmax(dim=-1)

    def l2_penalty(self) -> torch.Tensor:
        """Sum of squared trainable parameters (the texts' explicit L2 term, without lambda)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        data_loss, preds = self._loss_and_preds(self(x), y, self.label_smoothing)
        loss = data_loss + self.l2_lambda * self.l2_penalty() if self.l2_lambda else data_loss
        # A metric update per step costs more Python than a small model's step: queue the
        # tensors, fold them in on logging steps (bounded memory, one device sync there).
        if not self._pending_losses:  # the step the queue starts at, to name a NaN's step
            self._pending_since = (self.trainer.global_step, self.current_epoch)
        self._pending_losses.append(data_loss.detach())
        self._pending_preds.append((preds, y))
        if self._step_is_logged():
            self._flush_train_metrics()
            # self.log is costly too; Lightning writes step metrics only on these steps.
            self.log("train/loss_step", data_loss.detach(), on_step=True, on_epoch=False)
        return loss

    def _step_is_logged(self) -> bool:
        """Whether Lightning writes step metrics to the loggers after this training step."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        if not every:
            return False
        return (
            (trainer.global_step + 1) % every == 0
            or trainer.should_stop
            or bool(trainer.fast_dev_run)
        )

    def _flush_train_metrics(self) -> None:
        """Fold the queued training losses and predictions into train_loss / train_acc."""
        if self._pending_losses:
            losses = torch.stack(self._pending_losses)
            self._pending_losses = []
            _raise_on_non_finite(losses, *self._pending_since)
            # One update with a vector is the mean over batches, as one update per batch.
            self.train_loss.update(losses)
        if self._pending_preds:
            preds, targets = zip(*self._pending_preds, strict=True)
            self.train_acc.update(torch.cat(preds), torch.cat(targets))
            self._pending_preds = []

    def on_train_epoch_end(self) -> None:
        self._flush_train_metrics()
        loss = self.train_loss.compute()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"Training loss became {loss.item()} in epoch {self.current_epoch} "
                f"(step {self.global_step}). Lower optimizer.lr, enable gradient clipping "
                "(trainer.gradient_clip_val) or check the input normalization."
            )
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc.compute(), prog_bar=True)
        self.train_loss.reset()
        self.train_acc.reset()

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        if self.eval_flip_tta:
            logits = (logits + self(x.flip(-1))) / 2
        loss, preds = self._loss_and_preds(logits, y)
        getattr(self, f"{stage}_loss").update(loss)
        getattr(self, f"{stage}_acc").update(preds, y)
        if stage == "test":
            self.test_acc_per_class.update(preds, y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)
        self.log("val/acc", acc, prog_bar=True, sync_dist=True)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            value = float(acc)
            if self.best_val_acc is None or value > self.best_val_acc:
                self.best_val_acc, self.best_epoch = value, self.current_epoch
            self.log("val/acc_best", self.best_val_acc, sync_dist=True)
            self.log("val/best_epoch", float(self.best_epoch), sync_dist=True)
        self.val_loss.reset()
        self.val_acc.reset()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss.compute(), sync_dist=True)
        self.log("test/acc", self.test_acc.compute(), sync_dist=True)
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        for name, value in zip(names, self.test_acc_per_class.compute(), strict=True):
            self.log(f"test/acc_class/{name}", value, sync_dist=True)
        for metric in (self.test_loss, self.test_acc, self.test_acc_per_class):
            metric.reset()

    def on_fit_start(self) -> None:
        # Models with a data-dependent initialization (e.g. airbench's whitening filters) get it
        # from the training images of a fresh run; a resumed run has it in its checkpoint.
        init_from_data = getattr(self.model, "init_from_data", None)
        if init_from_data is None or self.trainer.ckpt_path is not None:
            return
        datamodule = self.trainer.datamodule
        count = int(getattr(self.model, "data_init_images", 0))
        if not hasattr(datamodule, "sample_train_images"):
            raise ConfigError(
                f"model {type(self.model).__name__} initializes itself from training images, "
                f"which the data module {type(datamodule).__name__} cannot provide; use an "
                "in-memory dataset (e.g. data.in_memory=true)."
            )
        images = datamodule.sample_train_images(count)
        init_from_data(images)
        log.info("%s initialized from %d training images.", type(self.model).__name__, len(images))

    # ---- checkpoint state -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not all(torch.isfinite(p).all() for p in self.parameters()):
            # Refusing to save keeps the last good last.ckpt/best.ckpt on disk.
            raise NonFiniteLossError(
                f"The weights became NaN or infinite by step {self.global_step} (epoch "
                f"{self.current_epoch}); no checkpoint was written over the last good one. Lower "
                "optimizer.lr, enable gradient clipping (trainer.gradient_clip_val) or check the "
                "input normalization."
            )
        checkpoint["cnnlab"] = {
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "config": self.run_config,
            "rng": rng_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("cnnlab", {})
        self.best_val_acc = state.get("best_val_acc")
        self.best_epoch = int(state.get("best_epoch", -1))
        if state.get("rng") and self.trainer.state.fn == "fit":
            restore_rng_states(state["rng"])

    # ---- optimization -----------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.compile and not isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule):
            self.model = torch.compile(self.model)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in up to three groups: normalization-layer parameters (lr x
        ``norm_lr_scale``, weight decay / ``norm_lr_scale``, or none without
        ``decay_norm_and_bias``), other biases (no decay without ``decay_norm_and_bias``), and
        the rest. One group when neither option is in use."""
        scale = self.norm_lr_scale
        if self.decay_norm_and_bias and scale == 1:
            return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        norm, bias, rest = [], [], []
        for module in self.model.modules():
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                if isinstance(module, _NO_DECAY_TYPES):
                    norm.append(param)
                elif name == "bias" and not self.decay_norm_and_bias:
                    bias.append(param)
                else:
                    rest.append(param)
        decay = self._optimizer_keyword("weight_decay", 0.0) if self.decay_norm_and_bias else 0.0
        # Weight decay divided by the scale: the decay per step (lr * weight_decay) is unchanged.
        norm_group: dict[str, Any] = {"params": norm, "weight_decay": decay / scale}
        if scale != 1:
            norm_group["lr"] = self._optimizer_keyword("lr") * scale
        groups = [{"params": rest}, norm_group]
        if bias:
            groups.append({"params": bias, "weight_decay": 0.0})
        return groups

    def _optimizer_keyword(self, name: str, default: Any = None) -> Any:
        value = getattr(self.optimizer_factory, "keywords", {}).get(name, default)
        if value is None:
            raise ConfigError(
                f"module.norm_lr_scale needs optimizer.{name} in the optimizer config."
            )
        return value

    def configure_optimizers(self) -> Any:
        try:
            optimizer = self.optimizer_factory(params=self.parameter_groups())
        except RuntimeError as err:
            if "fused" not in str(err):
                raise
            raise ConfigError(
                f"optimizer.fused=true is not supported here ({err}). Set optimizer.fused=false "
                "to use PyTorch's per-parameter implementation."
            ) from err
        factory = self.scheduler_config.get("scheduler")
        if factory is None:
            return optimizer
        keywords = getattr(factory, "keywords", {})
        if "total_steps" in keywords and keywords["total_steps"] is None:
            factory = _with_keywords(
                factory, total_steps=int(self.trainer.estimated_stepping_batches)
            )
        if isinstance(keywords.get("max_lr"), (int, float)) and len(optimizer.param_groups) > 1:
            # One-cycle sets each group's lr from max_lr: keep the groups' lr ratios.
            base = optimizer.param_groups[0]["lr"]
            max_lr = [keywords["max_lr"] * g["lr"] / base for g in optimizer.param_groups]
            factory = _with_keywords(factory, max_lr=max_lr)
        config = {k: v for k, v in self.scheduler_config.items() if k != "scheduler"}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": factory(optimizer), **config}}


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain containers (loadable with weights_only)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Undo :func:`rng_states`: a resumed run draws the same random numbers (dropout, ...)."""
    import random

    import numpy as np

    random.setstate(_tuples(states["python"]))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _raise_on_non_finite(losses: torch.Tensor, first_step: int, epoch: int) -> None:
    """Name the first training step whose loss was NaN or infinite (checked where the queued
    losses are read anyway: logging steps, epoch ends, checkpoints; no extra device sync)."""
    bad = ~torch.isfinite(losses)
    if bad.any():
        index = int(bad.nonzero()[0, 0])
        raise NonFiniteLossError(
            f"Training loss became {losses[index].item()} at step {first_step + index + 1} "
            f"(epoch {epoch}). Lower optimizer.lr, enable gradient clipping "
            "(trainer.gradient_clip_val) or check the input normalization."
        )


def _flush_before_state_dict(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    """Checkpoints hold the epoch's training metrics up to the current step."""
    module._flush_train_metrics()


def _with_keywords(factory: Any, **keywords: Any) -> Any:
    import functools

    return functools.partial(factory.func, *factory.args, **{**factory.keywords, **keywords})


def _output_width(model: nn.Module) -> int | None:
    """The number of logits the model produces, when its ``num_outputs`` attribute says so."""
    return getattr(model, "num_outputs", None)

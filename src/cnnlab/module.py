"""ClassifierModule: the one LightningModule that trains any image-classification architecture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import Accuracy

from cnnlab.callbacks import planned_steps
from cnnlab.finite_checks import check_epoch_loss, check_step_losses, check_weights
from cnnlab.models.base import init_from_training_data
from cnnlab.module_plumbing import FastStepModule, evaluated_as
from cnnlab.optim import OptimizerFactory, configure_optimizers
from cnnlab.test_time_augmentation import tta_logits


class ClassifierModule(FastStepModule):
    """Wraps a network returning logits with loss, metrics, optimizer and scheduler.

    ``model``, ``optimizer`` (a partial taking ``params``) and ``scheduler`` may be given as
    Hydra configs (``_target_`` dicts; ``cnnlab.train`` does): they are then saved as
    hyperparameters, and ``ClassifierModule.load_from_checkpoint(path)`` rebuilds the module.
    One output unit means a binary classifier trained with BCE-with-logits; otherwise
    cross-entropy. The other options are documented in ``conf/module/classifier.yaml``.
    """

    def __init__(
        self,
        model: nn.Module | Mapping[str, Any],
        optimizer: OptimizerFactory | Mapping[str, Any],
        num_classes: int,
        scheduler: Mapping[str, Any] | None = None,
        l2_lambda: float = 0.0,
        norm_weight_decay: float | None = None,
        bias_weight_decay: float | None = None,
        norm_lr_scale: float = 1.0,
        class_names: Sequence[str] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        label_smoothing: float = 0.0,
        eval_flip_tta: bool = False,
        eval_translate_tta: int = 0,
        tta_in_validation: bool = True,
        eval_norm: str = "running",
        eval_dropout: bool = False,
    ) -> None:
        # eval_dropout draws its masks from the training streams: they are put back after
        # evaluation, so training goes on as with eval_dropout=false (the same weights)
        super().__init__(channels_last, compile, keep_training_rng=bool(eval_dropout))
        from cnnlab.build import built, is_config  # build imports this module

        objects = [k for k, v in (("model", model), ("optimizer", optimizer)) if not is_config(v)]
        self.save_hyperparameters(ignore=objects, logger=False)
        self.model = built(model, "model")
        self.optimizer_factory = built(optimizer, "optimizer")
        self.scheduler_config = dict(scheduler or {})
        self.l2_lambda = float(l2_lambda)
        self.norm_weight_decay, self.bias_weight_decay = norm_weight_decay, bias_weight_decay
        self.norm_lr_scale = float(norm_lr_scale)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else None
        self.label_smoothing = float(label_smoothing)
        self.eval_flip_tta = bool(eval_flip_tta)
        self.eval_translate_tta = int(eval_translate_tta)
        self.tta_in_validation = bool(tta_in_validation)
        self.eval_norm = eval_norm
        self.eval_dropout = eval_dropout
        self.binary = self.num_classes == 2 and getattr(self.model, "num_outputs", None) == 1
        metric: dict[str, Any] = {"task": "binary"} if self.binary else {"task": "multiclass"}
        if not self.binary:
            metric["num_classes"] = self.num_classes
        self.train_acc, self.val_acc, self.test_acc = (Accuracy(**metric) for _ in range(3))
        self.test_acc_per_class = Accuracy("multiclass", num_classes=self.num_classes, average=None)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # Saved in checkpoints, so a run resumed mid-epoch reports the same epoch accuracy.
        self.train_loss.persistent(True)
        self.train_acc.persistent(True)
        self.best_val_acc: float | None = None
        self.best_epoch = -1
        # Plain config dict saved into checkpoints so that eval can rebuild the model and data.
        self.run_config: dict[str, Any] | None = None

    # ---- loss -----------------------------------------------------------------------------------
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

    # ---- training -----------------------------------------------------------------------------
    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        data_loss, preds = self._loss_and_preds(self(x), y, self.label_smoothing)
        loss = data_loss + self.l2_lambda * self.l2_penalty() if self.l2_lambda else data_loss
        self.defer("train_loss", data_loss.detach())
        self.defer("train_acc", preds, y)
        if self.step_is_logged():
            self.flush_deferred()
            self.log("train/loss_step", data_loss.detach(), on_step=True, on_epoch=False)
        return loss

    def check_deferred(self, metric: str, values: torch.Tensor, steps: list[int]) -> None:
        if metric == "train_loss":  # a NaN is named at its own step
            check_step_losses(values, steps, self.current_epoch)

    def on_train_epoch_end(self) -> None:
        self.flush_deferred()
        loss = self.train_loss.compute()
        check_epoch_loss(loss, self.current_epoch, self.global_step)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc.compute(), prog_bar=True)
        self.train_loss.reset()
        self.train_acc.reset()

    # ---- evaluation -------------------------------------------------------------------------
    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        # eval_norm=batch / eval_dropout: as a model never put in eval mode (DLWPT, NB notebooks)
        with evaluated_as(self.model, self.eval_norm, self.eval_dropout):
            if stage == "val" and not self.tta_in_validation:
                logits = self(x)
            else:
                logits = tta_logits(self, x, self.eval_flip_tta, self.eval_translate_tta)
        loss, preds = self._loss_and_preds(logits, y)
        getattr(self, f"{stage}_loss").update(loss)
        getattr(self, f"{stage}_acc").update(preds, y)
        if stage == "test":
            self.test_acc_per_class.update(preds, y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
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
        super().on_test_epoch_end()
        self.log("test/loss", self.test_loss.compute(), sync_dist=True)
        self.log("test/acc", self.test_acc.compute(), sync_dist=True)
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        for name, value in zip(names, self.test_acc_per_class.compute(), strict=True):
            self.log(f"test/acc_class/{name}", value, sync_dist=True)
        for metric in (self.test_loss, self.test_acc, self.test_acc_per_class):
            metric.reset()

    # ---- set-up and checkpoint state ----------------------------------------------------------
    def on_fit_start(self) -> None:
        # A resumed run has the data-driven init (if any) in its checkpoint.
        if self.trainer.ckpt_path is None:
            init_from_training_data(self.model, self.trainer.datamodule)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_weights(self, self.current_epoch, self.global_step)
        super().on_save_checkpoint(checkpoint)
        checkpoint["cnnlab"] = {
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "config": self.run_config,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("cnnlab", {})
        self.best_val_acc = state.get("best_val_acc")
        self.best_epoch = int(state.get("best_epoch", -1))

    # ---- optimization -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        return configure_optimizers(
            self.model,
            self.optimizer_factory,
            self.scheduler_config,
            lambda: planned_steps(self.trainer),
            norm_weight_decay=self.norm_weight_decay,
            bias_weight_decay=self.bias_weight_decay,
            norm_lr_scale=self.norm_lr_scale,
        )

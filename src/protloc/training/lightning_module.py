"""The Lightning module of training: backbone + loss, the optimiser and schedule, exact epoch metrics."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MultilabelStatScores

from protloc.model.network import PackagedNetwork, create_model
from protloc.training.config import RESOLUTION_SCHEDULES, TrainConfig
from protloc.training.losses import create_loss
from protloc.training.run_folder import append_metrics_row


def macro_f1_from_stats(stats: torch.Tensor) -> float:
    """Macro F1 over classes with support > 0 from torchmetrics stat scores ``(C, 5) = tp, fp, tn, fn, sup``."""
    tp, fp, _, fn, support = (stats[:, i].double() for i in range(5))
    denominator = 2 * tp + fp + fn
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp))
    present = support > 0
    return float(f1[present].mean()) if bool(present.any()) else 0.0


class LocalizationModule(L.LightningModule):
    """A multi-label classifier: the packaged network (normalisation + backbone) -> one logit per class; loss on
    logits; macro F1 over each whole epoch.

    The network trained is the one packaged (:class:`~protloc.model.network.PackagedNetwork`): batches arrive as
    ``uint8`` on the device and the network normalises them itself, with the per-channel ``mean`` and ``std``
    of the training images, so training and every later prediction share one normalisation.
    """

    def __init__(
        self,
        config: TrainConfig,
        pos_weight: list[float] | None = None,
        total_steps: int = 1,
        *,
        num_classes: int,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.total_steps = max(1, total_steps)
        channels = len(config.channels)
        backbone = create_model(
            config.model,
            channels,
            num_classes,
            pretrained=config.pretrained,
            image_size=config.image_size,
            drop_rate=config.drop_rate,
        )
        self.model: torch.nn.Module = PackagedNetwork(
            backbone,
            list(mean) if mean is not None else [0.0] * channels,
            list(std) if std is not None else [1.0] * channels,
        )
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Weight averaging: an exponential moving average of the weights (and BatchNorm statistics) is what
        # validation scores, the best checkpoint keeps and the package ships (``ema`` = its decay; 0 = off).
        self.ema_model: torch.nn.Module | None = None
        if config.ema > 0:
            self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.training_progress = 0.0
        """share of the training done, 0-1: set by the time budget every step, else steps / planned steps."""
        weight = torch.tensor(pos_weight) if pos_weight is not None else None
        self.loss = create_loss(config.loss, gamma=config.focal_gamma, pos_weight=weight)
        # Epoch metrics are torchmetrics states: exact over the whole epoch and synced across DDP ranks, in
        # the module's own hooks, which every rank runs in the same order (logging never syncs).
        self.train_stats = MultilabelStatScores(num_labels=num_classes, average=None, validate_args=False)
        self.val_stats = MultilabelStatScores(num_labels=num_classes, average=None, validate_args=False)
        self.train_loss_mean = MeanMetric()
        self.val_loss_mean = MeanMetric()
        self.epoch_metrics: dict[str, float] = {}
        self._epoch_started = time.perf_counter()
        self._last_batch_end = self._epoch_started
        self._epoch_images = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def training_images(self, images: torch.Tensor) -> torch.Tensor:
        """The batch at the side the resolution schedule gives this point of training (full size at the end)."""
        stages = RESOLUTION_SCHEDULES[self.config.resolution_schedule]
        scale = next((s for until, s in stages if self.training_progress < until), 1.0)
        side = max(16, round(self.config.image_size * scale / 8) * 8)
        if side >= images.shape[-1]:
            return images
        pixels = images.float().mul_(1.0 / 255.0) if images.dtype == torch.uint8 else images
        return torch.nn.functional.interpolate(pixels, size=(side, side), mode="bilinear", antialias=True)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.config.max_time is None:  # without a time budget, progress counts steps
            self.training_progress = min(1.0, self.global_step / self.total_steps)
        logits = self(self.training_images(batch["image"]))
        loss = self.loss(logits, batch["label"])
        self.train_stats.update(torch.sigmoid(logits.detach().float()), batch["label"].int())
        self.train_loss_mean.update(loss.detach(), weight=len(logits))
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(logits))
        self._epoch_images += len(logits)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.averaged(batch["image"])
        loss = self.loss(logits, batch["label"])
        self.val_stats.update(torch.sigmoid(logits.float()), batch["label"].int())
        self.val_loss_mean.update(loss, weight=len(logits))

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()
        self._last_batch_end = self._epoch_started
        self._epoch_images = 0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema_model is not None:
            self._update_average()
        self._last_batch_end = time.perf_counter()

    def averaged(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the averaged network (the trained one when weight averaging is off)."""
        if self.ema_model is None:
            return self(images)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.ema_model(images)

    @torch.no_grad()
    def _update_average(self) -> None:
        assert self.ema_model is not None
        updates: torch.Tensor = self.ema_updates  # type: ignore[assignment]
        n = int(updates)
        # the decay grows with the updates, so early, random weights are forgotten within a few steps
        decay = min(self.config.ema, (1.0 + n) / (10.0 + n))
        averaged = [p for p in self.ema_model.state_dict().values() if p.is_floating_point()]
        current = [p for p in self.model.state_dict().values() if p.is_floating_point()]
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for mine, theirs in zip(self.ema_model.buffers(), self.model.buffers(), strict=True):
            if not mine.is_floating_point():
                mine.copy_(theirs)
        updates += 1

    def train_images_per_second(self) -> float:
        """Training throughput of the current epoch: data loading and steps, validation excluded."""
        seconds = self._last_batch_end - self._epoch_started
        return self._epoch_images * self.trainer.world_size / max(seconds, 1e-9)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_stats.reset()
            return
        f1 = macro_f1_from_stats(self.val_stats.compute())
        val_loss = float(self.val_loss_mean.compute())
        self.val_stats.reset()
        self.val_loss_mean.reset()
        self.log("val_macro_f1", f1, prog_bar=True)
        self.log("val_loss", val_loss)
        self.epoch_metrics.update(val_macro_f1=f1, val_loss=val_loss)

    def on_train_epoch_end(self) -> None:
        train_f1 = macro_f1_from_stats(self.train_stats.compute())
        train_loss = float(self.train_loss_mean.compute())
        self.train_stats.reset()
        self.train_loss_mean.reset()
        self.log("train_macro_f1", train_f1)
        seconds = time.perf_counter() - self._epoch_started
        row = {
            "epoch": self.current_epoch,
            "step": self.global_step,
            "train_loss": train_loss,
            "train_macro_f1": train_f1,
            "val_loss": self.epoch_metrics.get("val_loss", float("nan")),
            "val_macro_f1": self.epoch_metrics.get("val_macro_f1", float("nan")),
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_second": self.train_images_per_second(),
        }
        if self.trainer.is_global_zero:
            append_metrics_row(Path(self.config.out) / "metrics.csv", row)

    def configure_optimizers(self) -> Any:
        config = self.config
        params = self.model.parameters()
        optimizer: torch.optim.Optimizer
        if config.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        elif config.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=config.lr)
        else:
            optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True
            )
        if config.scheduler == "none" or config.max_time:
            return optimizer  # with a time budget, protloc.training.budget.TimeBudget sets the rate every step
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if config.scheduler == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=config.lr,
                total_steps=self.total_steps,
                pct_start=0.2,
                div_factor=20.0,
                final_div_factor=200.0,
            )
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

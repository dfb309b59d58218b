"""A wall-clock budget that drives the learning rate: training ends at the deadline, annealed.

Planning epochs from a throughput measured over a few steps misjudges a shared machine both ways (a busy
neighbour during the measurement plans too few epochs and leaves the budget unused; one arriving later
overruns it), and a hard stop at ``max_time`` cuts a one-cycle schedule off at a high learning rate. Here
the schedule is a function of *progress*, re-planned at every step:

    progress = max(elapsed / training_end, steps_done / step_ceiling)

``training_end`` is projected from the measured step time (a short moving average, so it follows a
neighbour who starts or stops competing for the cores) and validation time (each pass measured; before the
first, guessed from the step time): the budget less the final validation pass, or an earlier epoch end
when the training left after it would be shorter than one more validation pass, or the end of the last
epoch when the epoch count (a ceiling, not a plan) binds first. So the learning rate reaches its floor on
the last training step, and the final validation, which picks the best checkpoint, still fits before the
deadline. Training stops at the first step end where one more step would cross ``training_end``.

:class:`BudgetSchedule` is the shape (one-cycle warm-up and cosine decay as in PyTorch's ``OneCycleLR``,
cosine, or constant) over progress 0-1; :class:`TimeBudget` is the Lightning callback that sets the rate
on every step and decides when to stop. The clock is injectable so tests run on a fake one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from protloc.errors import ConfigError

SCHEDULE_KINDS = ("onecycle", "cosine", "none")


@dataclass(frozen=True)
class BudgetSchedule:
    """Learning rate as a function of training progress (0 at the start, 1 at the end)."""

    kind: str
    peak: float
    warmup: float = 0.2
    """one-cycle: the share of progress spent rising from ``peak / div`` to ``peak``."""
    div: float = 20.0
    final_div: float = 200.0
    """one-cycle ends at ``peak / (div * final_div)``, as ``OneCycleLR``; cosine ends at 0."""

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(f"unknown schedule {self.kind!r}; use {', '.join(SCHEDULE_KINDS)}")
        if not (self.peak > 0 and 0 <= self.warmup < 1 and self.div >= 1 and self.final_div >= 1):
            raise ConfigError(f"schedule settings out of range: {self}")

    def lr(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        if self.kind == "none":
            return self.peak
        if self.kind == "cosine":
            return self.peak * 0.5 * (1 + math.cos(math.pi * p))
        start, end = self.peak / self.div, self.peak / (self.div * self.final_div)
        if p < self.warmup:
            return _cosine_between(start, self.peak, p / self.warmup)
        return _cosine_between(self.peak, end, (p - self.warmup) / (1 - self.warmup))


def _cosine_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * fraction))


class TimeBudget(Callback):
    """Sets the learning rate from elapsed time every step and stops training so it ends by the deadline.

    Args:
        seconds: the budget, counted from the start of training (``on_train_start``; setup and caching
            before it are not counted, as Lightning's ``max_time``).
        schedule: the learning-rate shape over progress.
        clock: seconds from an arbitrary origin (``time.monotonic``; tests pass a fake).
        validation_guess: validation time per training step time per validation batch before any validation
            has been measured (a forward pass costs about a third of forward + backward + step).
    """

    def __init__(
        self,
        seconds: float,
        schedule: BudgetSchedule,
        *,
        clock: Callable[[], float] = time.monotonic,
        validation_guess: float = 0.4,
    ) -> None:
        if not seconds > 0:
            raise ConfigError(f"the time budget must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.schedule = schedule
        self.clock = clock
        self.validation_guess = validation_guess
        self.elapsed_before = 0.0
        """time used by earlier sessions of a resumed run."""
        self._started: float | None = None
        self._step_seconds: float | None = None
        self._last_step_end: float | None = None
        self._validation_started: float | None = None
        self.validation_seconds: float | None = None
        self.progress = 0.0
        self.stopped_at: float | None = None
        """elapsed seconds when this callback asked training to stop (None: it ended otherwise)."""
        self.history: list[tuple[float, float, float]] = []
        """(elapsed s, progress, lr) at each step: what the schedule did, for reports and tests."""

    # ------------------------------------------------------------------------------------------ estimates

    def elapsed(self) -> float:
        return self.elapsed_before + (0.0 if self._started is None else self.clock() - self._started)

    def validation_estimate(self, trainer: Any) -> float:
        """Seconds the final validation pass is expected to take."""
        if self.validation_seconds is not None:
            return self.validation_seconds
        batches = _total(getattr(trainer, "num_val_batches", 0))
        return batches * (self._step_seconds or 0.0) * self.validation_guess

    def deadline_for_steps(self, trainer: Any) -> float:
        """Elapsed seconds by which training steps must end so the final validation fits the budget."""
        return max(self.seconds - self.validation_estimate(trainer), 0.5 * self.seconds)

    def projected_end(self, trainer: Any, elapsed: float, remaining_in_epoch: float) -> float:
        """When training steps will end, re-planned from now: the step deadline, or an earlier epoch end.

        Walks the coming epochs at the measured step time, each followed by its validation pass: training
        ends at the step deadline, at the epoch ceiling, or at the first epoch end after which the training
        time left before the final validation would be shorter than one more validation pass.
        """
        limit = self.deadline_for_steps(trainer)
        step = self._step_seconds
        per_epoch = _total(getattr(trainer, "num_training_batches", 0))
        if not step or not per_epoch or not math.isfinite(per_epoch):
            return limit
        validation = self.validation_estimate(trainer)
        max_epochs = getattr(trainer, "max_epochs", None)
        current = getattr(trainer, "current_epoch", 0)
        epochs_left = math.inf if max_epochs is None or max_epochs < 0 else max_epochs - current - 1
        end = elapsed + remaining_in_epoch * step
        for _ in range(100_000):
            if end > limit:
                return limit
            if epochs_left <= 0 or self.seconds - end - 2 * validation < validation:
                return end
            end += validation + per_epoch * step
            epochs_left -= 1
        return limit

    def _step_ceiling(self, trainer: Any) -> float:
        per_epoch = _total(getattr(trainer, "num_training_batches", 0))
        epochs = getattr(trainer, "max_epochs", None)
        if not per_epoch or not math.isfinite(per_epoch) or epochs is None or epochs < 0:
            return math.inf
        return float(per_epoch * epochs)

    # -------------------------------------------------------------------------------------------- hooks

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._started = self.clock()
        self._last_step_end = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_step_end = None  # the gap across a validation pass is not a step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._last_step_end is None:
            self._last_step_end = self.clock()
        elapsed = self.elapsed()
        per_epoch = _total(getattr(trainer, "num_training_batches", 0))
        remaining = per_epoch - batch_idx
        end = self.projected_end(trainer, elapsed, remaining)
        steps = float(getattr(trainer, "global_step", 0))
        # the rate for the step about to run is the schedule's at that step's end, so the last step gets the floor
        progress = max((elapsed + (self._step_seconds or 0.0)) / end, (steps + 1) / self._step_ceiling(trainer))
        this_epoch_end = elapsed + remaining * (self._step_seconds or 0.0)
        if remaining >= 1 and self._step_seconds and end < self.deadline_for_steps(trainer) and end <= this_epoch_end:
            # training ends with this epoch: its steps are counted, so share what is left of the schedule
            # among them and the last one reaches the floor however its steps' times vary
            progress = max(progress, self.progress + (1.0 - self.progress) / remaining)
        # never backwards: a grown validation estimate moves the end earlier, not the schedule back
        progress = float(_agreed(trainer, max(min(progress, 1.0), self.progress)))
        self.progress = progress
        pl_module.training_progress = progress  # for what else follows the schedule (the resolution)
        lr = self.schedule.lr(progress)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        self.history.append((elapsed, progress, lr))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = self.clock()
        if self._last_step_end is not None:
            step = now - self._last_step_end
            # a short memory: the rate follows a neighbour who starts or stops competing for the cores
            self._step_seconds = step if self._step_seconds is None else 0.7 * self._step_seconds + 0.3 * step
        self._last_step_end = now
        elapsed = self.elapsed()
        per_epoch = _total(getattr(trainer, "num_training_batches", 0))
        end = self.projected_end(trainer, elapsed, max(per_epoch - batch_idx - 1, 0))
        max_epochs = getattr(trainer, "max_epochs", None)
        ceiling_reached = (
            max_epochs is not None
            and max_epochs >= 0
            and getattr(trainer, "current_epoch", 0) + 1 >= max_epochs
            and batch_idx + 1 >= per_epoch
        )  # the epoch ceiling ends training here anyway
        stop = not ceiling_reached and (elapsed + (self._step_seconds or 0.0) > end or end <= elapsed)
        if _agreed(trainer, stop) and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_at = elapsed

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not getattr(trainer, "sanity_checking", False):
            self._validation_started = self.clock()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._validation_started is not None:
            measured = self.clock() - self._validation_started
            # the largest recent pass: the final one must fit, and a neighbour may slow it
            self.validation_seconds = max(measured, 0.8 * (self.validation_seconds or 0.0))
            self._validation_started = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.used_seconds = self.elapsed()

    def summary(self) -> dict[str, Any]:
        """The budget, the training time used (to the end of the final validation) and how training ended."""
        used = getattr(self, "used_seconds", self.elapsed())
        return {
            "seconds": self.seconds,
            "used_seconds": round(used, 2),
            "used_share": round(used / self.seconds, 4),
            "stopped_by_budget": self.stopped_at is not None,
            "validation_seconds": None if self.validation_seconds is None else round(self.validation_seconds, 2),
            "final_progress": round(self.progress, 4),
            "final_lr": self.history[-1][2] if self.history else None,
            "schedule": self.schedule.kind,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed(), "validation_seconds": self.validation_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_before = float(state_dict.get("elapsed", 0.0))
        self.validation_seconds = state_dict.get("validation_seconds")


def _total(value: Any) -> float:
    if isinstance(value, list | tuple):
        return float(sum(value))
    return float(value or 0)


def _agreed(trainer: Any, value: Any) -> Any:
    """Rank 0's value on every rank: DDP ranks must share the learning rate and the decision to stop."""
    if getattr(trainer, "world_size", 1) > 1:
        return trainer.strategy.broadcast(value, src=0)
    return value


def measure_training_rate(
    model: str, channels: int, image_size: int, num_classes: int, batch_size: int = 32, steps: int = 4
) -> float:
    """Images/s of forward+backward+step for ``model`` with ``num_classes`` outputs on this machine (a few steps on
    random data, CPU/GPU)."""
    from protloc.model.network import create_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = create_model(model, channels, num_classes, image_size=image_size).to(device)
    network = network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    x = torch.rand(batch_size, channels, image_size, image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch_size, num_classes, device=device) > 0.9).float()
    timings = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            timings.append(time.perf_counter() - start)
    return batch_size / float(np.median(timings))


def epochs_for_budget(
    images_per_second: float, train_images: int, seconds: float, *, low: int = 2, high: int = 40
) -> int:
    """Epochs that fit ``seconds`` of training at a measured model rate.

    The measured rate is the model alone; loading, augmentation and validation cost about 15-20% more on a
    CPU, so the plan uses 80% of it. (A ``max_time`` budget plans better: see :mod:`protloc.training.budget`.)
    """
    return int(np.clip(seconds * images_per_second * 0.8 / max(train_images, 1), low, high))

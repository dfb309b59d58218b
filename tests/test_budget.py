from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from protloc.errors import ConfigError
from protloc.training.budget import BudgetSchedule, TimeBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MODULE = SimpleNamespace(training_progress=0.0)
"""a stand-in for the LightningModule, which the budget tells its progress (the resolution schedule follows it)"""


def test_onecycle_shape_matches_its_definition() -> None:
    s = BudgetSchedule("onecycle", peak=1e-3, warmup=0.2, div=20, final_div=200)
    assert s.lr(0) == pytest.approx(1e-3 / 20)
    assert s.lr(0.2) == pytest.approx(1e-3)
    assert s.lr(1) == pytest.approx(1e-3 / 4000)
    assert s.lr(1.5) == s.lr(1) and s.lr(-1) == s.lr(0)
    rising = [s.lr(p / 100) for p in range(21)]
    falling = [s.lr(p / 100) for p in range(20, 101)]
    assert rising == sorted(rising) and falling == sorted(falling, reverse=True)
    # matches PyTorch's OneCycleLR (cosine annealing) at the same fractions of its steps
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    steps = 101
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1e-3, total_steps=steps, pct_start=0.2, div_factor=20, final_div_factor=200
    )
    for step in range(steps - 1):
        assert s.lr(step / (steps - 1)) == pytest.approx(opt.param_groups[0]["lr"], rel=0.1, abs=1e-6), step
        opt.step()
        ref.step()
    assert BudgetSchedule("cosine", peak=0.1).lr(1) == pytest.approx(0)
    assert BudgetSchedule("none", peak=0.1).lr(0.7) == 0.1
    with pytest.raises(ConfigError, match="unknown schedule"):
        BudgetSchedule("linear", peak=0.1)


def simulate(
    budget: float,
    *,
    batches: int = 20,
    epochs: int = 1000,
    val_batches: int = 10,
    step_cost: Any = lambda t: 1.0,
    val_cost: Any = lambda t: 5.0,
) -> tuple[TimeBudget, float, list[float], int]:
    """Lightning's fit loop in miniature on a fake clock: step costs and validation costs as given."""
    clock = FakeClock()
    callback = TimeBudget(budget, BudgetSchedule("onecycle", peak=1e-3), clock=clock)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    trainer = SimpleNamespace(
        optimizers=[opt],
        should_stop=False,
        num_training_batches=batches,
        num_val_batches=[val_batches],
        max_epochs=epochs,
        global_step=0,
        world_size=1,
        sanity_checking=False,
    )
    start = clock.now
    callback.on_train_start(trainer, MODULE)
    lrs, validations = [], 0
    for epoch in range(epochs):
        trainer.current_epoch = epoch
        callback.on_train_epoch_start(trainer, MODULE)
        for batch in range(batches):
            callback.on_train_batch_start(trainer, MODULE, None, batch)
            lrs.append(opt.param_groups[0]["lr"])
            clock.now += step_cost(clock.now - start)
            trainer.global_step += 1
            callback.on_train_batch_end(trainer, MODULE, None, None, batch)
            if trainer.should_stop:
                break
        callback.on_validation_start(trainer, MODULE)  # every epoch ends with validation, a stop too
        clock.now += val_cost(clock.now - start)
        callback.on_validation_end(trainer, MODULE)
        validations += 1
        if trainer.should_stop:
            break
    return callback, clock.now - start, lrs, validations


@pytest.mark.parametrize("budget", [100.0, 333.0, 1000.0])
def test_a_quiet_run_ends_by_the_deadline_annealed(budget: float) -> None:
    callback, used, lrs, validations = simulate(budget)
    assert callback.stopped_at is not None
    assert 0.9 * budget <= used <= budget  # the final validation fits too
    assert lrs[-1] < 1e-3 / 500  # annealed to near the floor (1e-3 / 4000)
    assert max(lrs) == pytest.approx(1e-3, rel=0.02)
    # the schedule spans the whole run: warm-up in the first fifth, still high halfway, the floor only at the end
    assert lrs[len(lrs) // 10] < 0.9e-3 and lrs[len(lrs) // 2] > 0.5e-3 and lrs[-2] < 1e-4
    assert validations >= budget // 30


def test_a_neighbour_arriving_mid_run_still_ends_by_the_deadline_annealed() -> None:
    # steps and validation take 2.5x longer after 100 s, as when another process starts on the same cores
    callback, used, lrs, _ = simulate(
        400.0, step_cost=lambda t: 1.0 if t < 100 else 2.5, val_cost=lambda t: 5.0 if t < 100 else 12.5
    )
    assert callback.stopped_at is not None
    assert 0.9 * 400 <= used <= 400 + 12.5  # at most one validation pass over
    assert lrs[-1] < 1e-3 / 300
    # a neighbour leaving: the run speeds up and uses the time instead of finishing early
    _, used, lrs, _ = simulate(400.0, step_cost=lambda t: 2.5 if t < 100 else 1.0)
    assert 0.9 * 400 <= used <= 400 and lrs[-1] < 1e-3 / 300


def test_the_epoch_count_is_a_ceiling_that_anneals_too() -> None:
    callback, used, lrs, validations = simulate(10_000.0, epochs=3)
    assert callback.stopped_at is None  # the ceiling ended it, not the clock
    assert validations == 3 and len(lrs) == 60 and used < 200
    assert lrs[-1] < 1e-3 / 1000


def test_a_budget_too_small_for_an_epoch_still_validates_once() -> None:
    callback, used, _, validations = simulate(12.0, batches=100)
    assert validations == 1 and used <= 12.0 + 5.0
    assert callback.stopped_at is not None and callback.progress > 0.9


def test_resume_continues_the_schedule() -> None:
    clock = FakeClock()
    first = TimeBudget(100.0, BudgetSchedule("cosine", peak=1.0), clock=clock)
    trainer = SimpleNamespace(optimizers=[], num_val_batches=[0], num_training_batches=10, max_epochs=10**6)
    first.on_train_start(trainer, MODULE)
    clock.now += 60
    second = TimeBudget(100.0, BudgetSchedule("cosine", peak=1.0), clock=clock)
    second.load_state_dict(first.state_dict())
    second.on_train_start(trainer, MODULE)
    assert second.elapsed() == pytest.approx(60)
    trainer.global_step = 0
    second.on_train_batch_start(trainer, MODULE, None, 0)
    assert second.progress == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="must be positive"):
        TimeBudget(0, BudgetSchedule("none", peak=1.0))


def test_with_lightning_the_stop_validates_and_the_rate_is_set_every_step() -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    clock = FakeClock()

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.validations = 0
            self.lrs: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            clock.now += 1.0
            self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            clock.now += 0.5

        def on_validation_epoch_end(self) -> None:
            self.validations += 1

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=123.0)

    data = TensorDataset(torch.randn(40, 2))
    callback = TimeBudget(50.0, BudgetSchedule("onecycle", peak=0.1), clock=clock)
    module = Tiny()
    trainer = L.Trainer(
        max_epochs=1000,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    start = clock.now
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))  # 10 + 5 batches
    used = clock.now - start
    assert callback.stopped_at is not None
    assert 45 <= used <= 50, used
    assert module.validations == math.ceil(len(module.lrs) / 10)  # a stop mid-epoch still validates
    assert 123.0 not in module.lrs and module.lrs[-1] < 0.1 / 1000


@pytest.mark.slow
def test_train_with_max_time_ends_by_the_deadline_annealed(synth_data: Any, tmp_path: Any) -> None:
    from protloc.training.config import resolve_config
    from protloc.training.train import train

    config = resolve_config(
        "cpu",
        overrides={
            "data": str(synth_data),
            "out": str(tmp_path / "run"),
            "model": "test_resnet",
            "image_size": 64,
            "epochs": 500,  # a ceiling far away: the clock ends this run
            "batch_size": 16,
            "max_time": "0.5",
            "cache_dir": str(tmp_path / "cache"),
            "workers": 0,
        },
    )
    result = train(config)
    assert result is not None and result.budget is not None
    budget = result.budget
    assert budget["stopped_by_budget"] and result.epochs_run < 500
    # the real clock on a shared machine: the deadline holds (annealing to the floor is tested on a fake clock,
    # where the step times are known; here a step can take seconds when the cores are busy)
    assert budget["used_seconds"] <= 30 + budget["validation_seconds"] + 10.0
    assert budget["final_progress"] > 0.3 and budget["final_lr"] < config.lr
    assert (result.run_dir / "model" / "card.json").is_file()

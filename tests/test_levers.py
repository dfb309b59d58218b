"""The training levers for a fixed budget: weight averaging, the resolution schedule, shrunk thresholds, and
the CPU count a pinned process sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from protloc.errors import ConfigError
from protloc.metrics import fit_thresholds
from protloc.training.config import TrainConfig, resolve_config


def _config(**changes: Any) -> TrainConfig:
    return resolve_config("cpu", overrides={"data": "x", "model": "test_resnet", "image_size": 64, **changes})


# ------------------------------------------------------------------------------------------------ thresholds


def test_shrink_pulls_a_fitted_threshold_towards_the_fallback_by_its_evidence() -> None:
    rng = np.random.default_rng(0)
    truth = np.zeros((400, 3), np.uint8)
    truth[:200, 0] = 1  # a common class: 200 positives
    truth[:6, 1] = 1  # a rare one: 6 positives
    truth[200:260, 2] = 1
    probabilities = rng.uniform(0, 0.3, truth.shape)
    probabilities[truth == 1] = rng.uniform(0.15, 0.9, int(truth.sum()))
    plain = fit_thresholds(truth, probabilities, min_positives=5)
    shrunk = fit_thresholds(truth, probabilities, min_positives=5, shrink=10)
    assert plain.methods == ["fitted"] * 3 and shrunk.methods == ["shrunk"] * 3
    for c, n in enumerate((200, 6, 60)):
        expected = (n * plain.values[c] + 10 * plain.fallback) / (n + 10)
        assert shrunk.values[c] == pytest.approx(expected, abs=1e-4)
    # the rare class moves most of the way, the common one barely
    moved = [abs(s - p) / max(abs(plain.fallback - p), 1e-9) for s, p in zip(shrunk.values, plain.values, strict=True)]
    assert moved[1] > 0.5 > moved[0]
    with pytest.raises(ValueError, match="shrink"):
        fit_thresholds(truth, probabilities, shrink=-1)


def test_a_class_below_min_positives_keeps_the_fallback_with_shrinkage() -> None:
    truth = np.zeros((50, 2), np.uint8)
    truth[:20, 0] = 1
    truth[:2, 1] = 1
    probabilities = np.clip(truth * 0.7 + 0.1, 0, 1).astype(np.float64)
    fitted = fit_thresholds(truth, probabilities, min_positives=5, shrink=10)
    assert fitted.methods[1] == "fallback" and fitted.values[1] == fitted.fallback


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ema": 1.0}, "ema"),
        ({"ema": -0.1}, "ema"),
        ({"resolution_schedule": "fast"}, "resolution_schedule"),
        ({"threshold_shrink": -2}, "threshold_shrink"),
    ],
)
def test_bad_lever_settings_are_refused_by_name(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**changes)


# ------------------------------------------------------------------------------------------------ the module


def _module(**changes: Any) -> Any:
    from protloc.training.lightning_module import LocalizationModule

    return LocalizationModule(_config(**changes), total_steps=100, num_classes=4)


def test_the_resolution_schedule_shrinks_early_batches_and_ends_at_full_size() -> None:
    module = _module(resolution_schedule="progressive")
    images = torch.randint(0, 256, (2, 4, 64, 64), dtype=torch.uint8)
    sides = {}
    for progress in (0.0, 0.3, 0.5, 0.7, 1.0):
        module.training_progress = progress
        sides[progress] = module.training_images(images).shape[-1]
    assert sides == {0.0: 32, 0.3: 32, 0.5: 48, 0.7: 64, 1.0: 64}
    assert module.training_images(images).dtype == torch.uint8  # full size: the batch untouched
    module.training_progress = 0.0
    small = module.training_images(images)
    assert small.dtype == torch.float32 and float(small.min()) >= 0.0 and float(small.max()) <= 1.0
    assert module(small).shape == (2, 4)  # the packaged network takes 0-1 floats as well as uint8
    plain = _module(resolution_schedule="none")
    plain.training_progress = 0.0
    assert plain.training_images(images) is images


def test_weight_averaging_follows_the_weights_and_is_what_validation_sees() -> None:
    module = _module(ema=0.9)
    assert module.ema_model is not None and _module(ema=0.0).ema_model is None
    optimiser = torch.optim.SGD(module.model.parameters(), lr=0.5)
    images = torch.randint(0, 256, (4, 4, 64, 64), dtype=torch.uint8)
    labels = torch.randint(0, 2, (4, 4)).float()
    first = next(module.ema_model.parameters()).detach().clone()
    for _ in range(5):
        optimiser.zero_grad()
        module.loss(module(images), labels).backward()
        optimiser.step()
        module._update_average()
    live = next(module.model.parameters()).detach()
    averaged = next(module.ema_model.parameters()).detach()
    assert int(module.ema_updates) == 5
    assert not torch.equal(averaged, first) and not torch.equal(averaged, live)
    module.eval()
    with torch.no_grad():
        assert torch.allclose(module.averaged(images), module.ema_model(images))
        assert not torch.allclose(module.averaged(images), module(images))


@pytest.mark.slow
def test_a_run_with_averaging_packages_the_averaged_weights(synth_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from protloc.model.card import WEIGHTS_FILE
    from protloc.model.package import load_package
    from protloc.training.train import train

    config = resolve_config(
        "cpu",
        overrides={
            "data": str(synth_data),
            "out": str(tmp_path / "run"),
            "model": "test_resnet",
            "image_size": 64,
            "epochs": 2,
            "batch_size": 16,
            "cache_dir": str(tmp_path / "cache"),
            "workers": 0,
            "ema": 0.9,
            "resolution_schedule": "progressive",
            "threshold_shrink": 10,
        },
    )
    result = train(config)
    assert result is not None
    checkpoint = torch.load(result.run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    state = checkpoint["state_dict"]
    averaged = {k[len("ema_model.") :]: v for k, v in state.items() if k.startswith("ema_model.")}
    trained = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    assert averaged and set(averaged) == set(trained)
    packaged = load_file(str(result.package_dir / WEIGHTS_FILE))
    key = next(k for k in packaged if k.endswith("weight") and packaged[k].ndim == 4)
    assert torch.equal(packaged[key], averaged[key]) and not torch.equal(packaged[key], trained[key])
    assert load_package(result.package_dir).card.training["config"]["ema"] == 0.9


# ------------------------------------------------------------------------------------------------ cores


def test_a_pinned_process_counts_its_own_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from protloc import utils

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert utils.usable_cpus() == 1 and utils.default_workers() == 1


# ------------------------------------------------------------------------------------------------ joint fit


def _noisy_scores(seed: int = 0, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rates = np.array([0.4, 0.25, 0.1, 0.05, 0.02, 0.01])
    truth = (rng.random((n, len(rates))) < rates).astype(np.uint8)
    truth[truth.sum(axis=1) == 0, 0] = 1  # every image holds a class, as every HPA image does
    logits = rng.normal(0, 1.2, truth.shape) + 2.2 * truth - 1.5
    return truth, 1 / (1 + np.exp(-logits))


def test_joint_thresholds_never_score_worse_on_the_set_they_were_fitted_on() -> None:
    from protloc.metrics import decide, fit_decision, macro_f1, micro_f1

    truth, probabilities = _noisy_scores()

    def objective(cuts: list[float], weight: float) -> float:
        predicted = decide(probabilities, cuts, min_one=True)
        return macro_f1(truth, predicted) + weight * micro_f1(truth, predicted)

    alone = fit_decision(truth, probabilities, "fit")
    for weight in (0.0, 0.5, 1.0):
        joint = fit_decision(truth, probabilities, "joint", micro_weight=weight)
        assert objective(joint.values, weight) >= objective(alone.values, weight) - 1e-12
        assert [m for m in joint.methods if m != "fallback"] == ["joint"] * sum(m != "fallback" for m in joint.methods)
    heavy = fit_decision(truth, probabilities, "joint", micro_weight=1.0)
    light = fit_decision(truth, probabilities, "joint", micro_weight=0.0)
    assert micro_f1(truth, decide(probabilities, heavy.values)) >= micro_f1(truth, decide(probabilities, light.values))


def test_fit_decision_knows_its_methods() -> None:
    from protloc.metrics import fit_decision

    truth, probabilities = _noisy_scores(1, 200)
    assert fit_decision(truth, probabilities, "fixed").values == [0.5] * truth.shape[1]
    with pytest.raises(ValueError, match="unknown threshold method"):
        fit_decision(truth, probabilities, "best")
    with pytest.raises(ValueError, match="micro_weight"):
        fit_decision(truth, probabilities, "joint", micro_weight=-1)
    with pytest.raises(ConfigError, match="threshold_micro_weight"):
        _config(threshold_micro_weight=-0.5)
    with pytest.raises(ConfigError, match="threshold_method"):
        _config(threshold_method="best")


# ------------------------------------------------------------------------------------------------ precision


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "32-true")],
)
def test_auto_precision_on_a_cpu_uses_bf16_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: str
) -> None:
    from protloc.training import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert train._precision(_config(precision="auto")) == expected
    assert train._precision(_config(precision="32-true")) == "32-true"

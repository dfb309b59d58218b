from __future__ import annotations

from pathlib import Path

import pytest

from protloc.errors import ConfigError
from protloc.training.config import RECIPES, TrainConfig, parse_max_time, resolve_config


def test_precedence_defaults_recipe_yaml_flags(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lr: 0.005\nepochs: 3\nchannels: green\n")
    config = resolve_config("cpu", yaml_file, {"data": "d", "epochs": 7, "model": None})
    assert config.model == RECIPES["cpu"]["model"]  # recipe (None flag ignored)
    assert config.lr == 0.005  # yaml over recipe
    assert config.epochs == 7  # flag over yaml
    assert config.channels == ("green",)
    assert config.weight_decay == TrainConfig().weight_decay  # default


def test_seed_recipe_is_the_baseline() -> None:
    config = resolve_config("seed", overrides={"data": "d"})
    assert config.model == "seed-cnn"
    assert config.loss == "bce"
    assert config.threshold_method == "fixed"
    assert config.channels == ("red", "green", "blue")


def test_saved_config_round_trips(tmp_path: Path) -> None:
    config = resolve_config("gpu", overrides={"data": "d", "fold": 2})
    config.save(tmp_path / "config.yaml")
    assert TrainConfig.load(tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"loss": "hinge"}, "loss 'hinge'"),
        ({"fold": 5}, "fold must be between 0 and 4"),
        ({"image_size": 8}, "image_size"),
        ({"cache_size": 64, "image_size": 128}, "cache_size"),
        ({"oversample": 2.0}, "oversample"),
        ({"channels": "purple"}, "unknown channel"),
        ({"max_time": "ten"}, "max_time"),
        ({"data": ""}, "no data set"),
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, object], fragment: str) -> None:
    values = {"data": "d", **overrides}
    with pytest.raises(ConfigError, match=fragment):
        resolve_config("cpu", overrides=values)


def test_unknown_yaml_key_and_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        resolve_config(None, path, {"data": "d"})
    path.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(None, path, {"data": "d"})
    with pytest.raises(ConfigError, match="unknown recipe"):
        resolve_config("tpu", overrides={"data": "d"})


def test_parse_max_time() -> None:
    assert parse_max_time("10") == {"seconds": 600}
    assert parse_max_time("01:02:03") == {"days": 0, "hours": 1, "minutes": 2, "seconds": 3}
    with pytest.raises(ConfigError):
        parse_max_time("-3")

"""The typed model card: one reader and one writer, old cards still load, unknown fields survive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protloc.classes import HPA2018
from protloc.errors import ModelError
from protloc.model.card import CARD_FILE, ModelCard, read_card

# A card.json as protloc 0.1.0 wrote it before the card was typed (no "decision", no "members").
OLD_CARD = {
    "format": "protloc-model",
    "format_version": 1,
    "protloc_version": "0.1.0",
    "created": "2026-11-20T10:00:00+00:00",
    "kind": "model",
    "architecture": {"name": "resnet18", "in_chans": 4, "num_classes": 28, "image_size": 128, "parameters": 11},
    "input": {
        "channels": ["red", "green", "blue", "yellow"],
        "size": 128,
        "bit_depth": 16,
        "resize": "area (shrink) / linear (enlarge) to size x size",
        "scale": 255.0,
        "mean": [0.1, 0.1, 0.1, 0.1],
        "std": [0.2, 0.2, 0.2, 0.2],
    },
    "classes": list(HPA2018.names),
    "thresholds": [0.4] * 28,
    "metrics": {"validation": {"macro_f1": 0.5}},
    "training": {"data": "/data/hpa", "source_size": [512, 512], "n_train": 10},
}


def test_an_old_card_loads_with_defaults(tmp_path: Path) -> None:
    (tmp_path / CARD_FILE).write_text(json.dumps(OLD_CARD))
    card = read_card(tmp_path)
    assert card.channels == ("red", "green", "blue", "yellow") and card.size == 128
    assert card.architecture.name == "resnet18" and card.architecture.extra == {"parameters": 11}
    assert card.decision.min_one is True and card.members == []
    assert card.source_size == [512, 512] and card.training_data == "/data/hpa"
    assert card.model_name == "resnet18" and not card.is_ensemble


def test_round_trip_keeps_unknown_fields() -> None:
    data = {**OLD_CARD, "lineage": {"name": "future"}, "input": {**OLD_CARD["input"], "crop": "centre"}}
    card = ModelCard.from_dict(data)
    assert card.extra == {"lineage": {"name": "future"}} and card.input.extra == {"crop": "centre"}
    again = card.to_dict()
    assert again["lineage"] == {"name": "future"} and again["input"]["crop"] == "centre"
    assert ModelCard.from_dict(again) == card


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(format_version=99), "upgrade protloc"),
        (lambda c: c.pop("thresholds"), "lacks 'thresholds'"),
        (lambda c: c.update(thresholds=[0.5] * 3), "3 thresholds for 28 classes"),
        (lambda c: c.update(input="128 px"), "'input' is not an object"),
        (lambda c: c["input"].pop("size"), "'input' is incomplete"),
        (lambda c: c.update(classes=["Nucleus"]), "28 thresholds for 1 classes"),
        (lambda c: c.update(scheme={"name": "hpa2021"}), "differ from its scheme hpa2021"),
    ],
)
def test_damaged_cards_are_refused_with_one_line(change, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(OLD_CARD))
    change(data)
    with pytest.raises(ModelError, match=message):
        ModelCard.from_dict(data, where="card.json")


def test_a_card_is_typed_not_a_dictionary() -> None:
    card = ModelCard.from_dict(OLD_CARD)
    assert card.thresholds == [0.4] * 28 and card.input.size == 128
    with pytest.raises(TypeError):
        card["thresholds"]  # type: ignore[index]


def test_an_old_card_gets_the_2018_scheme_and_a_new_one_keeps_its_own() -> None:
    from protloc.schemes import get_scheme

    old = ModelCard.from_dict(OLD_CARD)
    assert old.scheme is get_scheme("hpa2018") and "scheme" in old.to_dict()
    h21 = get_scheme("hpa2021")
    data = {**OLD_CARD, "classes": list(h21.names), "thresholds": [0.5] * 19, "scheme": h21.to_dict()}
    card = ModelCard.from_dict(data)
    assert card.scheme is h21 and card.num_classes == 19
    assert ModelCard.from_dict(card.to_dict()).scheme is h21
    with pytest.raises(ModelError, match="differ from its scheme hpa2021"):
        ModelCard.from_dict({**data, "classes": list(get_scheme("hpa2018").names[:19])})


def test_a_cell_model_card_has_typed_crop_settings_that_round_trip() -> None:
    from protloc.model.card import CellSpec

    cells = {"crop_size": 48, "padding": 0.1, "labels": "field", "segmentation": {"min_cell_area": 19}}
    data = {**OLD_CARD, "cells": {**cells, "fusion": {"rule": "product"}}}  # "fusion": a key of a newer protloc
    card = ModelCard.from_dict(data)
    assert isinstance(card.cells, CellSpec)
    assert (card.cells.crop_size, card.cells.padding, card.cells.segmentation) == (48, 0.1, {"min_cell_area": 19})
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again.cells == card.cells and again.to_dict()["cells"]["fusion"] == {"rule": "product"}
    assert ModelCard.from_dict(OLD_CARD).cells is None and "cells" not in ModelCard.from_dict(OLD_CARD).to_dict()
    for damaged, message in (({"padding": 0.1}, "damaged"), ({"crop_size": 48, "padding": 3}, "padding 3")):
        with pytest.raises(ModelError, match=message):
            ModelCard.from_dict({**OLD_CARD, "cells": damaged})

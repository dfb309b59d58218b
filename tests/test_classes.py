from __future__ import annotations

import numpy as np
import pytest

from protloc.classes import (
    HPA2018,
    format_labels,
    label_ids,
    label_names,
    parse_labels,
)
from protloc.errors import LabelError


def test_there_are_28_classes_with_kaggle_ids_in_order() -> None:
    assert HPA2018.num_classes == 28
    assert [c.id for c in HPA2018.classes] == list(range(28))
    assert HPA2018.names[0] == "Nucleoplasm"
    assert HPA2018.names[27] == "Rods & rings"
    assert len(set(HPA2018.names)) == 28


def test_parse_kaggle_target_into_multi_hot() -> None:
    vector = parse_labels("7 1 2 0", scheme=HPA2018)
    assert vector.dtype == np.uint8
    assert label_ids(vector, HPA2018) == [0, 1, 2, 7]
    assert label_names(vector, HPA2018) == ["Nucleoplasm", "Nuclear membrane", "Nucleoli", "Golgi apparatus"]


@pytest.mark.parametrize("text", ["0", "27", "7 1 2 0", "25 0", " 3  4 ", "\t5\n"])
def test_round_trip_string_multi_hot_string(text: str) -> None:
    vector = parse_labels(text, scheme=HPA2018)
    again = parse_labels(format_labels(vector, HPA2018), scheme=HPA2018)
    np.testing.assert_array_equal(vector, again)
    assert format_labels(vector, HPA2018) == " ".join(sorted(text.split(), key=int))


def test_round_trip_every_single_class_and_all_classes() -> None:
    for class_id in range(HPA2018.num_classes):
        vector = np.zeros(HPA2018.num_classes, np.uint8)
        vector[class_id] = 1
        assert format_labels(vector, HPA2018) == str(class_id)
        np.testing.assert_array_equal(parse_labels(format_labels(vector, HPA2018), scheme=HPA2018), vector)
    everything = np.ones(HPA2018.num_classes, np.uint8)
    np.testing.assert_array_equal(parse_labels(format_labels(everything, HPA2018), scheme=HPA2018), everything)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("28", "not a class id"),
        ("-1", "not a class id"),
        ("3 x", "'x' is not a number"),
        ("1.5", "not a number"),
        ("4 4", "appears twice"),
        ("", "empty label"),
    ],
)
def test_bad_labels_are_rejected_with_where_and_value(text: str, fragment: str) -> None:
    with pytest.raises(LabelError) as info:
        parse_labels(text, where="train.csv line 9", scheme=HPA2018)
    message = str(info.value)
    assert message.startswith("train.csv line 9: ")
    assert fragment in message


def test_empty_label_allowed_when_asked() -> None:
    assert parse_labels("", allow_empty=True, scheme=HPA2018).sum() == 0


def test_label_ids_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="length 28"):
        label_ids(np.zeros(5), HPA2018)

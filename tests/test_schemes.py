"""Class schemes as data: built-ins, user files, detection, exclusivity, mapping, and the 2021 layout."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from protloc.data.catalog import open_dataset, read_id_column, read_labels
from protloc.data.check import check_dataset
from protloc.errors import ConfigError, DataError, LabelError
from protloc.schemes import BUILTIN_SCHEMES, detect_scheme, get_mapping, get_scheme, load_scheme_file
from tests.helpers import write_csv, write_sample


def test_builtin_schemes_have_their_release_sizes_and_names() -> None:
    sizes = {name: len(get_scheme(name)) for name in BUILTIN_SCHEMES}
    assert sizes == {"hpa2018": 28, "hpa2021": 19, "subcell31": 31}
    h21 = get_scheme("hpa2021")
    assert h21.names[17] == "Vesicles and punctate cytosolic patterns" and h21.names[18] == "Negative"
    assert h21.exclusive == (18,) and h21.header == ("ID", "Label") and h21.separator == "|"
    sub = get_scheme("subcell31")
    assert sub.names[0] == "Actin filaments" and sub.names[30] == "Negative" and "SubCellPortable" in sub.source


def test_2021_labels_parse_with_bars_and_format_back() -> None:
    h21 = get_scheme("hpa2021")
    vector = h21.parse("7|1|2|0")
    assert h21.ids_of(vector) == [0, 1, 2, 7]
    assert h21.format(vector) == "0|1|2|7"
    np.testing.assert_array_equal(h21.parse("7 1 2 0"), vector)  # spaces read too


def test_negative_is_exclusive_in_2021_but_alone_is_fine() -> None:
    h21 = get_scheme("hpa2021")
    assert h21.ids_of(h21.parse("18")) == [18]
    with pytest.raises(LabelError, match=r"Negative \(18\) excludes every other class"):
        h21.parse("18|3", where="train.csv line 4")
    with pytest.raises(LabelError, match="not a class id of hpa2021"):
        h21.parse("19")


def test_user_scheme_files_json_and_text(tmp_path: Path) -> None:
    (tmp_path / "mine.json").write_text(
        json.dumps({"classes": ["Nucleus", ["Cytosol", "Cyto."], "None"], "exclusive": ["None"]})
    )
    scheme = load_scheme_file(tmp_path / "mine.json")
    assert scheme.name == "mine" and scheme.names == ("Nucleus", "Cytosol", "None") and scheme.exclusive == (2,)
    assert scheme.resolve("cyto.") == 1
    (tmp_path / "three.txt").write_text("# my classes\nA\nB\n\nC\n")
    assert get_scheme(tmp_path / "three.txt").names == ("A", "B", "C")
    (tmp_path / "bad.json").write_text(json.dumps({"classes": ["A", "a"]}))
    with pytest.raises(ConfigError, match="appears twice"):
        load_scheme_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="unknown class scheme 'hpa2019'"):
        get_scheme("hpa2019")


def test_scheme_round_trips_through_card_data() -> None:
    for name in BUILTIN_SCHEMES:
        assert get_scheme(get_scheme(name).to_dict()) is get_scheme(name)
    custom = get_scheme({"name": "x", "classes": ["A", "B"], "exclusive": ["B"]})
    assert get_scheme(custom.to_dict()) == custom


def test_detection_from_header_and_separators() -> None:
    assert detect_scheme(["ID", "Label"], ["3"]).name == "hpa2021"
    assert detect_scheme(["Id", "Target"], ["3|4"]).name == "hpa2021"
    assert detect_scheme(["Id", "Target"], ["3 4", "25"]).name == "hpa2018"


def test_2018_to_2021_mapping_merges_and_drops_as_documented() -> None:
    mapping = get_mapping("hpa2018", "hpa2021")
    h18, h21 = mapping.source, mapping.target
    vesicles = h21.resolve("Vesicles and punctate cytosolic patterns")
    for name in ("Peroxisomes", "Endosomes", "Lysosomes", "Lipid droplets", "Cytoplasmic bodies"):
        assert h21.ids_of(mapping.apply(h18.multi_hot([h18.resolve(name)]))) == [vesicles]
    assert set(mapping.dropped) == {"Cytokinetic bridge", "Rods & rings"}
    assert mapping.merged["Actin filaments"] == ["Actin filaments", "Focal adhesion sites"]
    assert "Rods & rings" in mapping.why
    with pytest.raises(ConfigError, match="no mapping from hpa2021"):
        get_mapping("hpa2021", "hpa2018")


def _root_2021(tmp_path: Path) -> Path:
    root = tmp_path / "hpa2021"
    rows = [("a", "7|1|2|0"), ("b", "18"), ("c", "16|17")]
    for i, (sample_id, _) in enumerate(rows):
        write_sample(root / "train", sample_id, size=16, seed=i, dtype=np.uint16)
    write_csv(root / "train.csv", ["ID", "Label"], rows)
    write_sample(root / "test", "t1", size=16, seed=9, dtype=np.uint16)
    write_csv(
        root / "sample_submission.csv",
        ["ID", "ImageWidth", "ImageHeight", "PredictionString"],
        [("t1", "16", "16", "0 1 eNoLCAgIMAEABJkBdQ==")],
    )
    return root


def test_2021_root_reads_checks_and_orders_test_by_its_submission(tmp_path: Path) -> None:
    root = _root_2021(tmp_path)
    train = open_dataset(root)
    assert train.scheme.name == "hpa2021" and train.labels is not None and train.labels.shape == (3, 19)
    assert train.scheme.names_of(train.labels[1]) == ["Negative"]
    test = open_dataset(root, split="test")
    assert test.ids == ["t1"] and test.scheme.name == "hpa2021"
    assert read_id_column(root / "sample_submission.csv") == ["t1"]
    report = check_dataset(root, workers=1)
    assert report.ok, report.problems
    assert report.schemes["train"].name == "hpa2021" and report.samples == {"train": 3, "test": 1}


def test_a_wrong_scheme_is_refused_with_a_line_that_says_so(tmp_path: Path) -> None:
    root = _root_2021(tmp_path)
    with pytest.raises(DataError, match="'ID,Label' is the hpa2021 .* named hpa2018"):
        open_dataset(root, scheme="hpa2018")
    (root / "train.csv").write_text("ID,Label\na,7|18\n")
    report = check_dataset(root, workers=1)
    assert [p.kind for p in report.errors] == ["bad-label", "no-csv-row", "no-csv-row"]
    assert "Negative (18) excludes" in report.errors[0].message


def test_mapping_a_2018_file_into_2021(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    rows = [("x", "8 25"), ("y", "27"), ("z", "13")]
    for i, (sample_id, _) in enumerate(rows):
        write_sample(folder / "images", sample_id, size=8, seed=i)
    write_csv(folder / "labels.csv", ["Id", "Target"], rows)
    assert open_dataset(folder).scheme.name == "hpa2018"
    mapped = open_dataset(folder, scheme="hpa2021", map_from="hpa2018")
    assert mapped.ids == ["x", "z"]  # y had only Rods & rings, which 2021 has no class for
    assert mapped.scheme.names_of(mapped.labels[0]) == ["Cytosol", "Vesicles and punctate cytosolic patterns"]
    assert mapped.scheme.names_of(mapped.labels[1]) == ["Actin filaments"]
    _ids, labels, scheme = read_labels(folder / "labels.csv")
    assert scheme.name == "hpa2018" and labels.shape == (3, 28)


def test_field_submission_keeps_the_2021_order_and_sizes(tmp_path: Path) -> None:
    from protloc.inference.predict import field_submission_csv

    order = write_csv(
        tmp_path / "sample_submission.csv",
        ["ID", "ImageWidth", "ImageHeight", "PredictionString"],
        [("b", "3072", "3072", ""), ("a", "2048", "2048", "")],
    )
    h21 = get_scheme("hpa2021")
    labels = np.stack([h21.multi_hot([0, 16]), h21.multi_hot([18])])
    text = field_submission_csv(order, ["a", "b"], labels, h21)
    assert text.splitlines() == ["ID,ImageWidth,ImageHeight,Labels", "b,3072,3072,18", "a,2048,2048,0|16"]


@pytest.mark.slow
def test_a_2021_root_trains_a_19_class_model_that_predicts_a_field_submission(tmp_path: Path) -> None:
    from protloc.inference.predict import predict_folder
    from protloc.model.card import read_card
    from protloc.training.config import resolve_config
    from protloc.training.train import train

    root = tmp_path / "h21"
    rows = [(f"s{i:02d}", ["0|16", "18", "2", "16|17", "14"][i % 5]) for i in range(10)]
    for i, (sample_id, _) in enumerate(rows):
        write_sample(root / "train", sample_id, size=32, seed=i, dtype=np.uint16)
    write_csv(root / "train.csv", ["ID", "Label"], rows)
    for i in range(2):
        write_sample(root / "test", f"t{i}", size=32, seed=50 + i, dtype=np.uint16)
    write_csv(
        root / "sample_submission.csv",
        ["ID", "ImageWidth", "ImageHeight", "PredictionString"],
        [("t1", "32", "32", ""), ("t0", "32", "32", "")],
    )
    overrides = {
        "data": str(root),
        "out": str(tmp_path / "run"),
        "model": "test_resnet",
        "image_size": 32,
        "epochs": 1,
        "batch_size": 4,
        "workers": 0,
        "cache_dir": str(tmp_path / "cache"),
    }
    result = train(resolve_config("cpu", overrides=overrides))
    assert result is not None
    card = read_card(result.package_dir)
    assert card.scheme.name == "hpa2021" and card.num_classes == 19 and len(card.thresholds) == 19
    assert card.architecture.num_classes == 19
    run = predict_folder(result.package_dir, root, tmp_path / "pred", workers=1)
    assert run is not None and run.probabilities.shape == (2, 19)
    lines = (tmp_path / "pred" / "field_submission.csv").read_text().splitlines()
    assert lines[0] == "ID,ImageWidth,ImageHeight,Labels" and [line.split(",")[0] for line in lines[1:]] == ["t1", "t0"]
    assert not (tmp_path / "pred" / "submission.csv").exists()
    header = (tmp_path / "pred" / "probabilities.csv").read_text().splitlines()[0]
    assert header.endswith("Vesicles and punctate cytosolic patterns,Negative")


# ---------------------------------------------------------------------------------- hostile names and ids (issue 20)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Golgi\napparatus", "U\\+000A"),
        ("Golgi\tapparatus", "U\\+0009"),
        ("Golgi\u202eapparatus", "U\\+202E"),  # a right-to-left override: the name would display reversed
        ("Golgi, apparatus", "','"),
        ("Golgi|apparatus", "'\\|'"),
        ("Golgi; apparatus", "';'"),
        ('=HYPERLINK("http://evil")', "starts with '='"),
        ("+cmd", "starts with '\\+'"),
        ("-2+3", "starts with '-'"),
        ("@SUM(A1)", "starts with '@'"),
    ],
)
def test_class_names_that_would_break_protlocs_files_are_refused_when_the_scheme_is_read(
    tmp_path: Path, name: str, why: str
) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"classes": ["Nucleus", name, "Cytosol"]}))
    with pytest.raises(ConfigError, match=rf"mine.json: class 1 .*{why}") as caught:
        load_scheme_file(path)
    assert "\n" not in str(caught.value).replace("\\n", "")  # one line, the name shown escaped
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"classes": ["Nucleus", ["Golgi apparatus", name]]}))
    with pytest.raises(ConfigError, match="short.json: short name of class 1"):
        load_scheme_file(short)
    with pytest.raises(ConfigError, match="class 1"):  # a model card's scheme is read the same way
        get_scheme({"name": "card", "classes": ["Nucleus", name]})


def test_a_text_scheme_with_a_formula_name_is_refused_and_a_clean_one_round_trips_through_the_csvs(
    tmp_path: Path,
) -> None:
    from protloc.inference.files import predictions_csv, probabilities_csv, read_probabilities_table

    (tmp_path / "evil.txt").write_text("Nucleus\n=1+1\n")
    with pytest.raises(ConfigError, match=r"evil.txt: class 1 '=1\+1' starts with '='"):
        load_scheme_file(tmp_path / "evil.txt")
    (tmp_path / "five.txt").write_text("Nucleus\nCytosol & ER\nGolgi / TGN\nSpeckles (nuclear)\nNone\n")
    scheme = load_scheme_file(tmp_path / "five.txt")
    everything = np.ones((1, 5), np.uint8)
    rows = list(csv.DictReader(io.StringIO(predictions_csv(["a"], everything, scheme))))
    assert rows[0]["Labels"].split("; ") == list(scheme.names)  # five names read back as five
    table = tmp_path / "probabilities.csv"
    table.write_text(probabilities_csv(["a"], np.full((1, 5), 0.5, np.float32), everything, scheme))
    ids, probabilities, truth = read_probabilities_table(table, scheme)
    assert ids == ["a"] and probabilities.shape == (1, 5) and truth is not None and truth.tolist() == [[1] * 5]


@pytest.mark.parametrize("label", ["\u0661", "\u00b2", "1\u0662", "1||2", "1|", "|1", "1;;2", "1 | | 2"])
def test_2021_label_ids_are_ascii_digits_and_never_empty(label: str) -> None:
    with pytest.raises(LabelError, match="not a number in ASCII digits|empty class id"):
        get_scheme("hpa2021").parse(label, where="train.csv line 3")


def test_an_empty_id_in_a_labels_file_is_an_error_with_its_line(tmp_path: Path) -> None:
    root = _root_2021(tmp_path)
    (root / "train.csv").write_text("ID,Label\na,7|1\nb,1||2\nc,\u0661\n")
    report = check_dataset(root, workers=1)
    bad = [p for p in report.errors if p.kind == "bad-label"]
    assert [p.message.split(":")[0] for p in bad] == ["train.csv line 3 (Id b)", "train.csv line 4 (Id c)"]
    assert "'1||2' has an empty class id" in bad[0].message and "ASCII digits" in bad[1].message
    with pytest.raises(DataError, match="line 3"):
        open_dataset(root)


def test_a_2021_model_runs_through_predict_cells_and_explain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 19-class model through the commands a user runs: field prediction, per-cell prediction with the 2021
    submission, and an explanation of a class named in the 2021 scheme."""
    from protloc.cli import main
    from protloc.synth import make_dataset
    from tests.helpers import require, tiny_package

    require("skimage")
    require("pycocotools")
    h21 = get_scheme("hpa2021")
    data = tmp_path / "data"
    make_dataset(data, n_train=1, n_test=3, size=128, seed=4, workers=1)
    field = tiny_package(tmp_path / "field", size=64, scheme=h21, seed=1)
    segmentation = {"segmenter": "classical", "channels": ["blue", "red", "yellow"], "smooth_sigma": 0.5}
    cell = tiny_package(tmp_path / "cell", size=32, scheme=h21, cells={"crop_size": 32, "segmentation": segmentation})

    assert main(["predict", str(field), str(data), "--out", str(tmp_path / "p"), "--workers", "0"]) == 0
    header = (tmp_path / "p" / "probabilities.csv").read_text().splitlines()[0].split(",")
    assert header == ["Id", *h21.names]
    with (tmp_path / "p" / "predictions.csv").open() as handle:
        for row in csv.DictReader(handle):
            ids = [int(i) for i in row[next(k for k in row if k != "Id" and "name" not in k.lower())].split("|") if i]
            assert ids and all(0 <= i < 19 for i in ids)
            if h21.names.index("Negative") in ids:
                assert ids == [h21.names.index("Negative")], "Negative is exclusive in the 2021 scheme"

    out = tmp_path / "c"
    assert main(["predict", str(cell), str(data), "--cells", "--field-model", str(field), "--out", str(out)]) == 0
    with (out / "cells.csv").open() as handle:
        columns = next(csv.reader(handle))
    assert [c for c in columns if c.startswith("p_")] == [f"p_{name}" for name in h21.names]
    with (out / "submission.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and any(r["PredictionString"] for r in rows)
    for row in rows:
        parts = row["PredictionString"].split()
        assert all(0 <= int(c) < 19 for c in parts[0::3]), "class ids of the 2021 scheme"

    sample = open_dataset(data, split="test").ids[0]
    picture = tmp_path / "x.png"
    assert main(["explain", str(field), str(data), sample, "--class", "mitotic spindle", "--out", str(picture)]) == 0
    assert picture.is_file() and "Mitotic spindle" in capsys.readouterr().out
    assert main(["explain", str(field), str(data), sample, "--class", "rods & rings", "--out", str(picture)]) == 1
    assert "Rods & rings" not in h21.names  # a 2018 class name is no class of this model

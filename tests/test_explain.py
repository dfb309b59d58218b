from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from protloc.classes import HPA2018, label_ids
from protloc.data.catalog import open_dataset
from protloc.demo.report import TestSet as ScoredTestSet
from protloc.demo.report import gallery_html
from protloc.errors import ConfigError, DataError, ModelError
from protloc.explanation.explain import (
    Explainer,
    Explanation,
    explain_image,
    explain_sample,
    explanation_figure,
    find_target_layer,
    locate_sample,
    overlay_png,
    overlay_rgb,
    resolve_class,
    resolve_classes,
    upsample_map,
)
from protloc.model.network import PackagedNetwork, SeedCNN, create_model
from protloc.model.package import new_card, save_package
from protloc.plots import save_figure

CHANNELS = ["red", "green", "blue", "yellow"]


def make_package(
    folder: Path,
    name: str,
    size: int = 64,
    *,
    network: torch.nn.Module | None = None,
    thresholds: float | list[float] = 0.5,
    mean: float = 0.1,
    std: float = 0.2,
) -> Path:
    """A package of ``name`` with untrained (or the given) weights, made as training makes them."""
    backbone = network if network is not None else create_model(name, 4, 28, image_size=size)
    card = new_card(
        architecture={"name": name, "in_chans": 4, "num_classes": 28, "image_size": size},
        channels=CHANNELS,
        size=size,
        mean=[mean] * 4,
        std=[std] * 4,
        thresholds=thresholds if isinstance(thresholds, list) else [thresholds] * 28,
        scheme="hpa2018",
    )
    return save_package(folder, PackagedNetwork(backbone, [mean] * 4, [std] * 4), card)


def random_field(height: int = 96, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (4, height, width), dtype=np.uint8)


@pytest.fixture(scope="module")
def resnet_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return make_package(tmp_path_factory.mktemp("pkg") / "resnet", "test_resnet")


@pytest.fixture(scope="module")
def resnet(resnet_package: Path) -> Explainer:
    return Explainer(resnet_package)


# ------------------------------------------------------------------------------------------ maps


def test_maps_have_the_field_shape_and_lie_in_0_1(resnet: Explainer) -> None:
    field = random_field(96, 80)  # not square, and larger than the 64 px the model sees
    explanation = resnet.explain(field, [0, 3, 7, 25])
    assert explanation.classes == [0, 3, 7, 25]
    assert explanation.image.shape == (4, 96, 80) and explanation.channels == tuple(CHANNELS)
    assert explanation.probabilities.shape == (28,)
    assert np.all((explanation.probabilities > 0) & (explanation.probabilities < 1))
    for heat in explanation.maps.values():
        assert heat.shape == (96, 80) and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() in (0.0, pytest.approx(1.0))  # 0: no position raised the score
    assert any(heat.max() > 0 for heat in explanation.maps.values())
    assert explanation.layers == ["layer4 (2x2)"]
    assert explanation.model_name == "test_resnet"


def test_class_maps_of_a_batch_are_each_images_own_map(resnet: Explainer) -> None:
    images = np.stack([random_field(64, 64, seed) for seed in range(3)])
    maps = resnet.class_maps(images, 7)  # one batched Grad-CAM pass over three images
    assert maps.shape == (3, 64, 64)
    for image, batched in zip(images, maps, strict=True):
        alone = resnet.explain(image, [7]).maps[7]
        np.testing.assert_allclose(upsample_map(batched, 64, 64), alone, atol=1e-5)
    with pytest.raises(DataError, match=r"expected \(B, 4, H, W\) images"):
        resnet.class_maps(images[:, :3], 7)


def test_default_classes_are_the_predicted_ones_most_probable_first(resnet: Explainer, tmp_path: Path) -> None:
    field = random_field()
    probabilities = resnet.explain(field, [0]).probabilities
    order = [int(i) for i in np.argsort(-probabilities, kind="stable")]
    # thresholds that make exactly the 2nd, 4th and 5th most probable classes predicted
    wanted = [order[1], order[3], order[4]]
    thresholds = [0.0 if i in wanted else 1.0 for i in range(28)]
    backbone = resnet.network.backbone
    explainer = Explainer(make_package(tmp_path / "chosen", "test_resnet", network=backbone, thresholds=thresholds))
    explanation = explainer.explain(field)
    assert explanation.predicted == sorted(wanted)
    assert explanation.classes == wanted  # most probable first
    assert explainer.explain(field, max_classes=2).classes == wanted[:2]
    # nothing over threshold: the three most probable classes
    nothing = Explainer(make_package(tmp_path / "none", "test_resnet", network=backbone, thresholds=1.0))
    fallback = nothing.explain(field)
    assert fallback.predicted == []
    assert fallback.classes == order[:3]
    with pytest.raises(ConfigError, match="max_classes"):
        explainer.explain(field, max_classes=0)


def test_classes_by_id_name_short_name_and_prefix(resnet: Explainer) -> None:
    explanation = resnet.explain(random_field(), [7, "nucleoplasm", "ER", "golgi", "7", "Rods & rings"])
    assert explanation.classes == [7, 0, 6, 27]
    assert resolve_classes("Cytosol, 0,mitochondria", HPA2018) == [25, 0, 23]
    assert resolve_class("  Nuclear   membrane ", HPA2018) == 1
    assert resolve_class(np.int64(3), HPA2018) == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (28, "out of range"),
        ("-1", "out of range"),
        ("golgi aparatus", "did you mean 'Golgi apparatus'"),
        ("nuclear", "ambiguous"),
        ("banana", "unknown class 'banana'"),
        (True, "neither"),
        ("", "no class"),
    ],
)
def test_bad_classes_are_refused_with_a_clear_message(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_classes(value if value == "" else [value], HPA2018)  # type: ignore[list-item]


def test_bad_images_are_refused_and_16_bit_fields_are_mapped_like_the_reader(resnet: Explainer) -> None:
    with pytest.raises(DataError, match=r"expected a \(4, height, width\) image"):
        resnet.explain(random_field()[:3])
    with pytest.raises(DataError, match="got shape"):
        resnet.explain(random_field()[0])
    field = random_field()
    eight = resnet.explain(field, [3])
    sixteen = resnet.explain(field.astype(np.uint16) * 257, [3])
    np.testing.assert_array_equal(sixteen.image, field)
    np.testing.assert_allclose(sixteen.maps[3], eight.maps[3], atol=1e-5)


def test_works_under_inference_mode(resnet: Explainer) -> None:
    """A web service may call it inside torch.inference_mode(); Grad-CAM still gets its gradients."""
    field = random_field()
    expected = resnet.explain(field, [2]).maps[2]
    with torch.inference_mode():
        inside = resnet.explain(field, [2]).maps[2]
    np.testing.assert_allclose(inside, expected, atol=1e-5)


def test_an_explainer_can_be_shared_between_threads(resnet: Explainer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fields = [random_field(seed=i) for i in range(4)]
    alone = [resnet.explain(f, [3]).maps[3] for f in fields]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda f: resnet.explain(f, [3]).maps[3], fields))
    for one, other in zip(alone, together, strict=True):
        np.testing.assert_allclose(one, other, atol=1e-5)


def seed_cnn_that_sees_green(size: int = 64) -> SeedCNN:
    """A seed CNN whose weights carry the green channel, max-pooled, to the score of every class.

    Channel 0 of each conv block copies channel 0 of the previous one (the first copies green), everything
    else is zero: the feature maps hold the brightest green of each region, and all scores grow with it.
    """
    network = SeedCNN(4, 28, size).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        convs = [m for m in network.features if isinstance(m, torch.nn.Conv2d)]
        convs[0].weight[0, 1, 1, 1] = 1.0
        for conv in convs[1:]:
            conv.weight[0, 0, 1, 1] = 1.0
        dense, out = (m for m in network.head if isinstance(m, torch.nn.Linear))
        dense.weight[0, 0] = 1.0
        out.weight[:, 0] = 1.0
    return network


def quadrant_mass(heat: np.ndarray) -> dict[str, float]:
    half_h, half_w = heat.shape[0] // 2, heat.shape[1] // 2
    return {
        "top-left": float(heat[:half_h, :half_w].sum()),
        "top-right": float(heat[:half_h, half_w:].sum()),
        "bottom-left": float(heat[half_h:, :half_w].sum()),
        "bottom-right": float(heat[half_h:, half_w:].sum()),
    }


@pytest.mark.parametrize(("quadrant", "rows", "cols"), [("top-right", 0, 1), ("bottom-left", 1, 0)])
def test_map_follows_the_green_signal(tmp_path: Path, quadrant: str, rows: int, cols: int) -> None:
    package = make_package(tmp_path / "green", "seed-cnn", network=seed_cnn_that_sees_green(), mean=0.0, std=1.0)
    field = np.zeros((4, 160, 128), np.uint8)  # larger than the model's 64 px, and not square
    field[[0, 2, 3]] = np.random.default_rng(1).integers(0, 120, (3, 160, 128), dtype=np.uint8)
    top, left = rows * 80 + 20, cols * 64 + 16
    field[1, top : top + 30, left : left + 30] = 230
    explanation = explain_image(package, field, [0, 12])
    for heat in explanation.maps.values():
        mass = quadrant_mass(heat)
        assert max(mass, key=mass.__getitem__) == quadrant, mass
        assert mass[quadrant] > 2 * sum(v for k, v in mass.items() if k != quadrant), mass


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_a_quickly_trained_model_looks_where_the_protein_is(tmp_path: Path, seed: int) -> None:
    """Train a tiny EfficientNet for seconds: class 0 = a bright green square somewhere in the field.

    Half the negatives hold the square in red, half hold none: with red squares only, "no red square" separates
    the classes too, and some seeds then give maps that do not follow the green square.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = 64

    def batch(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = rng.uniform(0, 0.3, (count, 4, size, size)).astype(np.float32)
        labels = np.zeros((count, 28), np.float32)
        for i in range(count):
            positive = i % 2 == 0
            top, left = rng.integers(0, size - 14, 2)
            if positive or i % 4 == 1:
                images[i, 1 if positive else 0, top : top + 14, left : left + 14] = 1.0
            labels[i, 0] = positive
        return torch.from_numpy(images), torch.from_numpy(labels)

    network = PackagedNetwork(create_model("test_efficientnet", 4, 28), [0.15] * 4, [0.1] * 4)
    optimiser = torch.optim.AdamW(network.parameters(), lr=3e-3)
    network.train()
    for _ in range(60):
        images, labels = batch(16)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    package = make_package(tmp_path / "trained", "test_efficientnet", network=network.backbone, mean=0.15, std=0.1)
    explainer = Explainer(package)
    hits = 0
    for trial in range(8):
        quadrant = ["top-left", "top-right", "bottom-left", "bottom-right"][trial % 4]
        row, col = divmod(trial % 4, 2)
        field = (rng.uniform(0, 0.3, (4, 128, 128)) * 255).astype(np.uint8)
        top, left = row * 64 + rng.integers(8, 28), col * 64 + rng.integers(8, 28)
        field[1, top : top + 28, left : left + 28] = 255
        explanation = explainer.explain(field, [0])
        assert explanation.probabilities[0] > 0.5
        mass = quadrant_mass(explanation.maps[0])
        hits += max(mass, key=mass.__getitem__) == quadrant
    assert hits >= 7


# ------------------------------------------------------------------------------------------ layers


@pytest.mark.parametrize(
    ("name", "size", "layer", "grid"),
    [
        ("seed-cnn", 64, "features.16", (2, 2)),  # the last pooling leaves one position: the ReLU before it
        ("seed-cnn", 128, "features", (2, 2)),
        ("test_resnet", 64, "layer4", (2, 2)),
        ("test_resnet", 128, "layer4", (4, 4)),
        ("test_efficientnet", 64, "bn2", (2, 2)),
        ("test_convnext", 64, "norm_pre", (2, 2)),
        pytest.param("resnet18", 128, "layer4", (4, 4), marks=pytest.mark.slow),
        pytest.param("densenet121", 128, "features", (4, 4), marks=pytest.mark.slow),
        pytest.param("efficientnet_b0", 128, "bn2", (4, 4), marks=pytest.mark.slow),
        pytest.param("convnext_atto", 128, "norm_pre", (4, 4), marks=pytest.mark.slow),
        pytest.param("regnety_002", 128, "final_conv", (4, 4), marks=pytest.mark.slow),
    ],
)
def test_target_layer_is_the_last_feature_map(name: str, size: int, layer: str, grid: tuple[int, int]) -> None:
    backbone = create_model(name, 4, 28, image_size=size).eval()
    target = find_target_layer(backbone, 4, size)
    assert (target.name, target.grid) == (layer, grid)
    assert target.module is backbone.get_submodule(layer)
    if hasattr(backbone, "forward_features"):
        with torch.no_grad():
            features = backbone.forward_features(torch.rand(1, 4, size, size))
        assert tuple(features.shape[2:]) == grid


def test_feature_maps_that_are_not_nchw_are_refused() -> None:
    import timm

    vit = timm.create_model("test_vit", in_chans=4, num_classes=28, img_size=64).eval()
    with pytest.raises(ModelError, match="vision transformers"):
        find_target_layer(vit, 4, 64)


@pytest.mark.parametrize("name", ["seed-cnn", "test_efficientnet", "test_convnext"])
def test_explains_other_architectures(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    explanation = explain_image(make_package(tmp_path / name, name), random_field(70, 90), ["Nucleoplasm", 25])
    assert list(explanation.maps) == [0, 25]
    assert all(m.shape == (70, 90) and m.min() >= 0 and m.max() <= 1 for m in explanation.maps.values())


def test_ensemble_maps_average_the_members(tmp_path: Path) -> None:
    torch.manual_seed(1)
    members = {"a": make_package(tmp_path / "a", "test_resnet"), "b": make_package(tmp_path / "b", "test_convnext")}
    card = new_card(
        architecture={"name": "ensemble"},
        channels=CHANNELS,
        size=64,
        mean=[0.1] * 4,
        std=[0.2] * 4,
        thresholds=[0.5] * 28,
        kind="ensemble",
        members=list(members),
        scheme="hpa2018",
    )
    ensemble = save_package(tmp_path / "ensemble", None, card, members=members)
    field = random_field()
    explanation = explain_image(ensemble, field, [4, 9])
    assert explanation.layers == ["layer4 (2x2)", "norm_pre (2x2)"]
    assert explanation.model_name == "ensemble of 2"
    singles = [explain_image(path, field, [4, 9]) for path in members.values()]
    np.testing.assert_allclose(
        explanation.probabilities, np.mean([s.probabilities for s in singles], axis=0), atol=1e-5
    )
    for class_id in (4, 9):
        mean = singles[0].maps[class_id] + singles[1].maps[class_id]
        np.testing.assert_allclose(explanation.maps[class_id], mean / mean.max(), atol=0.02)


# ------------------------------------------------------------------------------------------ pictures


def test_figure_has_a_composite_and_one_panel_per_class(resnet: Explainer, tmp_path: Path) -> None:
    explanation = resnet.explain(random_field(), [0, 7, 25, 2, 5], sample_id="abc")
    figure = explanation_figure(explanation, true_labels=[7])
    panels = [axis for axis in figure.axes if axis.images]
    assert len(panels) == 6
    titles = [axis.get_title() for axis in panels]
    assert titles[0].startswith("composite")
    p = explanation.probabilities[7]
    assert titles[2].startswith(f"{HPA2018.names[7]} (7)\np={p:.2f}") and "true label" in titles[2]
    assert "not labelled" in titles[1]
    assert "abc" in figure._suptitle.get_text() and "true: Golgi apparatus" in figure._suptitle.get_text()
    path = save_figure(figure, tmp_path / "explain.png")
    picture = cv2.imread(str(path))
    assert picture is not None and picture.shape[1] > picture.shape[0] > 300


def test_overlay_blends_the_map_colour_where_the_map_is_high() -> None:
    composite = np.zeros((20, 30, 3), np.uint8)
    composite[5:15, 5:25] = (100, 50, 30)  # a cell
    heat = np.zeros((20, 30), np.float32)
    heat[:, 20:] = 1.0
    picture = overlay_rgb(composite, heat, alpha=0.6).astype(int)
    cold, hot = picture[:, :20], picture[:, 20:]
    # where the map is cold the composite shows in grey (its brightness, stretched): no colour from the map
    assert (cold[..., 0] == cold[..., 1]).all() and (cold[..., 1] == cold[..., 2]).all()
    assert cold[10, 10, 0] > 150 and cold[0, 0, 0] == 0
    # where it is hot the top of the colour map (red) is mixed in, over the cell and the background alike
    assert (hot[..., 0] - hot[..., 1] > 60).all() and (hot[..., 0] - hot[..., 2] > 60).all()
    assert hot[10, 2, 0] > hot[0, 2, 0]
    with pytest.raises(ValueError, match="differ in size"):
        overlay_rgb(composite, heat[:10])


def test_overlay_png_is_the_overlay_at_the_field_size(resnet: Explainer) -> None:
    explanation = resnet.explain(random_field(96, 80), [3, "Cytosol"])
    data = overlay_png(explanation, "cytosol")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    picture = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert picture.shape == (96, 80, 3)
    np.testing.assert_array_equal(picture, overlay_rgb(explanation.composite(), explanation.maps[25]))
    assert overlay_png(explanation, 3) != data
    small = cv2.imdecode(np.frombuffer(overlay_png(explanation, 3, max_side=40), np.uint8), cv2.IMREAD_COLOR)
    assert small.shape == (40, 33, 3)
    with pytest.raises(ConfigError, match="was not explained"):
        overlay_png(explanation, 7)
    with pytest.raises(ConfigError, match="unknown class"):
        overlay_png(explanation, "spaghetti")


def test_importing_the_module_needs_no_torch() -> None:
    """The torch-free HTTP service imports overlay_rgb; only explaining needs torch."""
    import subprocess
    import sys

    code = "import sys, protloc.explanation.explain; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------ the command


def test_explain_sample_writes_the_figure_for_a_train_or_test_id(
    trained_run: Path, synth_data: Path, tmp_path: Path
) -> None:
    catalog = open_dataset(synth_data)
    sample_id = catalog.ids[5]
    out = tmp_path / "figures" / "train.png"
    explanation = explain_sample(trained_run / "model", synth_data, sample_id, out)
    assert isinstance(explanation, Explanation)
    assert explanation.sample_id == sample_id
    assert explanation.true_labels == label_ids(catalog.labels[5], HPA2018)  # type: ignore[index]
    assert explanation.image.shape == (4, 64, 64)
    assert 1 <= len(explanation.maps) <= 6
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 300
    assert not [p for p in out.parent.iterdir() if p != out]  # written atomically: no temporary left

    test_id = open_dataset(synth_data, split="test", channels=None).ids[0]
    explained = explain_sample(trained_run / "model", synth_data, test_id, tmp_path / "test.png", classes="0,25")
    assert explained.true_labels is None and list(explained.maps) == [0, 25]
    # a plain folder of channel images works too
    folder = explain_sample(trained_run / "model", synth_data / "test", test_id, tmp_path / "f.png", classes=[0])
    np.testing.assert_allclose(folder.maps[0], explained.maps[0], atol=1e-6)


def test_explain_sample_errors_say_what_and_where(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    model = trained_run / "model"
    first = open_dataset(synth_data).ids[0]
    with pytest.raises(DataError, match=r"Id 'nope' not found in .*train.*test"):
        explain_sample(model, synth_data, "nope", tmp_path / "x.png")
    with pytest.raises(DataError, match=f"did you mean {first}"):
        locate_sample(synth_data, first[:-1] + ("0" if first[-1] != "0" else "1"), split="train")
    with pytest.raises(DataError, match="no such file or folder"):
        explain_sample(model, tmp_path / "missing", first, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="ending in .png"):
        explain_sample(model, synth_data, first, tmp_path / "x.jpg")
    with pytest.raises(ConfigError, match="unknown class"):
        explain_sample(model, synth_data, first, tmp_path / "x.png", classes=["Nucleus"])
    with pytest.raises(ModelError, match="model package not found"):
        explain_sample(tmp_path / "no-model", synth_data, first, tmp_path / "x.png")
    with pytest.raises(ModelError, match="not an exported .onnx file"):
        explain_sample(tmp_path / "model.onnx", synth_data, first, tmp_path / "x.png")
    assert not list(tmp_path.glob("*.png"))


def _test_set(folder: Path, count: int = 3) -> ScoredTestSet:
    from protloc.metrics import evaluate
    from tests.helpers import write_sample

    ids = [f"s{i}" for i in range(count)]
    for k, sample_id in enumerate(ids):
        write_sample(folder, sample_id, size=48, seed=k)
    files = {i: {c: folder / f"{i}_{c}.png" for c in CHANNELS} for i in ids}
    truth = np.zeros((count, 28), np.uint8)
    truth[:, 0] = 1
    probabilities = np.full((count, 28), 0.1, np.float32)
    probabilities[:, 7] = 0.9  # every sample predicted Golgi apparatus
    predicted = (probabilities >= 0.5).astype(np.uint8)
    report = evaluate(truth, probabilities, [0.5] * 28, HPA2018.names)
    return ScoredTestSet(ids, truth, probabilities, predicted, report, files=files)


def test_report_gallery_shows_each_sample_with_its_activation_map(resnet_package: Path, tmp_path: Path) -> None:
    test = _test_set(tmp_path / "images")
    html = gallery_html(test, resnet_package, CHANNELS, count=3, scheme=HPA2018)
    assert html.count('class="tile"') == 3
    assert html.count("data:image/png;base64,") == 6, "a composite and an activation map per tile"
    assert html.count("activation map for Golgi apparatus") == 3
    assert "no activation maps" not in html


def test_report_gallery_says_why_the_maps_are_missing(tmp_path: Path) -> None:
    test = _test_set(tmp_path / "images", count=2)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "card.json").write_text("{}")
    html = gallery_html(test, broken, CHANNELS, count=2, scheme=HPA2018)
    assert html.count('class="tile"') == 2 and html.count("data:image/png;base64,") == 2
    assert "no activation maps:" in html and "not a protloc model card" in html


def test_classes_are_resolved_in_the_cards_scheme(tmp_path: Path) -> None:
    """A SubCell-31 model explains its class 30 and its names (issue 20: names were resolved in the 2018 scheme)."""
    from protloc.schemes import get_scheme
    from tests.helpers import tiny_package

    subcell = get_scheme("subcell31")
    explainer = Explainer(tiny_package(tmp_path / "subcell", size=32, scheme=subcell))
    explanation = explainer.explain(random_field(48, 48), ["Vesicles", 30, "peroxi"])
    assert explanation.classes == [subcell.resolve("Vesicles"), 30, subcell.resolve("Peroxisomes")]
    assert explanation.class_names == subcell.names and explanation.probabilities.shape == (31,)
    with pytest.raises(ConfigError, match="subcell31 class ids are 0-30"):
        explainer.explain(random_field(48, 48), [31])
    with pytest.raises(ConfigError, match="unknown class 'Rods & rings'"):  # a 2018 class, not a SubCell one
        explainer.explain(random_field(48, 48), ["Rods & rings"])

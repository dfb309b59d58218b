"""Class activation maps: where in the field the network found the evidence for a class.

For each class asked about, Grad-CAM (the ``grad-cam`` package) weighs the feature maps of the network's last
convolutional stage by the gradient of that class's score and sums them: a coarse map, one cell per feature-map
position (4 x 4 for a ResNet at 128 px, 16 x 16 at 512 px), of the places that raised the score. The map is
upsampled to the field as read (the model may see 128 px while the field is 512 or 2048 px), scaled to 0-1 per
class, and drawn over the HPA-style composite. It is a saliency map, not a segmentation: see
``docs/explanations.md``.

The target layer is found, not configured: one forward pass with hooks on every module records the 4-D outputs
``(B, C, h, w)`` with more than one position; the last such output, before global pooling flattens it, is the
feature map the classifier reads (timm's ``forward_features``). Of the modules that return that very tensor
(``layer4.1``, ``layer4``...), the outermost is named. For the seed CNN at 64 px the last pooling leaves a
single position, so the map comes from the last convolution block before it. Vision transformers (token
outputs) and channels-last feature maps are refused with a :class:`~protloc.errors.ModelError`.

Typical use::

    from protloc.explanation.explain import Explainer, explanation_figure, overlay_png

    explainer = Explainer("runs/cpu-fold0/model")          # load once (the HTTP service keeps one)
    explanation = explainer.explain(image)                  # (C, H, W) uint8 in the model's channel order
    explanation.maps[7]                                     # (H, W) float32 in 0-1 for Golgi apparatus
    png = overlay_png(explanation, 7)                       # one overlay as PNG bytes

``protloc explain MODEL DATA ID --out FILE`` is :func:`explain_sample`. Importing this module needs neither torch
nor matplotlib (:func:`overlay_rgb` and :func:`resolve_class` work without them); explaining needs both.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_CLASSES",
    "FALLBACK_CLASSES",
    "HEATMAP_CMAP",
    "Explainer",
    "Explanation",
    "TargetLayer",
    "default_classes",
    "explain_image",
    "explain_sample",
    "explanation_figure",
    "find_target_layer",
    "grad_cam",
    "locate_sample",
    "overlay_png",
    "overlay_rgb",
    "resolve_class",
    "resolve_classes",
    "upsample_map",
]

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from protloc.classes import HPA2018, resolve_class, resolve_classes
from protloc.data.catalog import locate_sample
from protloc.errors import ConfigError, DataError, ModelError, ProtlocError
from protloc.explanation.figures import HEATMAP_CMAP, explanation_figure, overlay_png, overlay_rgb
from protloc.inference.core import Preprocessor

if TYPE_CHECKING:
    import torch
    from torch import nn

    from protloc.model.package import ModelPackage

DEFAULT_MAX_CLASSES = 6
"""Classes explained by default: the predicted ones, most probable first, at most this many."""

FALLBACK_CLASSES = 3
"""When no class reaches its threshold, the most probable classes explained instead."""

# Grad-CAM keeps the activations of every class's backward pass: explain at most this many input pixels at a
# time (e.g. 16 classes at 128 px, one at a time at 512 px), which keeps memory modest on CPU.
_PIXELS_PER_PASS = 16 * 128 * 128


@dataclass(frozen=True)
class TargetLayer:
    """The module whose output Grad-CAM weighs, found by :func:`find_target_layer`.

    Attributes:
        name: its dotted path inside the backbone (``"layer4"``, ``"features"``, ``"bn2"``...).
        module: the module itself (its forward hook gives the activations and their gradients).
        grid: ``(h, w)`` positions of its feature map at the model's input size: the map's resolution.
    """

    name: str
    module: nn.Module
    grid: tuple[int, int]


@dataclass
class Explanation:
    """Class activation maps of one field, with the probabilities they explain.

    Attributes:
        sample_id: the sample's Id when known.
        image: the field as read, ``(C, H, W)`` uint8, channels as in ``channels``.
        channels: the channel order of ``image`` (the model's).
        probabilities: sigmoid probabilities of the model's K classes (its card's scheme), ``(K,)`` float32.
        thresholds: the package's per-class thresholds, ``(K,)``.
        predicted: class ids whose probability reaches their threshold, ascending.
        maps: class id -> ``(H, W)`` float32 map in 0-1 (1 = strongest evidence for that class in this field;
            all zero when no position raised the score), in the order explained.
        layers: the target layer of each network (one per ensemble member), e.g. ``["layer4 (4x4)"]``.
        model_name: the architecture, or ``"ensemble of N"``.
        true_labels: class ids of the sample's known labels, or ``None``.
    """

    sample_id: str | None
    image: np.ndarray
    channels: tuple[str, ...]
    probabilities: np.ndarray
    thresholds: np.ndarray
    predicted: list[int]
    maps: dict[int, np.ndarray]
    layers: list[str] = field(default_factory=list)
    model_name: str = ""
    true_labels: list[int] | None = None
    class_names: tuple[str, ...] = HPA2018.names
    """the names of the model's classes (its card's scheme), indexed by class id."""

    @property
    def classes(self) -> list[int]:
        """The explained class ids, in the order explained."""
        return list(self.maps)

    def composite(self) -> np.ndarray:
        """The field as an HPA-style ``(H, W, 3)`` uint8 RGB composite."""
        from protloc.plots import composite_rgb

        return composite_rgb(self.image, self.channels)


# ------------------------------------------------------------------------------------------ classes


def default_classes(
    probabilities: np.ndarray, thresholds: np.ndarray, max_classes: int = DEFAULT_MAX_CLASSES
) -> list[int]:
    """The predicted classes, most probable first, at most ``max_classes``; none predicted: the top 3."""
    order = [int(i) for i in np.argsort(-probabilities, kind="stable")]
    predicted = [i for i in order if probabilities[i] >= thresholds[i]]
    chosen = predicted or order[:FALLBACK_CLASSES]
    return chosen[:max_classes]


# ------------------------------------------------------------------------------------------ layers


def disable_inplace(network: nn.Module) -> nn.Module:
    """Turn off in-place activations (``ReLU(inplace=True)``...), so a hooked output is never overwritten later.

    Grad-CAM reads a layer's output and the gradient reaching it; an in-place operation further on would change
    the stored activation after the fact. Only affects modules with a boolean ``inplace`` attribute.
    """
    for module in network.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False  # type: ignore[assignment]
    return network


def find_target_layer(backbone: nn.Module, in_chans: int, size: int) -> TargetLayer:
    """The last feature map before global pooling: the layer Grad-CAM weighs.

    Runs the backbone once on a blank ``(1, in_chans, size, size)`` input (timm models: ``forward_features``,
    the part before pooling and the classifier) with hooks on every module, and keeps the modules whose output
    is a 4-D ``(1, C, h, w)`` map with more than one position. The last such output is the target; of the
    modules that return that same tensor (a block, its stage, an ``Identity``), the outermost is named.

    Args:
        backbone: the network without protloc's normalisation wrapper (a timm model, a SeedCNN...).
        in_chans: input channels.
        size: the model's input side in pixels (feature-map sizes depend on it).

    Raises:
        ModelError: the network has no such feature map (a vision transformer's tokens, a channels-last map).
    """
    import torch

    found: list[tuple[str, nn.Module, tuple[int, ...], int]] = []
    last: list[torch.Tensor | None] = [None]

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.ndim != 4 or output.shape[2] * output.shape[3] < 2:
                return
            if output is not last[0]:
                last[0] = output
                found.append((name, module, tuple(output.shape), len(found)))
            else:
                found.append((name, module, tuple(output.shape), found[-1][3]))

        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in backbone.named_modules() if name]
    probe = torch.zeros(1, in_chans, size, size, device=_device_of(backbone))
    architecture = type(backbone).__name__
    forward_features = getattr(backbone, "forward_features", None)
    features: Any = None
    try:
        with torch.no_grad():
            if callable(forward_features):
                features = forward_features(probe)
            else:
                backbone(probe)
    except ProtlocError:
        raise
    except Exception as exc:
        raise ModelError(
            f"{architecture}: cannot run on a {size} px input to find its last feature map "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
        last[0] = None
    if isinstance(features, torch.Tensor):
        width = getattr(backbone, "num_features", None)
        if features.ndim != 4 or (isinstance(width, int) and features.shape[1] != width):
            raise ModelError(
                f"{architecture}: its features have shape {tuple(features.shape)}, not a (batch, channels, height, "
                "width) map; class activation maps need a convolutional network (vision transformers and "
                "channels-last feature maps are not supported)"
            )
        same = [f for f in found if f[2] == tuple(features.shape)]
        found = same if same and features.shape[2] * features.shape[3] >= 2 else found
    if not found:
        raise ModelError(
            f"{architecture}: no convolutional feature map with more than one position at {size} px, so there is "
            "nothing to localise; use a larger input size or a convolutional network"
        )
    group = found[-1][3]
    name, module, shape, _ = [f for f in found if f[3] == group][-1]
    return TargetLayer(name=name, module=module, grid=(int(shape[2]), int(shape[3])))


def _device_of(module: nn.Module) -> torch.device:
    import torch

    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


# ------------------------------------------------------------------------------------------ Grad-CAM


def grad_cam(network: nn.Module, layer: nn.Module, pixels: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps: ``(K, S, S)`` float32, each scaled to 0-1.

    Args:
        network: 0-1 pixels in, logits out (a :class:`~protloc.model.network.PackagedNetwork`).
        layer: the module whose output is weighed (see :func:`find_target_layer`).
        pixels: ``(1, C, S, S)`` float32 input in 0-1, explained for every class of ``classes``; or ``(K, C, S,
            S)``, one input per class of ``classes`` (the cells of a field, each for the same class).
        classes: class ids; each gets its own backward pass (several per batch while memory allows).
    """
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if pixels.shape[0] not in (1, len(classes)):
        raise ValueError(f"{pixels.shape[0]} inputs for {len(classes)} classes: give one input, or one per class")
    pairs = [(index if pixels.shape[0] > 1 else 0, int(c)) for index, c in enumerate(classes)]
    per_pass = max(1, _PIXELS_PER_PASS // (pixels.shape[-1] * pixels.shape[-2]))
    cam = GradCAM(model=network, target_layers=[layer])
    parts: list[np.ndarray] = []
    try:
        # Grad-CAM needs gradients even when the caller runs under no_grad or inference_mode (a web service).
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, len(pairs), per_pass):
                chunk = pairs[start : start + per_pass]
                # the input asks for gradients, so they reach the activations even with frozen weights
                batch = pixels.detach()[[i for i, _ in chunk]].clone().requires_grad_(True)
                targets = [ClassifierOutputTarget(c) for _, c in chunk]
                parts.append(np.asarray(cam(input_tensor=batch, targets=targets), dtype=np.float32))
    finally:
        cam.activations_and_grads.release()
        network.zero_grad(set_to_none=True)
    return np.concatenate(parts) if parts else np.zeros((0, *pixels.shape[-2:]), np.float32)


def upsample_map(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 2-D map resized (bilinear) to ``height x width``, float32 scaled to 0-1 (peak 1 unless all zero)."""
    resized = np.clip(cv2.resize(np.asarray(heat, np.float32), (width, height), interpolation=cv2.INTER_LINEAR), 0, 1)
    peak = float(resized.max()) if resized.size else 0.0
    return (resized / peak if peak > 0 else resized).astype(np.float32, copy=False)


class Explainer:
    """A loaded package ready to explain fields: build once, call :meth:`explain` for each field.

    Single models and ensembles are supported; for an ensemble every member's map is computed at its own
    target layer and the maps are averaged (then rescaled to 0-1). Runs on the CPU by default. Safe to share
    between threads: explanations run one at a time (Grad-CAM hooks the shared network).

    Args:
        package: a loaded package, or the path of a package folder (or its card.json).
        device: ``"cpu"`` (default), ``"cuda"``...

    Raises:
        ModelError: the package cannot be loaded, or a network has no convolutional feature map.
    """

    def __init__(self, package: ModelPackage | str | Path, *, device: str = "cpu") -> None:
        import torch

        from protloc.model.network import EnsembleNetwork
        from protloc.model.package import ModelPackage, load_package

        if not isinstance(package, ModelPackage) and (Path(package).suffix.lower() in (".onnx", ".zip")):
            kind = "BioImage.IO package" if Path(package).suffix.lower() == ".zip" else ".onnx file"
            raise ModelError(
                f"{package}: explanations need the model package folder (its weights and gradients), not an "
                f"exported {kind}; give the package folder"
            )
        self.package = package if isinstance(package, ModelPackage) else load_package(package)
        card = self.package.card
        self.preprocessor = Preprocessor.from_card(card)
        self.device = torch.device(device)
        self.network = disable_inplace(self.package.build_model()).to(self.device).eval()
        self.network.requires_grad_(False)  # gradients flow to the activations only: no weight gradients to keep
        members = list(self.network.members) if isinstance(self.network, EnsembleNetwork) else [self.network]
        size, in_chans = self.package.size, len(self.package.channels)
        self.targets: list[tuple[nn.Module, TargetLayer]] = []
        for member in members:
            backbone = getattr(member, "backbone", member)
            self.targets.append((member, find_target_layer(backbone, in_chans, size)))
        if self.package.is_ensemble:
            self.model_name = f"ensemble of {len(members)}"
        else:
            self.model_name = str(card.architecture.name)
        self._lock = threading.Lock()  # Grad-CAM hooks the shared network: one explanation at a time

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels a field must have, in this order."""
        return self.package.channels

    @property
    def layers(self) -> list[str]:
        """Each network's target layer and its grid at the model's input size, e.g. ``"layer4 (4x4)"``."""
        return [f"{target.name} ({target.grid[0]}x{target.grid[1]})" for _, target in self.targets]

    def _probabilities(self, pixels: torch.Tensor) -> np.ndarray:
        """Sigmoid probabilities ``(K,)`` of one ``(1, C, S, S)`` input (ensembles: the members' average)."""
        import torch

        with torch.no_grad():
            return torch.sigmoid(self.network(pixels).float())[0].cpu().numpy().astype(np.float32)

    def explain(
        self,
        image: np.ndarray,
        classes: Sequence[int | str] | str | None = None,
        *,
        max_classes: int = DEFAULT_MAX_CLASSES,
        sample_id: str | None = None,
        true_labels: Sequence[int] | None = None,
    ) -> Explanation:
        """Probabilities and class activation maps of one field.

        Args:
            image: ``(C, H, W)`` in the model's channel order (:attr:`channels`); uint8, or 16-bit / float
                pixels, mapped to 8 bits as the reader does (the card's bit depth). Any size: it is resized to
                the model's input, and the maps are resized back to ``H x W``.
            classes: class ids or names to explain; ``None``: the predicted classes, most probable first, at
                most ``max_classes`` (none predicted: the 3 most probable).
            max_classes: the cap on the default choice (explicit ``classes`` are all explained).
            sample_id: the field's Id, for titles.
            true_labels: the field's known class ids, shown by :func:`explanation_figure`.

        Raises:
            DataError: the image is not a ``(C, H, W)`` array with the model's channels.
            ConfigError: an unknown class, or ``max_classes`` < 1.
        """
        field_image = self.check_image(image)
        chosen = resolve_classes(classes, self.package.card.scheme) if classes is not None else None
        if max_classes < 1:
            raise ConfigError(f"max_classes must be at least 1, got {max_classes}")
        inputs = self.preprocessor.prepare_uint8(field_image)  # (1, C, S, S): the whole field, one tile
        import torch

        pixels = torch.from_numpy(self.preprocessor.to_pixels(inputs)).to(self.device)
        thresholds = np.asarray(self.package.thresholds, dtype=np.float32)
        # Grad-CAM hooks the shared network: any forward pass during another call would feed its hooks.
        with self._lock:
            probabilities = self._probabilities(pixels)
            if chosen is None:
                chosen = default_classes(probabilities, thresholds, max_classes)
            total = np.zeros((len(chosen), *pixels.shape[-2:]), np.float32)
            for member, target in self.targets:
                total += grad_cam(member, target.module, pixels, chosen)
        height, width = field_image.shape[1:]
        maps: dict[int, np.ndarray] = {}
        for class_id, heat in zip(chosen, total, strict=True):
            maps[class_id] = upsample_map(heat, height, width)
        return Explanation(
            sample_id=sample_id,
            image=field_image,
            channels=self.channels,
            probabilities=probabilities,
            thresholds=thresholds,
            predicted=[int(i) for i in np.flatnonzero(probabilities >= thresholds)],
            maps=maps,
            layers=self.layers,
            model_name=self.model_name,
            true_labels=None if true_labels is None else [int(c) for c in true_labels],
            class_names=self.package.card.scheme.names,
        )

    def class_maps(self, images: np.ndarray, class_id: int) -> np.ndarray:
        """Grad-CAM maps of one class for a batch of images (the cells of a field), in one pass per memory budget.

        Args:
            images: ``(B, C, H, W)`` uint8 in the model's channel order, each resized to the model's input.
            class_id: the class to explain, in every image.

        Returns:
            ``(B, S, S)`` float32 at the model's input size, each image's map in 0-1 (an ensemble: the members'
            sum, so up to the number of members; :func:`upsample_map` scales it back to 0-1).
        """
        import torch

        size = self.package.size
        if images.ndim != 4 or images.shape[1] != len(self.channels):
            raise DataError(f"expected (B, {len(self.channels)}, H, W) images, got shape {images.shape}")
        if len(images) == 0:
            return np.zeros((0, size, size), np.float32)
        inputs = np.concatenate([self.preprocessor.prepare_uint8(self.check_image(image)) for image in images])
        pixels = torch.from_numpy(self.preprocessor.to_pixels(inputs)).to(self.device)
        total = np.zeros((len(images), size, size), np.float32)
        with self._lock:
            for member, target in self.targets:
                total += grad_cam(member, target.module, pixels, [int(class_id)] * len(images))
        return total

    def check_image(self, image: np.ndarray) -> np.ndarray:
        """A ``(C, H, W)`` image in the model's channels as the model reads it: uint8 (16-bit and float pixels
        mapped as the reader maps them, with the card's bit depth).

        Raises:
            DataError: not ``(C, H, W)`` with the model's channels.
        """
        from protloc.data.io import to_uint8

        array = np.asarray(image)
        channels = self.channels
        if array.ndim != 3 or array.shape[0] != len(channels) or min(array.shape[1:]) < 1:
            raise DataError(
                f"expected a ({len(channels)}, height, width) image with channels {', '.join(channels)}, "
                f"got shape {array.shape}"
            )
        bit_depth = int(self.package.card.input.bit_depth)
        return np.ascontiguousarray(to_uint8(array, bit_depth=bit_depth, where="image"))


def explain_image(
    package: ModelPackage | str | Path,
    image: np.ndarray,
    classes: Sequence[int | str] | str | None = None,
    *,
    max_classes: int = DEFAULT_MAX_CLASSES,
    sample_id: str | None = None,
    true_labels: Sequence[int] | None = None,
    device: str = "cpu",
) -> Explanation:
    """Class activation maps of one ``(C, H, W)`` field: :meth:`Explainer.explain` with a fresh explainer.

    Loading the network takes longer than explaining one field; to explain many, build an :class:`Explainer`
    once and call its :meth:`~Explainer.explain`.
    """
    return Explainer(package, device=device).explain(
        image, classes, max_classes=max_classes, sample_id=sample_id, true_labels=true_labels
    )


# ------------------------------------------------------------------------------------------ the command


def explain_sample(
    model: str | Path | ModelPackage,
    data: str | Path,
    sample_id: str,
    out: str | Path,
    *,
    split: str | None = None,
    classes: Sequence[int | str] | str | None = None,
    max_classes: int = DEFAULT_MAX_CLASSES,
    device: str = "cpu",
) -> Explanation:
    """What ``protloc explain MODEL DATA ID --out FILE`` runs: explain one sample and write its figure.

    Args:
        model: a package folder (or its card.json), or a loaded package.
        data: a Kaggle root, a labels CSV, or a folder of channel images.
        sample_id: the sample's Id.
        out: the PNG file to write (atomically: a crash never leaves half a file).
        split: the split to look in; default train, then test.
        classes: class ids or names to explain (default: the predicted ones, see :meth:`Explainer.explain`).
        max_classes: the cap on the default choice.
        device: where to run the network (``"cpu"`` by default).

    Returns:
        The explanation (maps, probabilities, predicted and true classes).

    Raises:
        ConfigError: ``out`` is not a ``.png`` file name, or an unknown class.
        DataError: the data or the Id cannot be found, or a channel file is missing or unreadable.
        ModelError: the package cannot be loaded or lacks a convolutional feature map.
    """
    from protloc.data.io import read_sample
    from protloc.model.card import check_channels_available
    from protloc.plots import save_figure

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"{out}: the explanation figure is a PNG; give a file name ending in .png")
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; give the PNG file to write")
    catalog, index = locate_sample(data, sample_id, split=split)
    explainer = Explainer(model, device=device)
    scheme = explainer.package.card.scheme
    chosen = resolve_classes(classes, scheme) if classes is not None else None
    sample_id = catalog.ids[index]
    files = catalog.paths(index)
    check_channels_available(explainer.package.card, list(files), where=f"sample {sample_id} in {catalog.image_dir}")
    image = read_sample(files, explainer.channels, bit_depth=explainer.preprocessor.bit_depth, sample_id=sample_id)
    # the sample's labels are shown only when they are in the model's scheme (a 2021 field under a 2018 model: no)
    same = catalog.scheme.names == scheme.names
    truth = catalog.scheme.ids_of(catalog.labels[index]) if catalog.labels is not None and same else None
    explanation = explainer.explain(image, chosen, max_classes=max_classes, sample_id=sample_id, true_labels=truth)
    save_figure(explanation_figure(explanation), out)
    return explanation

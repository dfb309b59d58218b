"""The JSON the service answers with, as pydantic models: they make the OpenAPI schema at ``/openapi.json``.

The models here are scheme-neutral; :func:`scheme_models` derives from them the ones a service answers with,
sized to the class scheme of the model it serves (19 probabilities for ``hpa2021``, 31 for ``subcell31``, a
user's count for a user's scheme), so the OpenAPI schema says exactly what that service sends and a response is
checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from protloc.schemes import ClassScheme


class ErrorResponse(BaseModel):
    """Every error: one line that says what is wrong and what to do."""

    detail: str = Field(description="what went wrong, in one line", examples=["missing the yellow channel: ..."])


class Label(BaseModel):
    """A predicted localization."""

    id: int = Field(ge=0, description="class id in the model's class scheme (see GET /model)")
    name: str = Field(description="class name", examples=["Nucleoplasm"])
    probability: float = Field(ge=0, le=1)
    threshold: float = Field(ge=0, le=1, description="the package's decision threshold for this class")


class ImageInfo(BaseModel):
    """The field as received (before resizing to the model's input)."""

    width: int
    height: int
    channels: list[str] = Field(description="the channels used, in the model's order")
    source: Literal["channels", "stack"] = Field(description="one file per channel, or one stacked file")


class Previews(BaseModel):
    """PNG pictures of the field as data: URLs, shrunk to at most 512 px (the service's preview side), for display."""

    composite: str = Field(description="HPA-style RGB composite: red microtubules (+ER), green protein, blue nucleus")
    channels: dict[str, str] = Field(description="each channel in its own colour")


class Timing(BaseModel):
    """Where the time went, in seconds."""

    decode: float = Field(description="decoding the uploads and resizing to the model's input")
    inference: float = Field(description="waiting for and running the network (shared with batched requests)")
    total: float


class CellMask(BaseModel):
    """A cell's mask over the whole field, in the HPA 2021 single-cell challenge's encoding."""

    encoding: Literal["hpa2021-rle"] = Field(
        description="COCO run-length encoding (pycocotools, column-major) of the full-field binary mask, "
        "zlib-compressed (level 9), base64: `protloc.cells.encode.decode_mask(counts, height, width)` reads it"
    )
    size: list[int] = Field(min_length=2, max_length=2, description="[height, width] of the field")
    counts: str = Field(description="the encoded mask, as a 2021 submission carries it")


class Cell(BaseModel):
    """One segmented cell and its localizations."""

    cell: int = Field(ge=1, description="cell id in the field's label image (1..N in raster order)")
    box: list[int] = Field(min_length=4, max_length=4, description="[y0, x0, y1, x1] in field pixels, end exclusive")
    area: int = Field(ge=1, description="pixels in the cell")
    centroid: list[float] = Field(min_length=2, max_length=2, description="[y, x] in field pixels")
    border: bool = Field(description="whether the cell touches the field's edge (cut by it)")
    top: int = Field(ge=0, description="class id of the most probable class (colours the outline)")
    labels: list[Label] = Field(description="classes at or over their threshold, most probable first")
    probabilities: list[float] = Field(description="probability of every class, indexed by class id (GET /model)")
    mask: CellMask
    outline: list[list[float]] = Field(
        description="the cell's boundary as a closed polygon [[x, y], ...] in field pixel coordinates (pixel "
        "(row, col) covers [col, col+1) x [row, row+1)), simplified to within half a pixel: draw it without decoding"
    )


class CellTiming(BaseModel):
    segment: float = Field(description="segmenting the field, in seconds")
    score: float = Field(description="running the cell and/or field model on the cells")
    encode: float = Field(description="encoding the masks and outlines")


class CellsSummary(BaseModel):
    """How the cells of a ``?cells=true`` answer were made."""

    method: Literal["cell model", "baseline: field labels to every cell", "cell + field fusion"] = Field(
        description="a cell model on each cell's crop; the field model's probabilities given to every cell (the "
        "2021 challenge's baseline); or both, combined by a fusion rule (e.g. cell x field)"
    )
    fusion: str = Field(description="the rule that made the scores, e.g. 'cell x image (field model)'")
    mix: float | None = Field(description="the cell model's weight, when the rule is a weighted mean (a mix)")
    count: int = Field(ge=0, description="cells found")
    segmenter: dict[str, Any] = Field(description="the segmenter and its settings")
    mask_encoding: Literal["hpa2021-rle"]
    palette: list[str] = Field(description="#rrggbb colour of every class id, for drawing outlines by top class")
    thresholds: list[float] = Field(description="the per-class thresholds that decided the cells' labels")
    timing: CellTiming


class PredictionResponse(BaseModel):
    """One sample's prediction."""

    id: str | None = Field(default=None, description="the sample's Id (batch requests)")
    labels: list[Label] = Field(description="predicted localizations, most probable first")
    target: str = Field(
        description="the labels as the scheme's labels file writes them: class ids ascending, in its separator "
        "(hpa2018: spaces, hpa2021: |)",
        examples=["0 25"],
    )
    probabilities: list[float] = Field(description="probability of every class, indexed by class id (see GET /model)")
    image: ImageInfo
    seconds: float = Field(description="time taken by the service for this request")
    timing: Timing
    previews: Previews | None = Field(default=None, description="only with ?previews=true")
    cells: list[Cell] | None = Field(default=None, description="only with ?cells=true: the field's cells")
    cell_info: CellsSummary | None = Field(default=None, description="only with ?cells=true: how they were made")


class BatchResponse(BaseModel):
    """Several samples' predictions, in the order the samples were first named in the upload."""

    results: list[PredictionResponse]
    count: int
    seconds: float


class ClassInfo(BaseModel):
    id: int
    name: str
    short: str
    threshold: float


class SchemeInfo(BaseModel):
    """The class scheme the model predicts (hpa2018: 28 classes; hpa2021: 19; subcell31: 31; or a user's)."""

    name: str
    title: str = ""
    exclusive: list[str] = Field(default_factory=list, description="classes that exclude every other (Negative)")


class CellCapabilities(BaseModel):
    """What ``?cells=true`` can do on this service."""

    cell_model: str | None = Field(description="the cell model's architecture; null: only the field baseline")
    crop_size: int | None = Field(description="side of the cell model's crops in px")
    methods: list[Literal["auto", "cell", "baseline", "mix", "fusion"]] = Field(
        description="values ?cell_method= takes"
    )
    default_method: str = Field(description="what cell_method=auto gives")
    default_fusion: str = Field(description="the rule of cell_method=auto: the cell model's fitted fusion")
    mix: float = Field(description="the cell model's weight in cell_method=mix")
    mask_encoding: Literal["hpa2021-rle"]
    max_pixels: int = Field(description="largest field (height x width) segmented; larger ones get 422")
    adaptation: dict[str, Any] = Field(
        default_factory=dict,
        description="the cell model's own protloc adapt record (methods, fields and cells used, when; empty: as "
        "trained); the top-level adaptation is the served field network's",
    )


class ModelInfo(BaseModel):
    """The model package's card, as far as a client needs it."""

    name: str = Field(description="architecture, or 'ensemble of N'")
    kind: str
    scheme: SchemeInfo
    backend: Literal["onnx", "torch"]
    channels: list[str] = Field(description="channels the model reads, in order")
    size: int = Field(description="the model's input side in pixels; fields of any size are resized to it")
    bit_depth: int = Field(description="significant bits of 16-bit pixels (mapped linearly to 0-255)")
    classes: list[ClassInfo]
    thresholds: list[float]
    decision: dict[str, Any]
    metrics: dict[str, Any] = Field(description="validation metrics recorded in the package")
    architecture: dict[str, Any]
    training: dict[str, Any] = Field(description="what the model was trained on (counts, sizes, epochs)")
    adaptation: dict[str, Any] = Field(
        default_factory=dict,
        description="protloc adapt's record: methods, fields used, their fingerprint, when (empty: as trained)",
    )
    protloc_version: str | None = Field(description="protloc version that made the package")
    created: str | None
    service_version: str = Field(description="protloc version serving it")
    explanations: bool = Field(description="whether POST /explain can work here (PyTorch and weights present)")
    cells: CellCapabilities | None = Field(default=None, description="per-cell prediction (?cells=true)")


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    backend: str
    model: str
    uptime_seconds: float
    requests: int = Field(description="prediction and explanation requests admitted so far")
    in_flight: int = Field(description="requests in progress now")
    samples: int = Field(description="samples run through the network so far")
    batches: int = Field(description="network calls so far")
    mean_batch: float = Field(description="samples per network call (micro-batching at work when > 1)")


# ------------------------------------------------------------------------------------------ per scheme


@dataclass(frozen=True)
class SchemeModels:
    """The response models of a service whose model predicts ``scheme`` (see :func:`scheme_models`)."""

    scheme: ClassScheme
    label: type[Label]
    cell: type[Cell]
    cells_summary: type[CellsSummary]
    prediction: type[PredictionResponse]
    batch: type[BatchResponse]
    model_info: type[ModelInfo]


def scheme_models(scheme: ClassScheme) -> SchemeModels:
    """Response models sized to ``scheme``: class ids ``0..N-1`` and exactly ``N`` probabilities, thresholds,
    classes and palette colours, ``N`` the scheme's class count. They keep the neutral models' names, so the
    OpenAPI schema's components are called the same whatever the scheme."""
    n = scheme.num_classes
    what = f"{scheme.describe()}, ids {scheme.id_range}"

    def derive(base: type[BaseModel], **fields: Any) -> Any:
        return create_model(base.__name__, __base__=base, __doc__=base.__doc__, __module__=__name__, **fields)

    def list_of(kind: Any) -> Any:
        return list[kind]

    def per_class(kind: Any, description: str) -> tuple[Any, Any]:
        return list_of(kind), Field(min_length=n, max_length=n, description=description)

    def class_id(description: str) -> tuple[Any, Any]:
        return int, Field(ge=0, le=n - 1, description=description)

    label = derive(Label, id=class_id(f"class id in {what} (see GET /model)"))
    labels = list_of(label)
    cell = derive(
        Cell,
        top=class_id("class id of the most probable class (colours the outline)"),
        labels=(labels, Field(description="classes at or over their threshold, most probable first")),
        probabilities=per_class(float, f"probability of every class of {what}, indexed by class id"),
    )
    summary = derive(
        CellsSummary,
        palette=per_class(str, "#rrggbb colour of every class id, for drawing outlines by top class"),
        thresholds=per_class(float, "the per-class thresholds that decided the cells' labels"),
    )
    cells = list_of(cell) | None
    prediction = derive(
        PredictionResponse,
        labels=(labels, Field(description="predicted localizations, most probable first")),
        probabilities=per_class(float, f"probability of every class of {what}, indexed by class id"),
        cells=(cells, Field(default=None, description="only with ?cells=true: the field's cells")),
        cell_info=(summary | None, Field(default=None, description="only with ?cells=true: how they were made")),
    )
    results = list_of(prediction)
    batch = derive(BatchResponse, results=(results, ...))
    info = derive(
        ModelInfo,
        classes=per_class(ClassInfo, f"the classes of {what}, in id order"),
        thresholds=per_class(float, "the decision threshold of every class"),
    )
    return SchemeModels(scheme, label, cell, summary, prediction, batch, info)

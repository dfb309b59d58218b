"""One self-contained HTML report of a run: data, training, per-class scores, thresholds, errors, gallery.

:func:`write_report` gathers what a run directory holds (metrics, curves, per-class scores, thresholds,
config, timings) plus, when given, data set statistics and a scored test set, and writes a single HTML
file with every picture embedded (base64 PNG), so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protloc import __version__
from protloc.errors import DataError, ProtlocError
from protloc.metrics import EvaluationReport
from protloc.model.card import CARD_FILE, ModelCard, read_card
from protloc.schemes import ClassScheme, scheme_for_names
from protloc.utils import atomic_write_text

STYLE = """
:root { --ink:#1d2433; --muted:#5c6678; --line:#e3e7ee; --accent:#2a9d8f; --bad:#c8553d; --bg:#fafbfc; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: var(--bg); margin: 0; }
header { background: #14213d; color: #fff; padding: 28px 40px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p { margin: 0; color: #c9d3e6; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 40px 60px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 20px 24px; margin: 20px 0; }
h2 { margin-top: 0; font-size: 20px; }
nav a { color: #c9d3e6; margin-right: 14px; text-decoration: none; font-size: 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; }
.card { flex: 1 1 170px; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .value { font-size: 26px; font-weight: 650; }
.card .label { color: var(--muted); font-size: 13px; }
img.figure { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; margin: 6px 0; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 14px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
th { background: #f2f4f8; position: sticky; top: 0; }
td.bar { width: 160px; }
.bar span { display: inline-block; height: 10px; background: var(--accent); border-radius: 2px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(340px, 100%), 1fr)); gap: 14px; }
.tile { border: 1px solid var(--line); border-radius: 8px; padding: 8px; font-size: 13px; }
.tile img { width: 100%; border-radius: 4px; }
.tile .pair { display: flex; gap: 4px; }
.tile .pair img { flex: 1 1 0; min-width: 0; width: 0; height: auto; }
.ok { color: var(--accent); font-weight: 600; } .miss { color: var(--bad); font-weight: 600; }
.extra { color: #b07d00; font-weight: 600; }
pre { background: #f6f8fa; padding: 12px; border-radius: 6px; overflow-x: auto; font-size: 12.5px; }
.muted { color: var(--muted); }
"""


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_uri(figure: Any) -> str:
    from protloc.plots import figure_png_bytes

    return png_data_uri(figure_png_bytes(figure, dpi=90))


def _file_uri(path: Path) -> str | None:
    return png_data_uri(path.read_bytes()) if path.is_file() else None


def _img(uri: str | None, alt: str) -> str:
    return f'<img class="figure" src="{uri}" alt="{html.escape(alt)}">' if uri else ""


@dataclass
class TestSet:
    """A scored test set for the report: ids, truth, probabilities, the decisions and their report."""

    ids: list[str]
    truth: np.ndarray
    probabilities: np.ndarray
    predicted: np.ndarray
    report: EvaluationReport
    files: Mapping[str, Mapping[str, Path]] = field(default_factory=dict)


def error_matrix(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Rows: true class t; columns: predicted class p; value: share of the images of t that were given p.

    The diagonal is each class's recall; off the diagonal, which wrong classes images of t were given.
    """
    counts = truth.sum(axis=0).astype(np.float64)
    matrix = truth.T.astype(np.float64) @ predicted.astype(np.float64)
    return np.divide(matrix, counts[:, None], out=np.zeros_like(matrix), where=counts[:, None] > 0)


def error_figure(truth: np.ndarray, predicted: np.ndarray, scheme: ClassScheme) -> Any:
    from protloc.plots import _figure

    matrix = error_matrix(truth, predicted)
    figure = _figure(10, 9)
    axis = figure.subplots()
    shown = axis.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    labels = [f"{scheme.shorts[i]} ({i})" for i in range(len(scheme))]
    axis.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    support = truth.sum(axis=0)
    axis.set_yticks(
        range(len(labels)), [f"{lab} n={int(n)}" for lab, n in zip(labels, support, strict=True)], fontsize=8
    )
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    figure.colorbar(shown, ax=axis, shrink=0.8, label="share of the true class's images given this class")
    axis.set_title("what each class was predicted as (diagonal = recall)", fontsize=11)
    return figure


def thresholds_figure(thresholds: Sequence[float], methods: Sequence[str] | None, scheme: ClassScheme) -> Any:
    from protloc.plots import PALETTE, _figure

    figure = _figure(10, 3.6)
    axis = figure.subplots()
    colours = [PALETTE["muted"] if m == "fallback" else PALETTE["accent"] for m in (methods or [""] * len(thresholds))]
    axis.bar(range(len(thresholds)), thresholds, color=colours)
    axis.axhline(0.5, color=PALETTE["val"], linestyle="--", linewidth=1, label="0.5")
    axis.set_xticks(
        range(len(thresholds)), [f"{scheme.shorts[i]} ({i})" for i in range(len(thresholds))], rotation=90, fontsize=8
    )
    axis.set_ylim(0, 1)
    axis.set_ylabel("threshold")
    axis.set_title("per-class thresholds (grey: too few validation positives, global fallback)", fontsize=11)
    axis.spines[["top", "right"]].set_visible(False)
    return figure


def _per_class_table(report: EvaluationReport, methods: Sequence[str] | None = None) -> str:
    rows = []
    for row in sorted(report.per_class, key=lambda r: -r.support):
        f1 = "–" if row.f1 is None else f"{row.f1:.3f}"
        width = 0 if row.f1 is None else int(150 * row.f1)
        method = html.escape(methods[row.class_id]) if methods else ""
        rows.append(
            f"<tr><td>{row.class_id}</td><td>{html.escape(row.name)}</td><td>{row.support}</td>"
            f"<td>{row.predicted}</td><td>{row.precision:.3f}</td><td>{row.recall:.3f}</td><td>{f1}</td>"
            f'<td class="bar"><span style="width:{width}px"></span></td><td>{row.threshold:.2f}</td>'
            f"<td>{method}</td></tr>"
        )
    return (
        "<table><thead><tr><th>id</th><th>class</th><th>support</th><th>predicted</th><th>precision</th>"
        "<th>recall</th><th>F1</th><th></th><th>threshold</th><th>how</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _cards(items: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="value">{html.escape(v)}</div>'
            f'<div class="label">{html.escape(k)}</div></div>'
            for k, v in items
        )
        + "</div>"
    )


def _labels_html(
    truth: Sequence[int], predicted: Sequence[int], probabilities: np.ndarray, names: Sequence[str]
) -> str:
    parts = []
    for class_id in sorted(set(truth) | set(predicted)):
        name = html.escape(names[class_id])
        probability = f" {probabilities[class_id]:.2f}"
        if class_id in truth and class_id in predicted:
            parts.append(f'<span class="ok" title="correct">✓ {name}{probability}</span>')
        elif class_id in truth:
            parts.append(f'<span class="miss" title="missed">✗ {name}{probability}</span>')
        else:
            parts.append(f'<span class="extra" title="predicted, not true">+ {name}{probability}</span>')
    return "<br>".join(parts)


def gallery_html(
    test: TestSet,
    package_path: Path | None,
    channels: Sequence[str],
    count: int = 8,
    seed: int = 0,
    *,
    scheme: ClassScheme,
) -> str:
    """Tiles of test samples: composite (and class activation map of the top prediction), true vs predicted."""
    from protloc.data.io import read_sample
    from protloc.plots import composite_rgb, stretch_for_display

    if not test.files:
        return ""
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(test.ids), size=min(count, len(test.ids)), replace=False).tolist())
    explainer = None
    missing_maps = ""  # why the tiles show no activation maps, said once under the gallery
    if package_path is not None:
        try:
            from protloc.explanation.explain import explain_image, overlay_png
            from protloc.model.package import load_package

            package = load_package(package_path)
            explainer = (package, explain_image, overlay_png)
        except ImportError as exc:  # a torch-free install: the gallery works without the maps
            missing_maps = f"no activation maps: explanations need PyTorch and grad-cam ({exc.name} is not installed)"
        except ProtlocError as exc:
            missing_maps = f"no activation maps: {exc}"
    tiles = []
    for index in picks:
        sample_id = test.ids[index]
        image = read_sample(test.files[sample_id], channels, sample_id=sample_id)
        truth = [int(i) for i in np.flatnonzero(test.truth[index])]
        predicted = [int(i) for i in np.flatnonzero(test.predicted[index])]
        pictures = [_composite_png(composite_rgb(stretch_for_display(image), channels))]
        caption = ""
        if explainer is not None and predicted:
            package, explain_image, overlay_png = explainer
            top = max(predicted, key=lambda c: test.probabilities[index][c])
            try:
                explanation = explain_image(package, image, [top])
            except ProtlocError as exc:  # e.g. an architecture without a convolutional feature map
                missing_maps = f"no activation maps: {exc}"
                explainer = None
            else:
                pictures.append(png_data_uri(overlay_png(explanation, top)))
                caption = f"<div class='muted'>right: activation map for {html.escape(scheme.names[top])}</div>"
        images = "".join(f'<img src="{uri}" alt="">' for uri in pictures)
        tiles.append(
            f'<div class="tile"><div class="pair">{images}</div>{caption}'
            f"<div><b>{html.escape(sample_id[:18])}…</b></div>"
            f"{_labels_html(truth, predicted, test.probabilities[index], scheme.names)}</div>"
        )
    legend = (
        '<p class="muted"><span class="ok">✓ correct</span> · <span class="miss">✗ missed</span> · '
        '<span class="extra">+ predicted but not true</span>; numbers are probabilities.</p>'
    )
    if missing_maps:
        legend += f'<p class="muted">{html.escape(missing_maps)}</p>'
    return legend + '<div class="gallery">' + "".join(tiles) + "</div>"


def _composite_png(rgb: np.ndarray) -> str:
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return png_data_uri(encoded.tobytes()) if ok else ""


def build_report(
    run_dir: str | Path,
    *,
    title: str = "protloc run report",
    stats_dir: str | Path | None = None,
    test: TestSet | None = None,
    timings: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
    gallery_size: int = 8,
    extra_sections: Sequence[tuple[str, str, str]] = (),
) -> str:
    """The report's HTML text (see :func:`write_report`); ``extra_sections`` are ``(anchor, heading, HTML)``
    placed before the configuration (e.g. the single-cell section of :mod:`protloc.cells.report`)."""
    run = _RunFiles.read(Path(run_dir))
    sections = [("overview", "Overview", _overview(run, test, notes))]
    if stats_dir is not None:
        sections.append(_data_section(Path(stats_dir)))
    curves = _img(_file_uri(run.dir / "training_curves.png"), "training curves")
    sections.append(("training", "Training", curves + _metrics_table(run.dir / "metrics.csv")))
    if run.validation is not None:
        body = _img(_file_uri(run.dir / "per_class_f1.png"), "per-class F1 (validation)")
        body += _per_class_table(run.validation, run.methods)
        sections.append(("validation", "Validation fold: per-class scores", body))
    if run.card is not None:
        sections.append(_thresholds_section(run.card, run.gain, run.methods))
    if test is not None:
        sections.extend(_test_sections(run, test, gallery_size))
    sections.extend(extra_sections)
    details = {"config": run.config, "timings_seconds": dict(timings or {}), "run": run.summary}
    sections.append(
        ("config", "Configuration and timings", f"<pre>{html.escape(json.dumps(details, indent=2, default=str))}</pre>")
    )
    return _page(title, run.dir, sections)


@dataclass
class _RunFiles:
    """What a run folder says about itself: its card, validation report, summary and thresholds."""

    dir: Path
    card: ModelCard | None
    validation: EvaluationReport | None
    scheme: ClassScheme
    summary: dict[str, Any]
    thresholds_info: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path) -> _RunFiles:
        card = read_card(run_dir / "model") if (run_dir / "model" / CARD_FILE).is_file() else None
        validation = _report_from_json(run_dir / "report.json")
        if card is not None:
            scheme = card.scheme
        elif validation is not None:  # a run that has not written its package yet: its report names the classes
            scheme = scheme_for_names([row.name for row in validation.per_class])
        else:
            raise DataError(f"{run_dir}: neither a model card nor a validation report; is it a protloc training run?")

        def optional_json(name: str) -> dict[str, Any]:
            path = run_dir / name
            return dict(json.loads(path.read_text())) if path.is_file() else {}

        return cls(run_dir, card, validation, scheme, optional_json("summary.json"), optional_json("thresholds.json"))

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.card.training.get("config", {})) if self.card is not None else {}

    @property
    def gain(self) -> dict[str, float]:
        return dict(self.thresholds_info.get("gain", {}))

    @property
    def methods(self) -> list[str] | None:
        """How each class's threshold was set (fitted, fallback, fixed), in class-id order."""
        return list(self.thresholds_info.get("methods", {}).values()) or None


def _overview(run: _RunFiles, test: TestSet | None, notes: Sequence[str]) -> str:
    headline = [("validation macro F1", f"{run.validation.macro_f1:.3f}" if run.validation else "–")]
    if test is not None:
        headline.append(("test macro F1", f"{test.report.macro_f1:.3f}"))
        headline.append(("test micro F1", f"{test.report.micro_f1:.3f}"))
    if run.gain:
        headline.append(("gain from per-class thresholds (cv)", f"{run.gain.get('gain_cv', float('nan')):+.3f}"))
    headline.append(("model", f"{run.config.get('model', '?')} @ {run.card.size if run.card is not None else '?'} px"))
    headline.append(("epochs", str(run.summary.get("epochs_run", "?"))))
    return _cards(headline) + "".join(f"<p>{html.escape(n)}</p>" for n in notes)


def _data_section(stats_dir: Path) -> tuple[str, str, str]:
    figures = [
        _img(_file_uri(stats_dir / f"{name}.png"), name)
        for name in ("class_distribution", "labels_per_image", "cooccurrence", "channel_intensity")
    ]
    samples = "".join(_img(_file_uri(path), path.stem) for path in sorted(stats_dir.glob("sample_*.png"))[:2])
    return ("data", "Data set", '<div class="grid2">' + "".join(figures) + "</div>" + samples)


def _thresholds_section(card: ModelCard, gain: dict[str, float], methods: list[str] | None) -> tuple[str, str, str]:
    text = ""
    if gain:
        text = (
            f"<p>Macro F1 with one 0.5 threshold: {gain['macro_f1_at_0_5']:.3f}; with per-class thresholds "
            f"fitted on the validation fold: {gain['macro_f1_fitted_in_sample']:.3f} (in sample) and "
            f"{gain['macro_f1_fitted_cv']:.3f} vs {gain['macro_f1_at_0_5_cv']:.3f} cross-validated "
            "(fitted on one half, scored on the other).</p>"
        )
    figure = _img(_figure_uri(thresholds_figure(card.thresholds, methods, card.scheme)), "thresholds")
    return ("thresholds", "Thresholds", text + figure)


def _test_sections(run: _RunFiles, test: TestSet, gallery_size: int) -> list[tuple[str, str, str]]:
    from protloc.plots import per_class_f1

    body = _img(_figure_uri(per_class_f1(test.report, title="test")), "per-class F1 (test)")
    body += _per_class_table(test.report, run.methods)
    errors = _img(_figure_uri(error_figure(test.truth, test.predicted, run.scheme)), "errors")
    sections = [("test", f"Test set: {test.report.n_samples} images", body), ("errors", "Errors", errors)]
    package = run.dir / "model" if (run.dir / "model").is_dir() else None
    channels = list(run.card.channels) if run.card is not None else []
    gallery = gallery_html(test, package, channels, count=gallery_size, scheme=run.scheme)
    if gallery:
        sections.append(("gallery", "Gallery: test samples, true vs predicted", gallery))
    return sections


def _page(title: str, run_dir: Path, sections: Sequence[tuple[str, str, str]]) -> str:
    nav = "".join(f'<a href="#{anchor}">{html.escape(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(
        f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>{content}</section>'
        for anchor, heading, content in sections
    )
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
        f"content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1>"
        f"<p>protloc {__version__} · {when} · run {html.escape(str(run_dir))}</p><nav>{nav}</nav></header>"
        f"<main>{body}</main></body></html>"
    )


def _metrics_table(path: Path) -> str:
    from protloc.training.run_folder import read_metrics

    rows = read_metrics(path)
    if not rows:
        return ""
    head = (
        "<table><thead><tr><th>epoch</th><th>step</th><th>train loss</th><th>train macro F1</th><th>val loss</th>"
        "<th>val macro F1</th><th>lr</th><th>images/s</th></tr></thead><tbody>"
    )
    body = "".join(
        f"<tr><td>{int(r['epoch']) + 1}</td><td>{int(r['step'])}</td><td>{r['train_loss']:.4f}</td>"
        f"<td>{r['train_macro_f1']:.3f}</td><td>{r['val_loss']:.4f}</td><td>{r['val_macro_f1']:.3f}</td>"
        f"<td>{r['lr']:.2e}</td><td>{r['images_per_second']:.0f}</td></tr>"
        for r in rows
    )
    return head + body + "</tbody></table>"


def _report_from_json(path: Path) -> EvaluationReport | None:
    from protloc.metrics import ClassScore

    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    rows = [ClassScore(**row) for row in data.pop("per_class")]
    return EvaluationReport(per_class=rows, **data)


def write_report(path: str | Path, run_dir: str | Path, **options: Any) -> Path:
    """Write the single-file HTML report of ``run_dir`` to ``path`` (options: see :func:`build_report`)."""
    return atomic_write_text(path, build_report(run_dir, **options))

"""The single-cell section of the HTML report: outline pictures, the per-cell table and the per-cell scores.

:func:`cells_section_html` renders a :func:`protloc.cells.outputs.predict_cells` folder (with the pictures
it drew) and, when per-cell truth was there, its :class:`~protloc.cells.outputs.CellEvaluation`. The method
(cell model, or the baseline that gives every cell its field's labels) is stated at the top.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protloc.cells.outputs import PICTURES_DIR, PROVENANCE_FILE, TABLE_FILE, CellEvaluation, prediction_classes
from protloc.cells.table import read_table


def _picture(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(path.stem)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def _comparison(compare: Sequence[tuple[str, CellEvaluation]]) -> str:
    """Methods scored on the same cells: per-cell mAP and the difference from the last one (the baseline)."""
    first = compare[0][1]
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td><b>{e.map:.3f}</b></td><td>{e.map - compare[-1][1].map:+.3f}</td></tr>"
        for name, e in compare
    )
    note = ""
    if len(compare) > 1:
        note = (
            f"<p>Both scored on the same cells of the same fields ({first.predicted_cells} cells); the last row is "
            "the baseline a cell model must beat.</p>"
        )
    return "<table><tr><th>method</th><th>per-cell mAP</th><th>vs baseline</th></tr>" + body + "</table>" + note


def cells_section_html(
    folder: str | Path,
    *,
    evaluation: CellEvaluation | None = None,
    rows: int = 30,
    compare: Sequence[tuple[str, CellEvaluation]] = (),
) -> str:
    """HTML for the report's single-cell section (the first ``rows`` cells in the table); ``compare`` lists
    methods scored on the same cells, ``(name, evaluation)``, shown side by side (the first is ``folder``'s)."""
    folder = Path(folder)
    provenance = json.loads((folder / PROVENANCE_FILE).read_text()) if (folder / PROVENANCE_FILE).is_file() else {}
    method = str(provenance.get("method", "?"))
    parts = [f"<p>Method: <b>{html.escape(method)}</b>.</p>"]
    if method.startswith("baseline"):
        parts.append(
            "<p>No cell model was trained here: every cell is given its field's probabilities. This is the "
            "honest baseline a cell model must beat.</p>"
        )
    if evaluation is not None:
        seg = {s["iou"]: s for s in evaluation.segmentation}
        cards = [
            ("per-cell mAP (2021, IoU >= 0.6)", f"{evaluation.map:.3f}"),
            ("segmentation F1 @ IoU 0.5", f"{seg[0.5]['f1']:.3f}" if 0.5 in seg else "–"),
            ("segmentation F1 @ IoU 0.75", f"{seg[0.75]['f1']:.3f}" if 0.75 in seg else "–"),
            ("cells segmented / true", f"{evaluation.predicted_cells} / {evaluation.true_cells}"),
        ]
        parts.append(
            '<div class="cards">'
            + "".join(
                f'<div class="card"><div class="value">{html.escape(v)}</div>'
                f'<div class="label">{html.escape(k)}</div></div>'
                for k, v in cards
            )
            + "</div>"
        )
    if compare:
        parts.append(_comparison(compare))
    pictures = sorted((folder / PICTURES_DIR).glob("*_outlines.png"))
    if pictures:
        parts.append('<div class="grid2">' + "".join(_picture(p) for p in pictures) + "</div>")
    table = read_table(folder / TABLE_FILE)
    n = len(table["cell"])
    head = "<tr><th>field</th><th>cell</th><th>box (y0, x0, y1, x1)</th><th>area</th><th>border</th>"
    head += "<th>labels</th><th>top probabilities</th></tr>"
    body = []
    names = prediction_classes(folder)
    probabilities = np.stack([table[f"p_{name}"] for name in names], axis=1) if n else np.zeros((0, 0))
    for i in range(min(rows, n)):
        top = np.argsort(probabilities[i])[::-1][:3]
        labels = [names[int(k)] for k in str(table["labels"][i]).split("|") if k]
        body.append(
            f"<tr><td>{html.escape(str(table['id'][i])[:13])}…</td><td>{int(table['cell'][i])}</td>"
            f"<td>{int(table['y0'][i])}, {int(table['x0'][i])}, {int(table['y1'][i])}, {int(table['x1'][i])}</td>"
            f"<td>{int(table['area'][i])}</td><td>{'yes' if table['border'][i] else ''}</td>"
            f"<td>{html.escape(', '.join(labels))}</td>"
            f"<td>{html.escape(', '.join(f'{names[int(k)]} {probabilities[i, k]:.2f}' for k in top))}</td></tr>"
        )
    parts.append(f"<p>{n} cells; the first {min(rows, n)}:</p>")
    parts.append(f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>")
    return "".join(parts)

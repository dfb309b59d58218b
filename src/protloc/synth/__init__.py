"""Synthetic HPA-like data: fields of cells in four fluorescence channels, written in the Kaggle layout.

protloc's embedded data set. :func:`make_dataset` writes exactly what the Kaggle "Human Protein Atlas Image
Classification" (2018) competition shipped, plus the test truth::

    OUT/train.csv                  Id,Target   (Target = space-separated class ids, ascending)
    OUT/train/<Id>_<channel>.png   red, green, blue, yellow
    OUT/test/<Id>_<channel>.png
    OUT/sample_submission.csv      Id,Predicted (Predicted = 0 on every row, as Kaggle's)
    OUT/test_truth.csv             Id,Target   (the labels of test/, which Kaggle kept secret)
    OUT/{train,test}_cells_truth/  with cells=True: <Id>_cells.png label images and cells.csv (per-cell
                                   classes; see :mod:`.cells`); field labels are the union over cells

What is drawn (see ``docs/synthetic-data.md`` for pictures): a field of cells of varying number, size, shape
and brightness, from sparse to dense and touching; each cell has a nucleus (blue) with nucleoli, a
microtubule network radiating from a centrosome next to the nucleus (red) and a reticular endoplasmic
reticulum that is densest around the nucleus (yellow). Some fields hold rounded mitotic cells (condensed
chromosomes, a spindle) or pairs of daughter cells. The green channel draws, relative to those landmarks, a
distinct pattern for each of the 28 classes; the patterns of a multi-label image add up, and not every cell
expresses them. Landmark channels are drawn from their own random stream, so they never depend on the labels,
except that label 16 (cytokinetic bridge) and 17 (mitotic spindle) guarantee a dividing pair or a mitotic
cell in the field (which also occur, less often, without them).

Everything derives from ``seed``: one :class:`numpy.random.SeedSequence` per sample, keyed by (seed, split,
index), so the same seed gives byte-identical files whatever the number of worker processes. Geometry is
specified for a 512 px field and scaled, so a 128 px image looks like a downscaled 512 px one.

The package is split by what each part owns: :mod:`.labels` (label sets and ids), :mod:`.drawing` (primitives),
:mod:`.field` (cells and the landmark channels), :mod:`.patterns` (the green pattern of each class, as a table),
:mod:`.sample` (one sample and the brightness model), :mod:`.cells` (single-cell truth) and :mod:`.writer`
(:func:`make_dataset`).

May import: the top level, ``data`` and ``cells`` (the per-cell truth is written in the cells' formats).
"""

from protloc.synth.cells import CellTruth
from protloc.synth.labels import sample_label_sets, synth_id
from protloc.synth.sample import MAX_SIZE, MIN_SIZE, REAL_CHANNEL_STATS, generate_sample, generate_sample_with_cells
from protloc.synth.writer import CELL_TRUTH_FOLDERS, CELL_TRUTH_TABLE, IMAGE_FORMATS, SynthSummary, make_dataset

__all__ = [
    "CELL_TRUTH_FOLDERS",
    "CELL_TRUTH_TABLE",
    "IMAGE_FORMATS",
    "MAX_SIZE",
    "MIN_SIZE",
    "REAL_CHANNEL_STATS",
    "CellTruth",
    "SynthSummary",
    "generate_sample",
    "generate_sample_with_cells",
    "make_dataset",
    "sample_label_sets",
    "synth_id",
]

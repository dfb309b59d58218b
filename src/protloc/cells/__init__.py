"""Single cells: segment each field into cells, measure them, encode and score them as HPA's 2021 challenge did.

The package is split by what each module owns:

* :mod:`protloc.cells.segment` - the classical seeded-watershed segmenter, the :class:`Segmenter` protocol and
  its registry (learned segmenters such as cellpose plug in there), and segmentation of a whole data set.
* :mod:`protloc.cells.runner` - segmenting a whole data set into a folder (``protloc segment``).
* :mod:`protloc.cells.masks` - label images on disk, border flags, region properties, cell crops.
* :mod:`protloc.cells.encode` - the 2021 competition's mask encoding and its submission rows.
* :mod:`protloc.cells.metrics` - the 2021 challenge metric (mAP at mask IoU >= 0.6) and segmentation quality.
* :mod:`protloc.cells.table` - the per-cell table (CSV) and the AnnData ``.h5ad`` writer.
* :mod:`protloc.cells.draw` - the field with cell outlines coloured by their labels.
* :mod:`protloc.cells.truth` - per-cell ground truth on disk (what ``protloc synth --cells`` writes).
* :mod:`protloc.cells.dataset` - cell data sets: every cell cut once into a masked crop, labels per cell,
  weak (the field's) or given, folds by field; ``protloc train`` makes a cell model of one.
* :mod:`protloc.cells.pseudo` - pseudo-labels: weak cell labels refined by a cell model's scores.
* :mod:`protloc.cells.fusion` - how a cell's and its field's probabilities combine (product, means, Negative
  rules), the rule fitted on validation fields and kept on the card; a cell model's image head.
* :mod:`protloc.cells.cam` - CAM-in-mask: a field model's class activation maps averaged in each cell.
* :mod:`protloc.cells.predict` - per-cell prediction of a field: cell model, the field baseline, or their
  fusion; a cell package that carries its field model.
* :mod:`protloc.cells.outputs` - a data set's per-cell table, 2021 submission, AnnData and pictures; scores
  against per-cell truth, every method side by side.
* :mod:`protloc.cells.report` - the single-cell section of the HTML report.

Training cell models lives in :mod:`protloc.training` (``mil``: the image-head cell model; ``cells``:
``protloc train DATA --cells``). Nothing here imports torch at import time (cell prediction loads it through the
model backend); scikit-image, pycocotools and anndata come with ``pip install 'protloc[cells]'``. Class names and
counts come from the model card's or the catalog's class scheme (:mod:`protloc.schemes`), never from a constant.

May import: the top level, ``data``, ``model``, ``inference`` and ``explanation``.
"""

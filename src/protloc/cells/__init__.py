"""Single cells: segment each field into cells, measure them, encode and score them as HPA's 2021 challenge did.

The package is split by what each module owns:

* :mod:`protloc.cells.segment` - the classical seeded-watershed segmenter, the :class:`Segmenter` protocol and
  its registry (learned segmenters such as cellpose plug in there), and segmentation of a whole data set.
* :mod:`protloc.cells.masks` - label images on disk, border flags, region properties, cell crops.
* :mod:`protloc.cells.encode` - the 2021 competition's mask encoding and its submission rows.
* :mod:`protloc.cells.metrics` - the 2021 challenge metric (mAP at mask IoU >= 0.6) and segmentation quality.
* :mod:`protloc.cells.table` - the per-cell table (CSV) and the AnnData ``.h5ad`` writer.
* :mod:`protloc.cells.draw` - the field with cell outlines coloured by their labels.

Nothing here imports torch; scikit-image, pycocotools and anndata come with ``pip install 'protloc[cells]'``.
"""

"""protloc in napari: an npe2 plugin (manifest ``napari.yaml`` in this package, ``pip install 'protloc[napari]'``).

* :mod:`protloc.napari.reader` - an HPA field (its ``<Id>_<channel>`` files of any generation, a microscope file
  or a folder of one field) opens as its channel layers, in the HPA colours, pixels as stored;
* :mod:`protloc.napari.widget` - the dock widget: a model, the field's channel layers, segmentation and per-cell
  prediction in a worker thread, the cells as a labels layer with their table as features, an activation map;
* :mod:`protloc.napari.analysis` - the widget's work without napari, :func:`~protloc.napari.analysis.analyse_field`
  (``protloc predict --cells`` for one field in memory), for notebooks and the tests;
* :mod:`protloc.napari.layers` - protloc's data as napari layer data (colours, features, metadata);
* :mod:`protloc.napari.writer` - a cells layer saved as protloc's files: the per-cell table and the label image.

Nothing in protloc imports it. Only :mod:`~protloc.napari.widget` needs napari and Qt at import time (the others
import napari inside the functions that make napari objects); torch is loaded only when a model runs. Docs:
``docs/napari.md``.

May import: the top level, ``data``, ``model``, ``inference``, ``explanation`` and ``cells``.
"""

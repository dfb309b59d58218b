"""Training: from a catalog to a calibrated model package.

The training story (``train``), its settings and recipes (``config``), the time budget (``budget``), the
Lightning parts (``lightning_module``, ``datamodule``, ``callbacks``, ``losses``), the run folder's files
(``run_folder``) and ensembles of packages (``ensemble``); for single cells, the cell model with an image head
trained on each field's cells (``mil``) and the whole road from a weakly labelled folder to a cell model
package, ``protloc train DATA --cells`` (``cells``); adapting a trained package to unlabelled fields of a new
microscope, ``protloc adapt`` (``adapt``: re-estimated statistics, no labels, no gradient).

May import: the top level, ``data``, ``model``, ``inference`` and ``cells`` (cell data sets train through the
same engine).
"""

"""Training: from a catalog to a calibrated model package.

The training story (``train``), its settings and recipes (``config``), the time budget (``budget``), the
Lightning parts (``lightning_module``, ``datamodule``, ``callbacks``, ``losses``), the run folder's files
(``run_folder``) and ensembles of packages (``ensemble``).

May import: the top level, ``data``, ``model``, ``inference`` and ``cells`` (cell data sets train through the
same engine).
"""

"""Data: from files on disk to samples.

Readers for every HPA generation and microscope files (``io``, ``microscope``) through one decoder with
its pixel budget (``decoder``); the catalog of a data set (``catalog``); checks and statistics (``check``,
``stats``); the on-disk uint8 cache (``cache``); folds, the dataset and its transforms (``dataset``,
``transforms``). The class schemes' JSON files live here too (``schemes/``).

May import: the top level only (errors, utils, workers, locks, channels, schemes, classes, metrics, plots).
"""

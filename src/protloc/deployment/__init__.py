"""Deployment: a package in the formats other tools run.

ONNX export checked against PyTorch (``onnx``), int8 ONNX (``quantize``), BioImage.IO export
(``bioimageio``, with ``bioimageio_compat``).

May import: the top level, ``data``, ``model``, ``inference`` and ``synth`` (a synthetic field for the parity
check where no training image is at hand).
"""

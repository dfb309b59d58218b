"""Model: what a protloc model package is.

The typed model card (``card``), the packaged network that holds its own normalisation (``network``), and
the package on disk, weights in safetensors plus the card, loaded without unpickling (``package``).

May import: the top level and ``data``.
"""

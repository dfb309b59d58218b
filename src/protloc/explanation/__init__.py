"""Explanation: where the network looked.

Grad-CAM class activation maps for packages (``explain``) and their overlays and figures (``figures``).

May import: the top level, ``data``, ``model`` and ``inference``.
"""

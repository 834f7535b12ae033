"""Cameras, the instrument simulator, hologram reconstruction, segmentation and crops;
the ``topgan`` commands that need no more (reconstruct, simulate, dataset) and what
every command shares.

This package imports neither ``service`` nor ``training``.
"""

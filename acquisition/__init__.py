"""Cameras, the instrument simulator, hologram reconstruction, segmentation and crops.

This package imports neither ``service`` nor ``training``.
"""

"""ONNX Runtime inference, model manifests and the bundled models.

This package imports neither ``service`` nor ``training``.
"""

"""One cell, several views: the probabilities of its views combined into one.

A cell crossing the field of view is imaged in several frames; each view is
classified on its own and the event's probabilities are the normalised geometric
mean of the views' (the mean of their log-probabilities, renormalised). That is
the product rule of independent evidence, tempered by the number of views so a
long track is not more confident just for being long: each view votes with its
whole distribution, so one confident view outweighs several hesitant ones, and a
view that gives a class almost nothing pulls that class down hard.
"""

from __future__ import annotations

import numpy as np

#: Probabilities are clipped to this before the logarithm (a view's exact 0).
MIN_PROBABILITY = 1e-7


def combine_views(probabilities: np.ndarray) -> np.ndarray:
    """The event's class probabilities from ``probabilities`` : (n_views, n_classes).

    Returns (n_classes,) float64 summing to 1. Raises ``ValueError`` without views.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"need (n_views, n_classes) probabilities, got shape {p.shape}")
    log_mean = np.log(np.clip(p, MIN_PROBABILITY, 1.0)).mean(axis=0)
    combined = np.exp(log_mean - log_mean.max())
    return combined / combined.sum()

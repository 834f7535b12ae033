"""Calibrated probabilities: temperature scaling, and the expected calibration error.

Temperature scaling (Guo et al. 2017) divides a classifier's logits by one number T
before the softmax: it changes no prediction (the arg-max stays), only how confident
the probabilities are. T is fitted by minimising the negative log-likelihood of
crops the classifier was not trained on, over log T, within :data:`BOUNDS`.

At the sizes this product is made for the held-out crops are few: 10 labels leave a
validation split of 2 crops (1 a class), and the NLL of 2 crops that the model gets
right falls without end as T goes to 0 (more confidence is always better there),
while one miss sends T to its upper bound. So the fit is a MAP estimate with a
normal prior on log T centred on T = 1 (:data:`PRIOR_SD_LOG_T`): the prior weighs
like a fixed number of crops, so on a handful it keeps T near 1 and on a few hundred
the data decide. And below :data:`MIN_CROPS` held-out crops no temperature is fitted
at all (:func:`fitted_record`): at 10 labels even out-of-fold logits of all 10 crops
made the test folds' calibration worse or no better, their models being trained on
8 crops, not 10. The prior's width and the cut were chosen on development data
(simulated with other seeds than any evaluation; ``docs/evaluation/dev/calibration.md``).

How well they are calibrated is the expected calibration error
(:func:`training.metrics.expected_calibration_error`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from .metrics import ECE_BINS, expected_calibration_error

#: The temperatures a fit may reach: beyond them the data are degenerate (every
#: crop right, or the logits all but constant), not informative.
BOUNDS = (0.05, 20.0)
#: Standard deviation of the prior on log T (T = 1 at its centre): see the module's
#: docstring and docs/evaluation/dev/calibration.md.
PRIOR_SD_LOG_T = 0.5
#: Fewer held-out crops than this fit no temperature (T = 1).
MIN_CROPS = 20


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, C) logits -> (N, C) probabilities of ``logits / temperature`` (float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, prior_sd: float | None = PRIOR_SD_LOG_T
) -> float:
    """The T minimising the summed NLL of ``labels`` under ``softmax(logits / T)``
    plus ``(log T)^2 / (2 prior_sd^2)`` (no prior with ``prior_sd`` None), over log T
    within :data:`BOUNDS`. 1.0 without crops."""
    if len(labels) == 0:
        return 1.0
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(z) != len(y) or z.ndim != 2:
        raise ValueError(f"need (N, C) logits and N labels, got {z.shape} and {y.shape}")
    weight = 0.0 if prior_sd is None else 1.0 / (2.0 * prior_sd**2)

    def objective(log_t: float) -> float:
        return len(y) * nll(z, y, math.exp(log_t)) + weight * log_t**2

    lo, hi = math.log(BOUNDS[0]), math.log(BOUNDS[1])
    found = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    # Brent's bounded search never lands exactly on a bound: a flat or monotone
    # objective there is the bound itself.
    best = min((float(found.x), lo, hi), key=objective)
    return math.exp(best)


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what it did on the crops it was fitted on.

    method : "validation" (the training's validation split), "calibration-split"
        (the half of it that did not choose the epoch) or "out-of-fold" (logits of
        the training crops from models fitted without them)
    """

    temperature: float
    method: str
    crops: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, method: str) -> TemperatureFit:
        """Fit T on ``logits`` of held-out crops with ``labels`` (the prior's default)."""
        t = fit_temperature(logits, labels)
        return cls(
            temperature=t,
            method=method,
            crops=len(labels),
            ece_before=expected_calibration_error(softmax(logits), labels),
            ece_after=expected_calibration_error(softmax(logits, t), labels),
            nll_before=nll(logits, labels),
            nll_after=nll(logits, labels, t),
        )

    def record(self) -> dict[str, Any]:
        """The manifest's ``calibration`` object (models.manifest.Calibration)."""
        return {
            "temperature": round(self.temperature, 6),
            "method": self.method,
            "crops": self.crops,
            "prior_sd_log_temperature": PRIOR_SD_LOG_T,
            "bins": ECE_BINS,
            "ece_before": round(self.ece_before, 4),
            "ece_after": round(self.ece_after, 4),
            "nll_before": round(self.nll_before, 4),
            "nll_after": round(self.nll_after, 4),
        }


def uncalibrated(why: str) -> dict[str, Any]:
    """The ``calibration`` object of a model left at T = 1, and why."""
    return {"temperature": 1.0, "method": "none", "note": why}


def fitted_record(logits: np.ndarray, labels: np.ndarray, method: str) -> dict[str, Any]:
    """The ``calibration`` object of a temperature fitted on held-out ``logits``
    (:class:`TemperatureFit`), or T = 1 when they are fewer than :data:`MIN_CROPS`."""
    if len(labels) < MIN_CROPS:
        return uncalibrated(too_few(len(labels)))
    return TemperatureFit.fit(logits, labels, method).record()


def too_few(crops: int) -> str:
    """Why ``crops`` crops fit no temperature."""
    return (
        f"{crops} crops are too few to fit a temperature on (at least {MIN_CROPS}; "
        "fewer made calibration worse on development data)"
    )

"""Removal of the phase background: a polynomial surface fitted to cell-free pixels.

Cell-free pixels are found iteratively. The first fit uses a ring along the map's
border, where flowing cells rarely sit (and never cover all of it); each further
fit uses every pixel within a few standard deviations of the previous surface,
the deviation measured on the previous background pixels only. A cell may thus
cover most of the frame and still not pull the surface towards itself.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.ndimage as ndi

#: Pixels further than this many robust standard deviations from the fitted surface
#: are taken for objects and left out of the next fit.
OUTLIER_SIGMAS = 3.0
ITERATIONS = 4
#: The iteration stops once fewer than this fraction of pixels change side.
CONVERGED_FRACTION = 0.01
#: Width of the initial border ring, as a fraction of the map's shorter side.
BORDER_FRACTION = 0.1
#: The fit uses every n-th pixel along each axis: the surface is smooth, so a sparse
#: grid determines it as well as the full one at a fraction of the cost.
FIT_STRIDE = 3
SPARSE_FIT_MIN_SIDE = 60


@lru_cache(maxsize=16)
def _design(shape: tuple[int, int], order: int, stride: int) -> np.ndarray:
    """Polynomial terms up to ``order`` on a [-1, 1] grid: (rows, cols, terms), read-only."""
    m, n = shape
    y = np.linspace(-1.0, 1.0, m, dtype=np.float32)[::stride, None]
    x = np.linspace(-1.0, 1.0, n, dtype=np.float32)[None, ::stride]
    rows, cols = y.shape[0], x.shape[1]
    terms = [x**i * y ** (k - i) for k in range(order + 1) for i in range(k + 1)]
    design = np.stack([np.broadcast_to(t, (rows, cols)) for t in terms], axis=-1)
    design.flags.writeable = False
    return design


def border_ring(shape: tuple[int, int]) -> np.ndarray:
    """True on a ring along the border (one pixel in from the very edge)."""
    m, n = shape
    width = max(2, round(BORDER_FRACTION * min(m, n)))
    ring = np.zeros(shape, dtype=bool)
    ring[1 : 1 + width, 1:-1] = ring[-1 - width : -1, 1:-1] = True
    ring[1:-1, 1 : 1 + width] = ring[1:-1, -1 - width : -1] = True
    return ring


def remove_background(phase: np.ndarray, order: int) -> np.ndarray:
    """Subtract a polynomial surface of ``order`` (0: offset, 1: tilt, 2: curvature).

    Parameters
    ----------
    phase : (M, N) ndarray of float
        One unwrapped phase (or OPD) map; objects may cover much of it.
    order : int, 0 to 3
        Highest total degree of the surface.

    Returns
    -------
    (M, N) ndarray, the map minus the surface fitted to its background pixels.
    """
    if order not in (0, 1, 2, 3):
        raise ValueError(f"background order must be 0, 1, 2 or 3, got {order}")
    # Small maps are fitted at full density: a sparse grid would leave too few pixels.
    stride = FIT_STRIDE if min(phase.shape) >= SPARSE_FIT_MIN_SIDE else 1
    sub = phase[::stride, ::stride]
    design = _design(phase.shape, order, stride)
    n_terms = design.shape[-1]
    keep = border_ring(phase.shape)[::stride, ::stride]
    if keep.sum() < 4 * n_terms:
        keep = np.ones(sub.shape, dtype=bool)
    if keep.sum() < 4 * n_terms:  # a map too small for this surface: remove the offset only
        return phase - np.median(phase)
    coeffs = np.zeros(n_terms)
    for _ in range(ITERATIONS):
        if keep.sum() < 4 * n_terms:
            break  # objects cover nearly everything: keep the previous surface
        a = design[keep]
        coeffs = np.linalg.solve(a.T @ a + 1e-9 * np.eye(n_terms), a.T @ sub[keep])
        residual = sub - design @ coeffs.astype(np.float32)
        spread = 1.4826 * np.median(np.abs(residual[keep] - np.median(residual[keep])))
        inside = np.abs(residual) <= OUTLIER_SIGMAS * max(float(spread), 1e-6)
        # Objects' rims (halos, out-of-focus fringes) fall just inside the cut: grow
        # the excluded areas by a pixel before the next fit.
        new_keep = ~ndi.binary_dilation(~inside, iterations=1)
        changed = np.count_nonzero(new_keep != keep)
        keep = new_keep
        if changed <= CONVERGED_FRACTION * keep.size:
            break
    surface = _design(phase.shape, order, 1) @ coeffs.astype(np.float32)
    return phase - surface

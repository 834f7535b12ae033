"""Removal of the phase background: a polynomial surface fitted to cell-free pixels.

Cell-free pixels are found iteratively. The first fit uses a ring along the map's
border, where flowing cells rarely sit (and never cover all of it); each further
fit uses every pixel within a few standard deviations of the previous surface,
the deviation measured on the previous background pixels only. A cell may thus
cover most of the frame and still not pull the surface towards itself.

The fit runs on the array backend the map lives on (NumPy, or CuPy on the GPU), so
an unwrapped map never leaves the device to lose its background: only a few
scalars per iteration (pixel counts, the spread) are read back.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from .backend import ArrayBackend, median

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
def _design(shape: tuple[int, int], order: int, stride: int, xp: ModuleType = np) -> Any:
    """Polynomial terms up to ``order`` on a [-1, 1] grid: (rows, cols, terms), on
    ``xp``'s device (read-only on the host): built once per geometry."""
    m, n = shape
    y = np.linspace(-1.0, 1.0, m, dtype=np.float32)[::stride, None]
    x = np.linspace(-1.0, 1.0, n, dtype=np.float32)[None, ::stride]
    rows, cols = y.shape[0], x.shape[1]
    terms = [x**i * y ** (k - i) for k in range(order + 1) for i in range(k + 1)]
    design = np.stack([np.broadcast_to(t, (rows, cols)) for t in terms], axis=-1)
    design.flags.writeable = False
    return xp.asarray(design)


@lru_cache(maxsize=16)
def _ring(shape: tuple[int, int], stride: int, xp: ModuleType = np) -> Any:
    """:func:`border_ring` at the fit's stride, on ``xp``'s device (read-only on the host)."""
    ring = border_ring(shape)[::stride, ::stride]
    ring.flags.writeable = False
    return xp.asarray(ring)


def border_ring(shape: tuple[int, int]) -> np.ndarray:
    """True on a ring along the border (one pixel in from the very edge)."""
    m, n = shape
    width = max(2, round(BORDER_FRACTION * min(m, n)))
    ring = np.zeros(shape, dtype=bool)
    ring[1 : 1 + width, 1:-1] = ring[-1 - width : -1, 1:-1] = True
    ring[1:-1, 1 : 1 + width] = ring[1:-1, -1 - width : -1] = True
    return ring


def remove_background(phase: Any, order: int, backend: ArrayBackend | None = None) -> Any:
    """Subtract a polynomial surface of ``order`` (0: offset, 1: tilt, 2: curvature).

    Parameters
    ----------
    phase : (M, N) array of float
        One unwrapped phase (or OPD) map; objects may cover much of it.
    order : int, 0 to 3
        Highest total degree of the surface.
    backend : the array backend ``phase`` lives on (default: NumPy)

    Returns
    -------
    (M, N) array on the same backend, the map minus the surface fitted to its
    background pixels.
    """
    if order not in (0, 1, 2, 3):
        raise ValueError(f"background order must be 0, 1, 2 or 3, got {order}")
    xp = backend.xp if backend is not None else np
    ndimage = backend.ndimage if backend is not None else ndi
    shape = (int(phase.shape[0]), int(phase.shape[1]))
    # Small maps are fitted at full density: a sparse grid would leave too few pixels.
    stride = FIT_STRIDE if min(shape) >= SPARSE_FIT_MIN_SIDE else 1
    sub = phase[::stride, ::stride]
    design = _design(shape, order, stride, xp)
    n_terms = design.shape[-1]
    keep = _ring(shape, stride, xp)
    if int(xp.count_nonzero(keep)) < 4 * n_terms:
        keep = xp.ones(sub.shape, dtype=bool)
    if int(xp.count_nonzero(keep)) < 4 * n_terms:
        return phase - median(phase, xp)  # a map too small for this surface: the offset only
    coeffs = xp.zeros(n_terms)
    for _ in range(ITERATIONS):
        if int(xp.count_nonzero(keep)) < 4 * n_terms:
            break  # objects cover nearly everything: keep the previous surface
        a = design[keep]
        coeffs = xp.linalg.solve(a.T @ a + 1e-9 * xp.eye(n_terms), a.T @ sub[keep])
        residual = sub - design @ coeffs.astype(xp.float32)
        outside = residual[keep]
        spread = 1.4826 * median(xp.abs(outside - median(outside, xp)), xp)
        inside = xp.abs(residual) <= OUTLIER_SIGMAS * max(float(spread), 1e-6)
        # Objects' rims (halos, out-of-focus fringes) fall just inside the cut: grow
        # the excluded areas by a pixel before the next fit.
        new_keep = ~ndimage.binary_dilation(~inside, iterations=1)
        changed = int(xp.count_nonzero(new_keep != keep))
        keep = new_keep
        if changed <= CONVERGED_FRACTION * keep.size:
            break
    surface = _design(shape, order, 1, xp) @ coeffs.astype(xp.float32)
    return phase - surface

"""Phase unwrapping: unweighted least squares (Ghiglia and Romero, JOSA A 11, 1994).

The unwrapped phase is the solution of a Poisson equation whose right-hand side
is the divergence of the wrapped phase differences, with Neumann boundaries; the
discrete cosine transform diagonalises it, so the solve costs two DCTs.
"""

from __future__ import annotations

import math
from typing import Any

from .backend import ArrayBackend


def wrap(phase: Any, xp: Any) -> Any:
    """Wrap ``phase`` (any array) into [-pi, pi)."""
    return phase - (2 * math.pi) * xp.floor((phase + math.pi) / (2 * math.pi))


class LeastSquaresUnwrapper:
    """Unwraps phase maps of one shape; the DCT eigenvalues are computed once.

    Parameters
    ----------
    shape : (M, N)
        Shape of the phase maps (the last two axes of what :meth:`__call__` takes).
    backend : ArrayBackend
    dtype : the float dtype of the work arrays (float32 by default)
    """

    def __init__(self, shape: tuple[int, int], backend: ArrayBackend, dtype: Any = None) -> None:
        m, n = shape
        if m < 2 or n < 2:
            raise ValueError(f"phase maps to unwrap must be at least 2x2, got shape {shape}")
        xp = backend.xp
        self.shape = (m, n)
        self.backend = backend
        self.dtype = dtype if dtype is not None else xp.float32
        i = xp.arange(m, dtype=xp.float64)[:, None]
        j = xp.arange(n, dtype=xp.float64)[None, :]
        eig = 2.0 * xp.cos(math.pi * i / m) + 2.0 * xp.cos(math.pi * j / n) - 4.0
        eig[0, 0] = 1.0  # the piston term is free; it is set to zero below
        self._inv_eig = (1.0 / eig).astype(self.dtype)
        self._inv_eig[0, 0] = 0.0

    def __call__(self, wrapped: Any) -> Any:
        """Unwrap ``wrapped`` : (..., M, N) real array in radians.

        Returns the least-squares phase, same shape, zero mean. Where the wrapped
        map holds no inconsistency (no residues), this equals the true phase up to
        a constant.
        """
        return self.unwrap(wrapped)[0]

    def unwrap(self, wrapped: Any, residues: bool = False) -> tuple[Any, Any]:
        """(:meth:`__call__`'s phase, each map's residue count or None).

        A residue is a 2x2 pixel loop whose wrapped differences do not sum to zero:
        a phase singularity (noise, a dark speckle, an undersampled steep edge) that no
        unwrapping can make consistent; least squares spreads each over its
        neighbourhood. Counting them reuses the differences the solve computes anyway.
        """
        xp = self.backend.xp
        fft = self.backend.fft
        if tuple(wrapped.shape[-2:]) != self.shape:
            raise ValueError(
                f"this unwrapper was built for {self.shape} maps, got {tuple(wrapped.shape)}"
            )
        psi = xp.asarray(wrapped, dtype=self.dtype)
        dy = wrap(xp.diff(psi, axis=-2), xp)
        dx = wrap(xp.diff(psi, axis=-1), xp)
        counts = None
        if residues:
            # Around each loop: right along the top, down the right side, back along
            # the bottom and up the left side; the sum is 0 or +-2 pi.
            loop = dx[..., :-1, :] + dy[..., :, 1:] - dx[..., 1:, :] - dy[..., :, :-1]
            counts = (xp.abs(loop) > math.pi).sum(axis=(-2, -1))
        # Divergence with Neumann boundaries: the differences beyond the edges are zero.
        rho = xp.zeros_like(psi)
        rho[..., :-1, :] += dy
        rho[..., 1:, :] -= dy
        rho[..., :, :-1] += dx
        rho[..., :, 1:] -= dx
        kw = self.backend.fft_kwargs(rho.size)
        spectrum = fft.dctn(rho, type=2, axes=(-2, -1), norm="ortho", **kw)
        spectrum *= self._inv_eig
        return fft.idctn(spectrum, type=2, axes=(-2, -1), norm="ortho", **kw), counts

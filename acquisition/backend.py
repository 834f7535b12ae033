"""The array backend: CuPy on a GPU, NumPy with ``scipy.fft`` otherwise.

Reconstruction code is written once against ``backend.xp`` (the array module) and
``backend.fft`` (a ``scipy.fft``-compatible module); the CPU and GPU paths differ
only here. The backend is chosen from settings by :func:`get_backend`, never
silently at import, and the choice is logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

BackendName = Literal["auto", "numpy", "cupy"]

#: Transforms smaller than this (elements) run on one thread.
PARALLEL_FFT_MIN_SIZE = 512 * 512


class BackendUnavailableError(RuntimeError):
    """The requested array backend cannot run on this machine."""


@dataclass(frozen=True)
class ArrayBackend:
    """An array module plus its FFT module and how to move arrays to and from it.

    Attributes
    ----------
    name : "numpy" or "cupy"
    xp : the array module (``numpy`` or ``cupy``)
    fft : a ``scipy.fft``-compatible module (``scipy.fft`` or ``cupyx.scipy.fft``)
    ndimage : a ``scipy.ndimage``-compatible module
    workers : FFT worker threads on the CPU (ignored on the GPU)
    device : a human-readable description of where arrays live
    """

    name: Literal["numpy", "cupy"]
    xp: ModuleType
    fft: ModuleType
    ndimage: ModuleType
    workers: int
    device: str

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        """Move ``array`` to this backend (no copy when it is already there)."""
        return self.xp.asarray(array, dtype=dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        """Move ``array`` back to host memory as a NumPy array."""
        if self.name == "cupy":
            return array.get()
        return np.asarray(array)

    def fft_kwargs(self, size: int) -> dict[str, int]:
        """Keyword arguments for an FFT of ``size`` elements: worker threads on the CPU.

        Threads pay off only for large transforms: on the reduced-size maps the
        start-up of a second worker costs more than it saves (a 240x150 DCT takes
        0.1 ms on one thread and 0.3 ms on two).
        """
        if self.name != "numpy":
            return {}
        return {"workers": self.workers if size >= PARALLEL_FFT_MIN_SIZE else 1}


def median(values: Any, xp: ModuleType = np) -> Any:
    """The median of all of ``values`` (a 0-d array), equal to ``xp.median(values)``.

    On NumPy a single-pivot ``partition`` and the lower half's maximum: the same two
    middle values ``np.median`` averages, at a tenth of its cost (NumPy 2's
    ``partition`` with the two pivots ``np.median`` asks for is ten times slower
    than with one: 0.40 against 0.04 ms for the 36 000 pixels of a 240x150 map).
    NaN anywhere gives NaN, as ``np.median`` does. Other array modules use their own.
    """
    if xp is not np:
        return xp.median(values)
    flat = np.asarray(values).ravel()
    n = flat.size
    if n == 0:
        return np.median(flat)  # NaN, with NumPy's warning
    if flat.dtype.kind in "fc" and np.isnan(flat).any():
        return np.median(flat)
    k = n // 2
    part = np.partition(flat, k)
    if n % 2:
        return np.mean(part[k : k + 1])
    # np.median's own average of the pair (in the array's precision): bit-identical.
    return np.mean(np.stack([part[:k].max(), part[k]]))


def cpu_count() -> int:
    """Cores this process may use (respects CPU affinity and cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _numpy_backend(workers: int | None) -> ArrayBackend:
    import scipy.fft
    import scipy.ndimage

    n = workers if workers is not None else cpu_count()
    return ArrayBackend(
        name="numpy",
        xp=np,
        fft=scipy.fft,
        ndimage=scipy.ndimage,
        workers=n,
        device=f"CPU ({n} FFT workers)",
    )


def _cupy_backend() -> ArrayBackend:
    """CuPy, provided it imports *and* a CUDA device answers."""
    try:
        import cupy
        import cupyx.scipy.fft
        import cupyx.scipy.ndimage
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        raise BackendUnavailableError(f"CuPy does not import: {exc}") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            raise BackendUnavailableError("CuPy imports but sees no CUDA device")
        device_id = cupy.cuda.Device().id
        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        # A tiny kernel proves the driver and the runtime actually work together.
        cupy.arange(4).sum().item()
    except BackendUnavailableError:
        raise
    except Exception as exc:
        raise BackendUnavailableError(f"CuPy imports but no CUDA device answers: {exc}") from exc
    name = props.get("name", b"GPU")
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return ArrayBackend(
        name="cupy",
        xp=cupy,
        fft=cupyx.scipy.fft,
        ndimage=cupyx.scipy.ndimage,
        workers=1,
        device=f"CUDA device {device_id} ({name})",
    )


def get_backend(name: BackendName = "auto", workers: int | None = None) -> ArrayBackend:
    """Choose the array backend.

    Parameters
    ----------
    name : "auto", "numpy" or "cupy"
        ``"auto"`` takes CuPy when it imports and a device answers, else NumPy.
        ``"cupy"`` raises :class:`BackendUnavailableError` when it cannot run.
    workers : int, optional
        FFT worker threads for the NumPy backend; default: the usable cores.
    """
    if name not in ("auto", "numpy", "cupy"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy', got {name!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if name == "numpy":
        backend = _numpy_backend(workers)
    elif name == "cupy":
        backend = _cupy_backend()
    else:
        try:
            backend = _cupy_backend()
        except BackendUnavailableError as exc:
            logger.info("GPU backend not available (%s); using NumPy", exc)
            backend = _numpy_backend(workers)
    logger.info("array backend: %s on %s", backend.name, backend.device)
    return backend

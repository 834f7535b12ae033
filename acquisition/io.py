"""Reading holograms from files: TIFF, PNG, JPEG, NPY, NPZ and qpformat-style HDF5.

Every reader returns a :class:`HologramFile`: the frames as (N, H, W), plus what
the file says about the optics (wavelength, pixel size) and a background
hologram when it carries one. Any failure raises :class:`UnreadableFileError`
naming the file and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UnreadableFileError

HOLOGRAM_SUFFIXES: tuple[str, ...] = (
    ".tif",
    ".tiff",
    ".png",
    ".jpg",
    ".jpeg",
    ".npy",
    ".npz",
    ".h5",
    ".hdf5",
)


@dataclass
class HologramFile:
    """Frames read from one file.

    Attributes
    ----------
    frames : (N, H, W) ndarray, the camera counts as stored
    wavelength_nm, pixel_size_um : from the file's metadata, when it has them
    reference : (H, W) ndarray, a background hologram stored beside the frames
    """

    path: Path
    frames: np.ndarray
    wavelength_nm: float | None = None
    pixel_size_um: float | None = None
    reference: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _to_gray(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        # Colour files of monochrome holograms: the channels are equal; average them.
        return array[..., :3].mean(axis=-1)
    return array


def _check(array: Any, path: Path, what: str = "image") -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype.kind not in "uif":
        raise UnreadableFileError(f"cannot read hologram {path}: the {what} has dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.size == 0:
        raise UnreadableFileError(
            f"cannot read hologram {path}: the {what} has shape {arr.shape}, expected (H, W) "
            "or (N, H, W)"
        )
    return arr


def _read_tiff(path: Path) -> HologramFile:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        frames = [page.asarray() for page in tif.pages]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise UnreadableFileError(f"cannot read hologram {path}: its pages differ in size {shapes}")
    return HologramFile(path, _check(np.stack([_to_gray(f, path) for f in frames]), path))


def _read_pillow(path: Path) -> HologramFile:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                array = np.asarray(image)
            else:
                array = np.asarray(image.convert("L"))
    except UnidentifiedImageError as exc:
        raise UnreadableFileError(f"cannot read hologram {path}: not a valid image") from exc
    return HologramFile(path, _check(array, path))


def _read_npz(path: Path) -> HologramFile:
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        if "data" in names:
            key = "data"
        elif len(names) == 1:
            key = names[0]
        else:
            raise UnreadableFileError(
                f"cannot read hologram {path}: expected an array named 'data' (or a single "
                f"array), found {names}"
            )
        frames = _check(archive[key], path, f"array '{key}'")
        reference = None
        for ref_key in ("bg_data", "reference", "background"):
            if ref_key in names:
                stack = _check(archive[ref_key], path, f"array '{ref_key}'")
                if stack.shape[0] != 1:
                    raise UnreadableFileError(
                        f"cannot read hologram {path}: its background '{ref_key}' holds "
                        f"{stack.shape[0]} frames, expected one"
                    )
                reference = stack[0]
                break
    return HologramFile(path, frames, reference=reference)


def _read_hdf5(path: Path) -> HologramFile:
    """qpformat's raw off-axis HDF5: 2-D datasets '0', '1', ... with SI-unit attributes."""
    import h5py

    with h5py.File(path, "r") as h5:
        names = sorted(
            (n for n, obj in h5.items() if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3)),
            key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n),
        )
        if not names:
            raise UnreadableFileError(f"cannot read hologram {path}: no 2-D image dataset in it")
        first = h5[names[0]]
        attrs = dict(first.attrs)
        frames = np.concatenate([_check(h5[n][()], path, f"dataset '{n}'") for n in names])
    wavelength = attrs.get("wavelength")
    pixel = attrs.get("pixel size")
    return HologramFile(
        path,
        frames,
        wavelength_nm=float(wavelength) * 1e9 if wavelength else None,
        pixel_size_um=float(pixel) * 1e6 if pixel else None,
        metadata={k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()},
    )


def read_hologram(path: str | Path) -> HologramFile:
    """Read the hologram(s) in ``path``; the format is chosen by the suffix."""
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(f"cannot read hologram {path}: no such file")
    if not path.is_file():
        raise UnreadableFileError(f"cannot read hologram {path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in HOLOGRAM_SUFFIXES:
        raise UnreadableFileError(
            f"cannot read hologram {path}: unknown format '{suffix}' (expected one of "
            f"{', '.join(HOLOGRAM_SUFFIXES)})"
        )
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path)
        if suffix in (".png", ".jpg", ".jpeg"):
            return _read_pillow(path)
        if suffix == ".npy":
            return HologramFile(path, _check(np.load(path, allow_pickle=False), path, "array"))
        if suffix == ".npz":
            return _read_npz(path)
        return _read_hdf5(path)
    except UnreadableFileError:
        raise
    except Exception as exc:  # a corrupt file: every reader has its own exceptions
        raise UnreadableFileError(
            f"cannot read hologram {path}: {type(exc).__name__}: {exc}"
        ) from exc


def camera_tiff_shift(bit_depth: int) -> int:
    """Bits a frame of ``bit_depth`` is shifted up when stored in 16-bit TIFF: pylon
    (and its camera emulator) read 16-bit TIFF MSB-aligned, so 12-bit counts are
    stored as ``counts << 4`` and 8-bit frames as they are."""
    if bit_depth not in (8, 12):
        raise ValueError(f"bit_depth must be 8 or 12, got {bit_depth}")
    return 16 - bit_depth if bit_depth > 8 else 0


def write_camera_tiff(path: str | Path, counts: np.ndarray, bit_depth: int) -> None:
    """Store camera ``counts`` : (H, W) of ``bit_depth`` bits as uncompressed TIFF the
    way pylon reads it back (see :func:`camera_tiff_shift`)."""
    import tifffile

    shift = camera_tiff_shift(bit_depth)
    tifffile.imwrite(path, counts << shift if shift else counts)


def read_camera_tiff(path: str | Path, bit_depth: int) -> np.ndarray:
    """The (H, W) counts of a file written by :func:`write_camera_tiff`."""
    frame = read_hologram(path).frames[0]
    shift = camera_tiff_shift(bit_depth)
    return frame >> shift if shift else frame

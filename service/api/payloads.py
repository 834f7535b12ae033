"""Parsing request bodies into OPD crops or holograms, with 4xx errors that say why.

``.npy`` bodies are parsed with ``allow_pickle=False`` (never unpickled); TIFF with
tifffile; JSON as ``{"opd": nested lists}``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from fastapi import HTTPException, Request

NPY = "application/x-npy"
TIFF = "image/tiff"
JSON = "application/json"


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refusing (413) anything larger than ``max_bytes`` before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"body of {declared} bytes exceeds the limit of {max_bytes}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request, allowed: tuple[str, ...]) -> str:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in allowed:
        raise HTTPException(
            415, f"unsupported media type {kind or '(none)'!r}; send one of {', '.join(allowed)}"
        )
    return kind


def _npy(body: bytes) -> np.ndarray:
    """The array in a .npy body, viewed in place (numpy's own reader copies it in
    small chunks from a file-like object, which costs more than the whole request)."""
    fmt = np.lib.format
    try:
        fp = io.BytesIO(body)
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:  # version 3 (utf-8 field names) is rare: let numpy read it
            return fmt.read_array(io.BytesIO(body), allow_pickle=False)
        if dtype.hasobject:
            raise ValueError("object arrays cannot be read without unpickling")
        count = int(np.prod(shape, dtype=np.int64))
        offset = fp.tell()
        if len(body) - offset != count * dtype.itemsize:
            raise ValueError(
                f"the header announces {count} values of {dtype} but the body holds "
                f"{len(body) - offset} bytes of data"
            )
        array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
        return array.reshape(shape, order="F" if fortran else "C")
    except Exception as exc:  # numpy raises several types for malformed files
        raise HTTPException(422, f"body is not a valid .npy array: {exc}") from None


def _tiff(body: bytes) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(body)) as tif:
            pages = [page.asarray() for page in tif.pages]
    except Exception as exc:
        raise HTTPException(422, f"body is not a valid TIFF: {exc}") from None
    if not pages:
        raise HTTPException(422, "the TIFF holds no image")
    if len({p.shape for p in pages}) != 1:
        raise HTTPException(422, "the TIFF's pages differ in size")
    return np.stack(pages) if len(pages) > 1 else pages[0]


def _json(body: bytes) -> np.ndarray:
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(422, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "opd" not in data:
        raise HTTPException(422, 'JSON body must be an object {"opd": nested lists of numbers}')
    try:
        array = np.asarray(data["opd"], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise HTTPException(422, "opd must be nested lists of numbers of equal lengths") from None
    return array


def parse_array(body: bytes, kind: str) -> np.ndarray:
    if not body:
        raise HTTPException(422, "the body is empty")
    return {NPY: _npy, TIFF: _tiff, JSON: _json}[kind](body)


def check_numbers(array: np.ndarray, what: str) -> np.ndarray:
    """Numeric and finite, as float32; else 422 naming the problem."""
    if array.dtype.kind not in "uif":
        raise HTTPException(
            422, f"{what} dtype {array.dtype} is not supported: send floats or integers"
        )
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            n_nan = int(np.isnan(array).sum())
            raise HTTPException(
                422, f"{what} contains {n_nan} NaN and {int(bad.sum()) - n_nan} Inf values"
            )
        if array.size and float(np.abs(array).max()) >= float(np.finfo(np.float32).max):
            raise HTTPException(422, f"{what} values exceed single precision")
    return array.astype(np.float32, copy=False)


def crops_from(array: np.ndarray, shape: tuple[int, int], max_crops: int) -> np.ndarray:
    """(H, W) or (N, H, W) crops of the model's shape, as float32 (N, H, W)."""
    expected = f"({shape[0]}, {shape[1]}) or (N, {shape[0]}, {shape[1]})"
    given = tuple(array.shape)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or tuple(array.shape[1:]) != shape:
        raise HTTPException(422, f"crops must have shape {expected}, got {given}")
    if array.shape[0] == 0:
        raise HTTPException(422, f"no crops: shape {tuple(array.shape)}")
    if array.shape[0] > max_crops:
        raise HTTPException(413, f"{array.shape[0]} crops in one request; the limit is {max_crops}")
    return check_numbers(array, "opd")

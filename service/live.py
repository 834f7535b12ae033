"""The operator's live view: the latest frame and the latest classified crops.

Worker threads hand over references (:meth:`LiveView.frame`, :meth:`LiveView.results`)
at up to 100 frames a second; that costs a lock and a few attribute stores. Images
are rendered only when a viewer asks, with NumPy and Pillow, and cached on the frame
they show, so any number of viewers share one rendering.

The displayed frame is the latest one, held for at least ``display_interval_s``
while newer frames arrive: viewers who poll within that interval see (and render)
the same frame, and a page's hologram and OPD map always come from one frame. The
crops a page is told about are held the same way: at hundreds of cells a second the
ring buffer of the latest crops turns over in milliseconds, but a crop named by
``/live/state`` can be fetched until two newer selections have replaced it.
"""

from __future__ import annotations

import io
import itertools
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

#: Longest side of the hologram and OPD images served to the page, pixels.
MAX_DISPLAY_PX = 640
#: Outline colours (RGB) of accepted cells and of rejected objects on the OPD map;
#: neither occurs in the colour map, so outlines stay visible on any OPD.
ACCEPTED_RGB = (0, 255, 0)
REJECTED_RGB = (0, 200, 255)
#: The OPD colour range is robust to outliers: these percentiles of the map, nm...
OPD_PERCENTILES = (1.0, 99.9)
#: ... spanning at least this many nm, so a frame of background noise stays dark.
MIN_OPD_SPAN_NM = 100.0
#: Crops are coloured from 0 nm to their own peak OPD, but at least this many nm.
MIN_CROP_PEAK_NM = 50.0
#: Arrival times older than this are left out of the frame rate, seconds.
RATE_WINDOW_S = 2.0

# matplotlib's "inferno" at 17 evenly spaced points (perceptually uniform, dark for
# background); interpolated to 256 entries here so serving needs no matplotlib.
_INFERNO = (
    "000004 0b0724 210c4a 3d0965 57106e 71196e 8a226a a32c61 bc3754 "
    "d24644 e45a31 f1731d f98e09 fcac11 f9cb35 f2ea69 fcffa4"
)


#: Levels of the OPD colour map; the palette's last two entries are the outlines.
LEVELS = 254


def _colour_map() -> np.ndarray:
    stops = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in _INFERNO.split()])
    at = np.linspace(0, LEVELS - 1, len(stops))
    lut = [np.interp(np.arange(LEVELS), at, stops[:, c]) for c in range(3)]
    return np.round(np.stack(lut, axis=1)).astype(np.uint8)


#: (LEVELS, 3) uint8 RGB colour map of the OPD images.
COLOUR_MAP = _colour_map()
ACCEPTED_INDEX, REJECTED_INDEX = LEVELS, LEVELS + 1
# Palette images: a byte a pixel to encode rather than three (PNG encoding is most
# of a rendering's time).
_PALETTE = np.vstack([COLOUR_MAP, ACCEPTED_RGB, REJECTED_RGB]).astype(np.uint8).tobytes()
#: The colour map as CSS colours (for the page's colour bar), dark to bright.
COLOUR_STOPS = tuple(f"#{h}" for h in _INFERNO.split())


def bit_depth_of(hologram: np.ndarray) -> int:
    """Bits a hologram's counts use: 8 for uint8, enough for its peak for wider unsigned
    integers (a 12-bit camera sends uint16), 0 (no fixed scale) otherwise."""
    if hologram.dtype == np.uint8:
        return 8
    if hologram.dtype.kind == "u":
        return max(8, int(hologram.max()).bit_length()) if hologram.size else 8
    return 0


@dataclass(eq=False)
class _Frame:
    sequence: int
    frame_id: int
    grabbed_at: float
    received: float
    hologram: np.ndarray
    opd_nm: np.ndarray
    labels: np.ndarray
    accepted: tuple[int, ...]
    bit_depth: int
    source: str
    #: Each tracked cell in view: its event id (None before it is classified) and its
    #: recent path, (y, x) in OPD-map pixels, oldest first.
    tracks: tuple[tuple[int | None, tuple[tuple[float, float], ...]], ...] = ()
    #: The frame's hologram quality (ProcessedFrames.quality()).
    quality: tuple[tuple[str, float], ...] = ()
    #: Renderings and derived numbers of this frame, filled on first request.
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class _Crop:
    result_id: int
    frame_id: int
    label: str
    probabilities: dict[str, float]
    peak_opd_nm: float
    opd_nm: np.ndarray
    event_id: int | None = None
    #: The cell's QC features (segmentation's QC_FEATURES), when known.
    qc: tuple[tuple[str, float | bool], ...] = ()
    #: Its largest probability below the service's min_confidence (None: not judged).
    uncertain: bool | None = None


class LiveView:
    """Thread-safe holder of the latest frame and of the latest ``max_crops`` crops.

    Parameters
    ----------
    max_crops : how many of the latest classified crops to keep
    display_interval_s : a displayed frame stays at least this long before a newer
        one replaces it (0: always the latest)
    opd_range_nm : (low, high) nm of the OPD colour scale of every map and crop image,
        so that their brightness compares; None: each image spans its own range
    """

    def __init__(
        self,
        max_crops: int = 24,
        *,
        display_interval_s: float = 0.2,
        opd_range_nm: tuple[float, float] | None = None,
    ) -> None:
        if max_crops < 1:
            raise ValueError(f"max_crops must be at least 1, got {max_crops}")
        if not display_interval_s >= 0:
            raise ValueError(f"display_interval_s must be >= 0, got {display_interval_s}")
        if opd_range_nm is not None and not opd_range_nm[0] < opd_range_nm[1]:
            raise ValueError(f"opd_range_nm must be (low, high), low < high, got {opd_range_nm}")
        self.max_crops = max_crops
        self.display_interval_s = display_interval_s
        self.opd_range_nm = opd_range_nm
        #: Changes when the process restarts: sequences and result ids start over.
        self.instance = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._latest: _Frame | None = None
        self._frames = 0
        self._arrivals: deque[float] = deque(maxlen=1024)
        # The displayed frame and the one before it: a page asks for the frame its
        # state described, which may just have been replaced.
        self._shown: deque[_Frame] = deque(maxlen=2)
        self._shown_at = 0.0
        self._crops: deque[_Crop] = deque(maxlen=max_crops)
        # The crops shown to pages (the selection and the one before it), as frames.
        self._crops_shown: deque[tuple[_Crop, ...]] = deque(maxlen=2)
        self._crops_shown_at = 0.0
        self._crops_sequence = 0
        self._crop_pngs: dict[int, bytes] = {}
        self._render_locks = {k: threading.Lock() for k in ("hologram", "opd", "crop")}
        self._api_frames = itertools.count(-1, -1)

    # -- feeding (worker threads) -----------------------------------------------------

    def frame(
        self,
        frame_id: int,
        grabbed_at: float,
        hologram: np.ndarray,
        opd_nm: np.ndarray,
        labels: np.ndarray,
        accepted: Sequence[int],
        bit_depth: int,
        source: str,
        tracks: Sequence[tuple[int | None, Sequence[tuple[float, float]]]] = (),
        quality: Mapping[str, float] | None = None,
    ) -> None:
        """Hand over a processed frame; the arrays are kept, not copied (do not mutate).

        Parameters
        ----------
        frame_id : the camera's frame number (negative for frames posted to the API)
        grabbed_at : Unix time of the grab, s
        hologram : (H, W) ndarray of uint8 or uint16 counts (or floats)
        opd_nm : (h, w) float32 ndarray, the reconstructed OPD of the sample region, nm
        labels : (h, w) int ndarray, the segmentation's object numbers, 0 background
        accepted : the numbers in ``labels`` of the cells that were kept
        bit_depth : bits per pixel of the camera's counts (8, 10, 12, ...)
        source : where the frame came from ("camera", "api", ...)
        tracks : the tracked cells in view: (event id or None, recent path as (y, x)
            in ``opd_nm``'s pixels, oldest first)
        quality : the frame's hologram quality figures, by name
        """
        if hologram.ndim != 2:
            raise ValueError(f"hologram must be 2-D (H, W), got shape {hologram.shape}")
        if opd_nm.shape != labels.shape or opd_nm.ndim != 2:
            raise ValueError(
                f"opd_nm {opd_nm.shape} and labels {labels.shape} must be the same 2-D shape"
            )
        now = time.monotonic()
        received = time.time()
        accepted = tuple(accepted)
        with self._lock:
            self._frames += 1
            self._arrivals.append(now)
            self._latest = _Frame(
                self._frames,
                frame_id,
                grabbed_at,
                received,
                hologram,
                opd_nm,
                labels,
                accepted,
                bit_depth,
                source,
                tuple((e, tuple((float(y), float(x)) for y, x in path)) for e, path in tracks),
                tuple((k, float(v)) for k, v in (quality or {}).items()),
            )

    def results(
        self,
        frame_id: int,
        crops: np.ndarray,
        result_ids: Sequence[int],
        labels: Sequence[str],
        probabilities: Sequence[Mapping[str, float]],
        event_ids: Sequence[int] | None = None,
        qc: Sequence[Mapping[str, float | bool]] | None = None,
        uncertain: Sequence[bool] | None = None,
    ) -> None:
        """Hand over classified crops: (N, 128, 128) float32 OPD in nm, with their stored
        result ids, labels, class probabilities, (camera) event ids, QC features and
        uncertain flags.
        Only the last ``max_crops`` stay."""
        n = len(result_ids)
        if crops.ndim != 3 or not len(crops) == len(labels) == len(probabilities) == n:
            raise ValueError(
                f"crops {crops.shape}, result_ids ({n}), labels ({len(labels)}) and "
                f"probabilities ({len(probabilities)}) must describe the same N crops"
            )
        keep = range(max(0, n - self.max_crops), n)
        entries = [
            _Crop(
                result_id=int(result_ids[i]),
                frame_id=frame_id,
                label=str(labels[i]),
                probabilities=dict(probabilities[i]),
                peak_opd_nm=max(float(crops[i].max()), 0.0),
                opd_nm=crops[i],
                event_id=int(event_ids[i]) if event_ids else None,
                qc=tuple(qc[i].items()) if qc else (),
                uncertain=bool(uncertain[i]) if uncertain else None,
            )
            for i in keep
        ]
        if not entries:
            return
        with self._lock:
            self._crops.extend(entries)

    def api_frame_id(self) -> int:
        """A frame id for a hologram posted to the API: -1, -2, ... (the camera's are >= 0)."""
        return next(self._api_frames)

    # -- viewing (request threads) ----------------------------------------------------

    def _displayed(self, sequence: int | None = None) -> _Frame | None:
        """The frame to show: frame ``sequence`` while it is still held, else the
        displayed one, first replaced by the latest if it has been shown long enough."""
        with self._lock:
            latest = self._latest
            if latest is None:
                return None
            now = time.monotonic()
            if not self._shown or (
                self._shown[-1] is not latest and now - self._shown_at >= self.display_interval_s
            ):
                self._shown.append(latest)
                self._shown_at = now
            if sequence is not None:
                for shown in self._shown:
                    if shown.sequence == sequence:
                        return shown
            return self._shown[-1]

    def snapshot(self) -> dict[str, Any]:
        """The state a page polls: the displayed frame, rates, and the latest crops
        (newest first). Images change when ``sequence`` (frames) or
        ``crops_sequence`` (crops) does."""
        shown = self._displayed()
        with self._lock:
            frames = self._frames
            arrivals = list(self._arrivals)
            crops = list(self._shown_crops())
            crops_sequence = self._crops_sequence
        now = time.monotonic()
        recent = [t for t in arrivals if now - t <= RATE_WINDOW_S]
        frame = None
        if shown is not None:
            lo, hi = self.opd_range_nm or _opd_range(shown)
            frame = {
                "frame_id": shown.frame_id,
                "grabbed_at": shown.grabbed_at,
                "age_s": max(0.0, time.time() - shown.received),
                "shape": list(shown.hologram.shape),
                "opd_shape": list(shown.opd_nm.shape),
                "source": shown.source,
                "bit_depth": shown.bit_depth,
                "accepted": len(shown.accepted),
                "rejected": max(0, _object_count(shown) - len(shown.accepted)),
                "opd_range_nm": [lo, hi],
                "quality": {k: (v if math.isfinite(v) else None) for k, v in shown.quality},
                # paths as fractions of the OPD image (x / width, y / height)
                "tracks": [
                    {
                        "event_id": event_id,
                        "path": [
                            [
                                round(x / shown.opd_nm.shape[1], 5),
                                round(y / shown.opd_nm.shape[0], 5),
                            ]
                            for y, x in path
                        ],
                    }
                    for event_id, path in shown.tracks
                ],
            }
        return {
            "instance": self.instance,
            "sequence": shown.sequence if shown is not None else 0,
            "frames_received": frames,
            "frame_rate_hz": len(recent) / RATE_WINDOW_S,
            "frame": frame,
            "crops_sequence": crops_sequence,
            "crops": [
                {
                    "result_id": c.result_id,
                    "frame_id": c.frame_id,
                    "label": c.label,
                    "probabilities": c.probabilities,
                    "peak_opd_nm": c.peak_opd_nm,
                    "event_id": c.event_id,
                    "qc": {k: _plain(v) for k, v in c.qc},
                    "uncertain": c.uncertain,
                }
                for c in reversed(crops)
            ],
            "opd_scale": "auto" if self.opd_range_nm is None else "fixed",
            "crop_opd_range_nm": list(self.opd_range_nm) if self.opd_range_nm else None,
            "colours": {
                "accepted": "#{:02x}{:02x}{:02x}".format(*ACCEPTED_RGB),
                "rejected": "#{:02x}{:02x}{:02x}".format(*REJECTED_RGB),
                "opd": list(COLOUR_STOPS),
            },
        }

    def hologram_png(self, sequence: int | None = None) -> bytes | None:
        """The displayed hologram (frame ``sequence`` while held) as an 8-bit grey PNG,
        box-downscaled to at most :data:`MAX_DISPLAY_PX` a side; None before any frame."""
        return self._render("hologram", _render_hologram, sequence)

    def opd_png(self, sequence: int | None = None) -> bytes | None:
        """The displayed OPD map, colour-mapped over ``opd_range_nm`` (or, without one,
        :func:`_opd_range`), with accepted
        cells outlined in :data:`ACCEPTED_RGB` and rejected objects in
        :data:`REJECTED_RGB`; scaled by a whole factor towards :data:`MAX_DISPLAY_PX`."""
        return self._render("opd", lambda f: _render_opd(f, self.opd_range_nm), sequence)

    def crop_png(self, result_id: int) -> bytes | None:
        """A kept crop as a colour PNG over ``opd_range_nm`` (without one: 0 nm to its
        peak); None when it is not kept."""
        with self._lock:
            crop = next((c for c in self._fetchable() if c.result_id == result_id), None)
        if crop is None:
            return None
        png = self._crop_pngs.get(result_id)
        if png is None:
            with self._render_locks["crop"]:
                png = self._crop_pngs.get(result_id)
                if png is None:
                    png = _render_crop(crop, self.opd_range_nm)
                    with self._lock:
                        kept = {c.result_id for c in self._fetchable()}
                    pngs = {k: v for k, v in self._crop_pngs.items() if k in kept}
                    pngs[result_id] = png
                    self._crop_pngs = pngs
        return png

    def _shown_crops(self) -> tuple[_Crop, ...]:
        """The crops to show (under the lock): the latest, once the shown ones have
        been up for ``display_interval_s`` (at once when none were shown)."""
        latest = tuple(self._crops)
        now = time.monotonic()
        if not self._crops_shown or (
            self._crops_shown[-1] != latest
            and (not self._crops_shown[-1] or now - self._crops_shown_at >= self.display_interval_s)
        ):
            self._crops_shown.append(latest)
            self._crops_shown_at = now
            self._crops_sequence += 1
        return self._crops_shown[-1]

    def _fetchable(self) -> list[_Crop]:
        """Crops whose images may be asked for (under the lock): those kept and those
        shown to a page recently."""
        return [*self._crops, *(c for shown in self._crops_shown for c in shown)]

    def _render(
        self, kind: str, render: Callable[[_Frame], bytes], sequence: int | None
    ) -> bytes | None:
        shown = self._displayed(sequence)
        if shown is None:
            return None
        png: bytes | None = shown.cache.get(kind)
        if png is None:
            # One rendering per frame: concurrent viewers wait for it rather than
            # rendering the same image again.
            with self._render_locks[kind]:
                png = shown.cache.get(kind)
                if png is None:
                    png = render(shown)
                    shown.cache[kind] = png
        return png


# -- rendering --------------------------------------------------------------------------


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Level 1: a fraction of the default's time, and these images are small anyway.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _opd_range(frame: _Frame) -> tuple[float, float]:
    """The colour range of a frame's OPD map, nm: robust percentiles, at least
    :data:`MIN_OPD_SPAN_NM` wide."""
    cached = frame.cache.get("opd_range")
    if cached is None:
        opd = frame.opd_nm
        step = max(1, int(math.sqrt(opd.size / 65536)))  # a subsample is plenty
        lo, hi = (float(v) for v in np.percentile(opd[::step, ::step], OPD_PERCENTILES))
        cached = frame.cache["opd_range"] = (lo, max(hi, lo + MIN_OPD_SPAN_NM))
    return cached


def _object_count(frame: _Frame) -> int:
    count = frame.cache.get("objects")
    if count is None:
        count = frame.cache["objects"] = int(frame.labels.max()) if frame.labels.size else 0
    return count


def _to_uint8(values: np.ndarray, lo: float, hi: float, levels: int = 256) -> np.ndarray:
    """``values`` from ``lo`` to ``hi`` as 0 to ``levels - 1``, clipped."""
    top = levels - 1
    scaled = (values.astype(np.float32) - np.float32(lo)) * np.float32(top / (hi - lo))
    return np.clip(scaled, 0, top).astype(np.uint8)


def _palette_image(indices: np.ndarray) -> Image.Image:
    image = Image.fromarray(indices)
    image.putpalette(_PALETTE)
    return image


def _render_hologram(frame: _Frame) -> bytes:
    hologram = frame.hologram
    if hologram.dtype == np.uint8:
        grey = hologram
    elif hologram.dtype.kind == "u" and frame.bit_depth > 0:
        # A fixed scale from the camera's bit depth: the operator sees the exposure.
        shift = max(frame.bit_depth - 8, 0)
        grey = np.minimum(hologram >> shift, 255).astype(np.uint8)
    else:
        lo, hi = float(hologram.min()), float(hologram.max())
        grey = _to_uint8(hologram, lo, hi if hi > lo else lo + 1)
    image = Image.fromarray(np.ascontiguousarray(grey))
    factor = math.ceil(max(image.size) / MAX_DISPLAY_PX)
    if factor > 1:
        image = image.reduce(factor)  # box filter: averages fringes instead of aliasing
    return _png(image)


def _display_scale(shape: tuple[int, ...]) -> tuple[int, int]:
    """(up, down): whole factors that bring ``shape`` towards MAX_DISPLAY_PX a side."""
    longest = max(shape)
    if longest > MAX_DISPLAY_PX:
        return 1, math.ceil(longest / MAX_DISPLAY_PX)
    return max(1, MAX_DISPLAY_PX // longest), 1


def opd_display_shape(opd_shape: tuple[int, ...]) -> tuple[int, int]:
    """(height, width) of the OPD image served for a map of ``opd_shape``."""
    up, down = _display_scale(opd_shape)
    return (-(-opd_shape[0] // down) * up, -(-opd_shape[1] // down) * up)


def _outlines(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels of objects within ``width`` pixels of another object or the background
    (the image's outside counts as background)."""
    padded = np.pad(labels, width)
    edge = np.zeros(padded.shape, dtype=bool)
    for d in range(1, width + 1):
        dy = padded[d:, :] != padded[:-d, :]
        edge[d:, :] |= dy
        edge[:-d, :] |= dy
        dx = padded[:, d:] != padded[:, :-d]
        edge[:, d:] |= dx
        edge[:, :-d] |= dx
    edge = edge[width:-width, width:-width]
    return edge & (labels > 0)


def _render_opd(frame: _Frame, fixed: tuple[float, float] | None = None) -> bytes:
    lo, hi = fixed or _opd_range(frame)
    up, down = _display_scale(frame.opd_nm.shape)
    opd, labels = frame.opd_nm, frame.labels
    if down > 1:
        opd, labels = opd[::down, ::down], labels[::down, ::down]
    grey = Image.fromarray(_to_uint8(opd, lo, hi, LEVELS))
    if up > 1:
        # The map is band-limited: a smooth upscale shows it as it is; outlines are
        # drawn afterwards, on the segmentation's own pixels.
        grey = grey.resize((grey.width * up, grey.height * up), Image.Resampling.BILINEAR)
        labels = np.repeat(np.repeat(labels, up, axis=0), up, axis=1)
    indices = np.array(grey)  # bilinear keeps them within the colour map's levels
    edge = _outlines(labels, 2 if up > 1 else 1)
    if edge.any():
        accepted = np.zeros(int(labels.max()) + 1, dtype=bool)
        numbers = np.array([n for n in frame.accepted if 0 < n < len(accepted)], dtype=np.intp)
        accepted[numbers] = True
        kept = accepted[labels]
        indices[edge & kept] = ACCEPTED_INDEX
        indices[edge & ~kept] = REJECTED_INDEX
    return _png(_palette_image(indices))


def _render_crop(crop: _Crop, fixed: tuple[float, float] | None = None) -> bytes:
    lo, hi = fixed or (0.0, max(crop.peak_opd_nm, MIN_CROP_PEAK_NM))
    return _png(_palette_image(_to_uint8(crop.opd_nm, lo, hi, LEVELS)))


def _plain(value: float | bool) -> float | bool | None:
    """A QC value as JSON takes it (NaN: null)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    number = float(value)
    return number if math.isfinite(number) else None

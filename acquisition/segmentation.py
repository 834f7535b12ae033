"""Segmentation of OPD maps into single cells, per-cell QC, and centred crops.

A cell is a connected region of positive OPD: pixels above a low threshold that
contain at least one pixel above a high one (Otsu's, or a fixed OPD level), so the
mask reaches the cell's edge while noise alone never starts an object. Objects are
then filtered by size, roundness and the region border; touching cells (a
non-convex outline, or a neck in it between two cells) are rejected or flagged.
Mirrored ghosts of a flipping interferometer have negative OPD and never pass a
positive threshold; besides, only the configured sample half reaches this stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import scipy.ndimage as ndi

from .backend import median
from .reconstruction import OPDMaps

#: Specific refractive increment of cell dry mass, um^3/pg (0.18 mL/g; Barer 1952,
#: Popescu et al. 2008 use 0.18 to 0.2).
REFRACTIVE_INCREMENT_UM3_PER_PG = 0.18

QC_FEATURES: tuple[str, ...] = (
    "area_um2",
    "dry_mass_pg",
    "mean_opd_nm",
    "peak_opd_nm",
    "circularity",
    "solidity",
    "amplitude_std",
    "clipped",
    "touching",
    "out_of_focus",
)
#: The QC features that are flags (stored as uint8, 1: the crop is suspect).
QC_FLAGS: tuple[str, ...] = ("clipped", "touching", "out_of_focus")

#: Objects are 8-connected.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
#: Levels of a stack of 2-D images labelled at once: 8-connected within a level only.
_WITHIN_A_LEVEL = np.zeros((3, 3, 3), dtype=bool)
_WITHIN_A_LEVEL[1] = True
#: Flooding levels of the neck labelled per ``ndi.label`` call (memory: that many
#: copies of an object's box).
NECK_LEVELS_PER_PASS = 8


@dataclass(frozen=True)
class SegmentationConfig:
    """Options of segmentation and cropping.

    Attributes
    ----------
    threshold : "otsu" or a fixed OPD level in nm that seeds objects
    low_fraction : objects grow down to this fraction of the seed threshold ...
    noise_sigmas : ... but never below this many noise standard deviations
    min_area_um2, max_area_um2 : accepted cell areas
    min_circularity : 4 pi area / perimeter^2 below this is rejected (debris, tails)
    min_solidity : area / convex hull area below this marks touching cells
    split_levels : fractions of an object's peak OPD at which it is cut again; if
        it falls apart into several large parts at any level, it holds touching cells
    min_split_fraction : a part counts as a cell when it holds this fraction of the
        object's area (smaller parts are texture: nucleoli, granules)
    neck_ratio : an outline whose two widest places (maxima of its distance
        transform) are joined through a neck narrower than this fraction of the
        narrower of them holds two cells, whatever its OPD
    split_neck_ratio : a split at ``split_levels`` counts only when the outline
        has a neck narrower than this fraction: the rim of a biconcave cell (a red
        blood cell) falls apart into arcs at those levels, inside an outline
        without any neck
    min_core_fraction : a widest place counts as a cell's when it is at least
        this fraction of the object's widest (smaller ones are blebs, ruffles)
    touching : "reject" or "flag" touching cells
    reject_border : reject objects that come within ``edge_margin_um`` of the
        sample region's border (else flag them as clipped); next to a flipping
        interferometer's mirror line a cell is cut by its own ghost
    edge_margin_um : that margin
    max_amplitude_std : a cell whose relative amplitude varies more than this is
        flagged out of focus (an in-focus phase object barely modulates amplitude)
    crop_size : side of the square crops, pixels
    crop_pixel_size_um : pixel size of the crops; maps are resampled to it
    mask_neighbours : set other objects' pixels to 0 nm inside a cell's crop
    """

    threshold: Literal["otsu"] | float = "otsu"
    low_fraction: float = 0.2
    noise_sigmas: float = 5.0
    min_area_um2: float = 20.0
    max_area_um2: float = 1500.0
    min_circularity: float = 0.6
    min_solidity: float = 0.9
    split_levels: tuple[float, ...] = (0.3, 0.45, 0.6)
    min_split_fraction: float = 0.1
    neck_ratio: float = 0.75
    split_neck_ratio: float = 0.9
    min_core_fraction: float = 0.3
    touching: Literal["reject", "flag"] = "reject"
    reject_border: bool = True
    edge_margin_um: float = 1.5
    max_amplitude_std: float = 0.15
    crop_size: int = 128
    crop_pixel_size_um: float = 0.25
    mask_neighbours: bool = True

    def for_crop(self, crop_size: int, crop_pixel_size_um: float) -> SegmentationConfig:
        """This configuration cutting ``crop_size`` crops at ``crop_pixel_size_um``
        (a model's input): the one rule that sets the crop geometry."""
        return replace(self, crop_size=crop_size, crop_pixel_size_um=crop_pixel_size_um)

    def __post_init__(self) -> None:
        if self.threshold != "otsu" and not (
            isinstance(self.threshold, int | float) and self.threshold > 0
        ):
            raise ValueError(
                f"threshold must be 'otsu' or a positive OPD in nm, got {self.threshold!r}"
            )
        if not 0 < self.low_fraction <= 1:
            raise ValueError(f"low_fraction must be in (0, 1], got {self.low_fraction}")
        if not 0 <= self.min_area_um2 < self.max_area_um2:
            raise ValueError(
                "need 0 <= min_area_um2 < max_area_um2, "
                f"got {self.min_area_um2}, {self.max_area_um2}"
            )
        if self.touching not in ("reject", "flag"):
            raise ValueError(f"touching must be 'reject' or 'flag', got {self.touching!r}")
        if self.crop_size < 8:
            raise ValueError(f"crop_size must be at least 8 pixels, got {self.crop_size}")
        if not self.crop_pixel_size_um > 0:
            raise ValueError(f"crop_pixel_size_um must be positive, got {self.crop_pixel_size_um}")


@dataclass(frozen=True)
class Cell:
    """One segmented cell.

    Attributes
    ----------
    crop_nm : (crop_size, crop_size) float32 OPD crop centred on the cell's OPD
        centre of mass, at the configured crop pixel size
    frame : index of the frame in the batch
    position_px : (y, x) of the centre of mass in camera pixels
    label : the object's number in the frame's label image
    qc : the QC features of :data:`QC_FEATURES`
    """

    crop_nm: np.ndarray
    frame: int
    position_px: tuple[float, float]
    label: int
    qc: dict[str, float | bool]


@dataclass
class FrameSegmentation:
    """The objects found in one frame: kept cells and what was rejected and why."""

    labels: np.ndarray
    threshold_nm: float
    low_threshold_nm: float
    cells: list[Cell] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    #: (y, x) camera-pixel centres of the objects rejected as clipped by the
    #: region's border: cells entering or leaving the field, which a tracker follows
    clipped_px: list[tuple[float, float]] = field(default_factory=list)
    #: OPD spread (standard deviation, nm) over the pixels outside every object: the
    #: background a stale reference or drifting optics leave behind (tilts, rings)
    background_rms_nm: float = float("nan")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (1-D): the cut maximising between-class variance."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = (w0 * w1 * (mean0 - mean1) ** 2)[:-1]
    # Well separated populations leave a plateau of equal scores over the empty gap
    # between them: take its middle rather than the bin just above the lower one.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((centres[best[0]] + centres[best[-1]]) / 2)


def noise_sigma(opd_nm: np.ndarray) -> float:
    """Robust noise level of a map from neighbour differences (insensitive to cells)."""
    diffs = np.diff(opd_nm, axis=-1)
    centre = median(diffs)
    return float(1.4826 * median(np.abs(diffs - centre)) / math.sqrt(2))


def _padded(mask: np.ndarray) -> np.ndarray:
    """``np.pad(mask, 1)`` (zeros around a 2-D mask) at a tenth of its cost."""
    out = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=mask.dtype)
    out[1:-1, 1:-1] = mask
    return out


def _perimeter_px(mask: np.ndarray) -> float:
    """Perimeter from the count of exposed pixel edges, corrected for a round outline.

    A digital disk of radius r exposes about 8 r edges; pi / 4 of that is 2 pi r.
    """
    padded = _padded(mask)
    edges = np.count_nonzero(padded[1:, :] != padded[:-1, :]) + np.count_nonzero(
        padded[:, 1:] != padded[:, :-1]
    )
    return edges * math.pi / 4


def _cubic_weights(positions: np.ndarray, size: int) -> np.ndarray:
    """(len(positions), size) matrix evaluating a cubic B-spline with coefficients
    on ``0..size-1`` at ``positions``: mirror-extended coefficients, zero outside
    ``[0, size-1]`` (``scipy.ndimage`` mode ``"constant"`` with cval 0).

    The four taps of every position at once, summed into the matrix by one
    ``bincount`` (taps that the mirror folds onto the same coefficient add up, in the
    taps' order, as a sum over the taps one by one would)."""
    n = len(positions)
    index = np.floor(positions).astype(np.int64)[:, None] + np.arange(-1, 3)  # (n, 4)
    t = np.abs(positions[:, None] - index)
    beta = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    if size > 1:  # mirror about the end samples: -1 -> 1, size -> size - 2
        period = 2 * (size - 1)
        index = np.abs(index) % period
        index = np.where(index >= size, period - index, index)
    else:
        index = np.zeros_like(index)
    inside = (positions >= 0) & (positions <= size - 1)
    cells = (np.arange(n)[:, None] * size + index)[inside]
    weights = np.bincount(cells.ravel(), weights=beta[inside].ravel(), minlength=n * size)
    return weights.reshape(n, size)


def _convex_chain(ys: list[float], xs: list[float], side: float) -> list[tuple[float, float]]:
    """The convex hull's boundary on one side of points sorted by ``y`` (Andrew's
    monotone chain): ``side`` +1 keeps the chain of least ``x`` (the left one), -1
    the chain of greatest. Collinear points are dropped."""
    hull: list[tuple[float, float]] = []
    for y, x in zip(ys, xs, strict=True):
        while len(hull) >= 2:
            (y1, x1), (y2, x2) = hull[-2], hull[-1]
            if side * ((y2 - y1) * (x - x1) - (x2 - x1) * (y - y1)) > 0:
                break
            hull.pop()
        hull.append((y, x))
    return hull


def _solidity(mask: np.ndarray) -> float:
    """Area over convex hull area of ``mask`` (one object), the hull taken around
    the pixels' corners: the hull of each row's first and last pixels' corners, as
    every other pixel of a row lies between those two.

    The corners of the rows' first pixels form a chain monotone in y, as do those of
    the last pixels, so the hull is the two chains' convex parts joined: a monotone
    chain on each side and the shoelace formula, exact on these half-pixel corners
    and a third faster than Qhull's setup on a cell's few hundred corners."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 1.0
    inside = mask[rows]
    first = inside.argmax(axis=1)
    last = inside.shape[1] - 1 - inside[:, ::-1].argmax(axis=1)
    # Each row's two corners on either side: y -+ 0.5 at x = first - 0.5 (left) and
    # at x = last + 0.5 (right).
    ys = (np.repeat(rows, 2) + np.tile([-0.5, 0.5], rows.size)).tolist()
    left = _convex_chain(ys, (np.repeat(first, 2) - 0.5).tolist(), 1.0)
    right = _convex_chain(ys, (np.repeat(last, 2) + 0.5).tolist(), -1.0)
    outline = left + right[::-1]
    twice_area = 0.0
    for (y1, x1), (y2, x2) in zip(outline, outline[1:] + outline[:1], strict=True):
        twice_area += x1 * y2 - x2 * y1
    hull_area = abs(twice_area) / 2
    if hull_area <= 0:
        return 1.0
    return float(min(1.0, mask.sum() / hull_area))


def _neck(mask: np.ndarray, pixel_size_um: tuple[float, float], min_core: float) -> float:
    """How narrow the outline ``mask`` is between its two widest places.

    The distance transform of a single cell's outline rises to one maximum; two
    cells side by side give two maxima (their centres) joined through a saddle (the
    neck between them). Returns the saddle's height over the lower of the two
    maxima, 1 when there is no second maximum at least ``min_core`` times the
    highest (0 for separate pieces).

    Parameters
    ----------
    mask : (h, w) bool, one object, holes filled
    pixel_size_um : (dy, dx) of the map
    min_core : fraction of the highest maximum a second one must reach to count
    """
    distance = ndi.distance_transform_edt(_padded(mask), sampling=pixel_size_um)
    highest = float(distance.max())
    if highest <= 0:
        return 1.0
    # Most objects have one maximum that counts: no neck, no flooding needed.
    tops = (distance == ndi.maximum_filter(distance, size=3)) & (distance >= min_core * highest)
    top_parts, count = ndi.label(tops, structure=EIGHT_CONNECTED)
    if count < 2:
        return 1.0
    # Neighbouring maxima are equal, so each top is one height, any of its pixels'.
    at = np.flatnonzero(top_parts)
    heights = distance.ravel()[at]
    part_heights = np.zeros(count + 1)
    part_heights[top_parts.ravel()[at]] = heights
    # A piece's maximum is one of the tops, so the lower of two pieces' maxima is at
    # most the second highest top: from t on, no level gives a ratio under t / that.
    second = float(np.sort(part_heights[1:])[-2])
    # A piece's highest pixel is a maximum of the whole map, so a piece reaching
    # min_core holds a top pixel and the highest it holds is its maximum: the top
    # pixels tell the two highest pieces apart, highest first.
    order = np.argsort(-heights, kind="stable")
    at, heights = at[order], heights[order]
    ratio = 1.0
    # Flood from the top: just above the saddle, {distance > t} is two pieces. The
    # levels are labelled several at once (stacked, joined only within a level).
    levels = np.linspace(0.0, highest, 33)[:-1]
    for start in range(0, len(levels), NECK_LEVELS_PER_PASS):
        chunk = levels[start : start + NECK_LEVELS_PER_PASS]
        if chunk[0] >= ratio * second:
            break
        pieces, _ = ndi.label(distance > chunk[:, None, None], structure=_WITHIN_A_LEVEL)
        held = pieces.reshape(len(chunk), -1)[:, at]  # each top pixel's piece (0: below t)
        alive = held > 0
        first = held[np.arange(len(chunk)), alive.argmax(axis=1)]  # the highest piece
        other = alive & (held != first[:, None])  # top pixels in other pieces
        split = other.any(axis=1)
        runner_up = heights[other.argmax(axis=1)]  # the second highest piece's maximum
        for t, parted, lower in zip(chunk, split, runner_up, strict=True):
            if t >= ratio * second:
                return ratio
            if parted:
                ratio = min(ratio, float(t) / float(lower))
    return ratio


class Segmenter:
    """Cuts cells from OPD maps. Stateless apart from its configuration."""

    def __init__(self, config: SegmentationConfig | None = None) -> None:
        self.config = config or SegmentationConfig()

    def segment(self, maps: OPDMaps) -> list[FrameSegmentation]:
        """Segment every frame of ``maps``; returns one result per frame."""
        return [self.segment_frame(maps, i) for i in range(maps.opd_nm.shape[0])]

    def segment_frame(self, maps: OPDMaps, index: int, cut: bool = True) -> FrameSegmentation:
        """Frame ``index`` of ``maps``: its kept cells (each with its crop unless ``cut``
        is False: then ``crop_nm`` is an empty (0, 0) array, for QC alone) and what
        was rejected and why."""
        cfg = self.config
        opd = maps.opd_nm[index]
        amplitude = maps.amplitude[index]
        dy, dx = maps.pixel_size_um
        pixel_area = dy * dx
        sigma = noise_sigma(opd)
        floor = cfg.noise_sigmas * sigma
        if cfg.threshold == "otsu":
            high = max(otsu_threshold(opd[::2, ::2].ravel()), 2 * floor)
        else:
            high = float(cfg.threshold)
        low = max(cfg.low_fraction * high, floor)
        candidates, found = ndi.label(opd > low, structure=EIGHT_CONNECTED)
        keep = np.zeros(found + 1, dtype=bool)
        keep[candidates[opd > high]] = True  # the candidates that hold a seed
        keep[0] = False
        # The kept candidates numbered 1, 2, ... in their order, as labelling them
        # again would (ndi.label numbers objects in the order of their first pixel).
        number_of = (np.cumsum(keep) * keep).astype(candidates.dtype)
        labels = number_of[candidates]
        count = int(keep.sum())
        background = opd[::2, ::2][candidates[::2, ::2] == 0]  # outside any candidate
        result = FrameSegmentation(
            labels=labels,
            threshold_nm=high,
            low_threshold_nm=low,
            background_rms_nm=float(background.std()) if background.size else float("nan"),
        )
        if count == 0:
            return result

        def reject(reason: str) -> None:
            result.rejected[reason] = result.rejected.get(reason, 0) + 1

        h, w = opd.shape
        margin_y = max(1, math.ceil(cfg.edge_margin_um / dy))
        margin_x = max(1, math.ceil(cfg.edge_margin_um / dx))
        for number, box in enumerate(ndi.find_objects(labels), start=1):
            if box is None:
                continue
            mask = labels[box] == number
            area_px = int(mask.sum())
            area_um2 = area_px * pixel_area
            if area_um2 < cfg.min_area_um2:
                reject("too_small")
                continue
            if area_um2 > cfg.max_area_um2:
                reject("too_large")
                continue
            # The border first: a cell cut by it is neither round nor judged for touching.
            clipped = (
                box[0].start < margin_y
                or box[1].start < margin_x
                or box[0].stop > h - margin_y
                or box[1].stop > w - margin_x
            )
            if clipped and cfg.reject_border:
                reject("clipped")
                ys, xs = np.nonzero(mask)
                result.clipped_px.append(
                    maps.to_camera_px(box[0].start + ys.mean(), box[1].start + xs.mean())
                )
                continue
            perimeter_um = _perimeter_px(mask) * math.sqrt(pixel_area)
            circularity = min(1.0, 4 * math.pi * area_um2 / perimeter_um**2)
            filled = ndi.binary_fill_holes(mask)
            solidity = _solidity(filled)
            touching = solidity < cfg.min_solidity or self._touching(
                opd[box], mask, filled, (dy, dx)
            )
            if touching and cfg.touching == "reject":
                reject("touching")
                continue
            if circularity < cfg.min_circularity and not touching:
                reject("not_round")
                continue
            values = opd[box][mask]
            weights = np.clip(values, 0, None)
            ys, xs = np.nonzero(mask)
            total = float(weights.sum())
            cy = box[0].start + float((ys * weights).sum()) / total
            cx = box[1].start + float((xs * weights).sum()) / total
            amp_std = float(np.std(amplitude[box][mask]))
            qc: dict[str, float | bool] = {
                "area_um2": area_um2,
                "dry_mass_pg": float(values.sum())
                * 1e-3
                * pixel_area
                / REFRACTIVE_INCREMENT_UM3_PER_PG,
                "mean_opd_nm": float(values.mean()),
                "peak_opd_nm": float(values.max()),
                "circularity": circularity,
                "solidity": solidity,
                "amplitude_std": amp_std,
                "clipped": clipped,
                "touching": touching,
                "out_of_focus": amp_std > cfg.max_amplitude_std,
            }
            crop = (
                self._crop(opd, labels, number, (cy, cx), (dy, dx))
                if cut
                else np.empty((0, 0), np.float32)
            )
            result.cells.append(
                Cell(
                    crop_nm=crop,
                    frame=index,
                    position_px=maps.to_camera_px(cy, cx),
                    label=number,
                    qc=qc,
                )
            )
        return result

    def crop_qc(
        self, crop_nm: np.ndarray, pixel_size_um: float
    ) -> tuple[dict[str, float | bool] | None, str | None]:
        """The QC of a crop posted as a cell: the crop segmented as a frame of its own
        (at ``pixel_size_um``), by the rules the camera's cells pass. Returns the QC of
        the kept cell nearest the crop's centre and None, or None and why no cell was
        kept: ``empty`` (no object at all: an all-zero or noise-only crop) or the
        segmentation's most frequent reason (``too_small``, ``too_large``, ``clipped``:
        cut by the crop's edge, ``touching``, ``not_round``). A crop holds OPD only,
        so ``amplitude_std`` and ``out_of_focus`` are not measured (NaN, False)."""
        opd = np.asarray(crop_nm, dtype=np.float32)[None]
        maps = OPDMaps(
            opd_nm=opd,
            amplitude=np.ones_like(opd),
            pixel_size_um=(pixel_size_um, pixel_size_um),
            scale=(1.0, 1.0),
            origin_px=(0.0, 0.0),
            carrier=(0.0, 0.0),
            sign=1,
            wavelength_nm=float("nan"),
        )
        found = self.segment_frame(maps, 0, cut=False)
        if not found.cells:
            if not found.rejected:
                return None, "empty"
            return None, max(found.rejected.items(), key=lambda kv: kv[1])[0]
        centre = ((opd.shape[1] - 1) / 2, (opd.shape[2] - 1) / 2)
        cell = min(
            found.cells,
            key=lambda c: math.hypot(c.position_px[0] - centre[0], c.position_px[1] - centre[1]),
        )
        qc = dict(cell.qc)
        qc["amplitude_std"], qc["out_of_focus"] = float("nan"), False
        return qc, None

    def _touching(
        self,
        opd: np.ndarray,
        mask: np.ndarray,
        filled: np.ndarray,
        pixel_size_um: tuple[float, float],
    ) -> bool:
        """True when a (convex enough) object holds two cells or more.

        Judged on its outline, holes filled: two cells pressed together leave a neck
        between them, where a cell with a dimple (a red blood cell), a nucleus or a
        nucleolus has none. A deep neck is enough; a shallow one counts when the OPD
        also falls apart into several large domes when cut at higher levels.
        """
        cfg = self.config
        neck = _neck(filled, pixel_size_um, cfg.min_core_fraction)
        if neck < cfg.neck_ratio:
            return True
        # bool(): a QC value is stored as JSON, which takes no NumPy bool.
        return bool(neck < cfg.split_neck_ratio and self._splits(opd, mask))

    def _splits(self, opd: np.ndarray, mask: np.ndarray) -> bool:
        """True when the object falls apart into several large domes when cut higher
        (each level set's holes filled: a ring is one part, not a hole and its rim)."""
        cfg = self.config
        values = np.where(mask, opd, 0.0)
        peak = float(values.max())
        min_part = cfg.min_split_fraction * mask.sum()
        for level in cfg.split_levels:
            parts, count = ndi.label(ndi.binary_fill_holes(values > level * peak))
            if count > 1:
                sizes = np.bincount(parts.ravel())[1:]
                if (sizes >= min_part).sum() > 1:
                    return True
        return False

    def _crop(
        self,
        opd: np.ndarray,
        labels: np.ndarray,
        number: int,
        centre: tuple[float, float],
        pixel_size_um: tuple[float, float],
    ) -> np.ndarray:
        """Resample a crop_size square around ``centre`` at the crop pixel size.

        Cubic-spline interpolation of a local window: the maps are band-limited, so
        a smooth interpolant adds no edges of its own.
        """
        cfg = self.config
        n = cfg.crop_size
        steps = (
            cfg.crop_pixel_size_um / pixel_size_um[0],
            cfg.crop_pixel_size_um / pixel_size_um[1],
        )
        offsets = np.arange(n, dtype=np.float64) - (n - 1) / 2
        ys = centre[0] + offsets * steps[0]
        xs = centre[1] + offsets * steps[1]
        margin = 4
        y0 = max(math.floor(ys[0]) - margin, 0)
        y1 = min(math.ceil(ys[-1]) + margin + 1, opd.shape[0])
        x0 = max(math.floor(xs[0]) - margin, 0)
        x1 = min(math.ceil(xs[-1]) + margin + 1, opd.shape[1])
        window = opd[y0:y1, x0:x1].astype(np.float64)
        if cfg.mask_neighbours:
            others = labels[y0:y1, x0:x1]
            others = (others > 0) & (others != number)
            if others.any():
                window = np.where(ndi.binary_dilation(others, iterations=1), 0.0, window)
        # The grid is a tensor product, so the cubic spline separates: crop = Wy C Wx^T
        # with C the spline coefficients of the window. This equals
        # ndi.map_coordinates(window, grid, order=3, mode="constant") and is 10x faster.
        coefficients = ndi.spline_filter(window, order=3, mode="mirror")
        wy = _cubic_weights(ys - y0, window.shape[0])
        wx = _cubic_weights(xs - x0, window.shape[1])
        return (wy @ coefficients @ wx.T).astype(np.float32)

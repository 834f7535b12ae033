"""Cells followed across the frames they cross: detections linked into tracks.

In an imaging flow cytometer a cell stays in view for several frames. Each frame's
detections (cell centres, camera pixels) are linked to the open tracks by linear
assignment (:func:`scipy.optimize.linear_sum_assignment`) on the distance between
each track's predicted position and each detection:

- a track with two or more views predicts with its own velocity (pixels per
  frame, from its last views), so cells at different speeds (a parabolic flow
  profile) and cells overtaking one another keep their own tracks;
- a track seen once predicts with the flow's velocity, estimated as the median of
  the established tracks' velocities and kept while the field is empty (axis and
  direction included, so the defaults work whichever way the cells flow), gated
  to ``gate_um`` across the flow and ``max_step_um`` a frame along it; before any cell has been
  seen twice it may move up to ``max_step_um`` per frame in any direction;
- the prediction advances by the frame counter's gap, so a dropped frame (a gap
  in the camera's counter) or a missed detection neither splits nor merges a track;
- a track not seen for more than ``max_missed_frames`` frames has ended (its cell
  left the field, or was never seen again); :meth:`Tracker.close` ends the rest.

This module links positions only; what a detection carries (its crop, its
probabilities) stays with the caller, indexed by the order of the detections.
"""

from __future__ import annotations

import collections
import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

FlowDirection = Literal["auto", "+x", "-x", "+y", "-y"]
#: The fixed flow directions, as (dy, dx) unit vectors.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "+x": (0.0, 1.0),
    "-x": (0.0, -1.0),
    "+y": (1.0, 0.0),
    "-y": (-1.0, 0.0),
}
#: Views whose displacements give a track's velocity.
VELOCITY_VIEWS = 4
#: Frames whose displacements vote for the flow's direction.
FLOW_WINDOW = 30
#: Directions of the vote: bins of 10 degrees.
FLOW_BINS = 36
FLOW_BIN_RAD = 2 * math.pi / FLOW_BINS
#: A direction is trusted with this many votes, and this many times the next best.
FLOW_MIN_VOTES = 8
FLOW_MARGIN = 2.0


@dataclass(frozen=True)
class TrackerConfig:
    """How detections are linked.

    Attributes
    ----------
    pixel_size_um : camera pixel size in the sample plane, um
    gate_um : how far a detection may lie from a track's prediction (tracks with
        a velocity of their own)
    max_step_um : the largest move per frame of a cell before the flow's velocity
        is known (set it above the fastest cell's speed per frame)
    max_missed_frames : a track unseen for more frames than this has ended
    flow_direction : "auto" (learnt from the cells' motion) or the direction the
        cells flow in camera pixels, "+x", "-x", "+y" or "-y", when the instrument's
        is known: then the first frames need not learn it
    """

    pixel_size_um: float = 0.12
    gate_um: float = 6.0
    max_step_um: float = 60.0
    max_missed_frames: int = 3
    flow_direction: FlowDirection = "auto"

    def __post_init__(self) -> None:
        for name in ("pixel_size_um", "gate_um", "max_step_um"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_missed_frames < 0:
            raise ValueError(f"max_missed_frames must be >= 0, got {self.max_missed_frames}")
        if self.flow_direction not in ("auto", *DIRECTIONS):
            raise ValueError(
                f"flow_direction must be auto, +x, -x, +y or -y, got {self.flow_direction!r}"
            )


@dataclass
class Track:
    """One cell's views: ``frames[i]`` is the camera frame of view ``i``,
    ``positions_px[i]`` its (y, x) centre and ``detections[i]`` its index in that
    frame's detections."""

    id: int
    frames: list[int] = field(default_factory=list)
    positions_px: list[tuple[float, float]] = field(default_factory=list)
    detections: list[int] = field(default_factory=list)

    @property
    def last_frame(self) -> int:
        return self.frames[-1]

    @property
    def views(self) -> int:
        return len(self.frames)

    def velocity_px(self) -> np.ndarray | None:
        """(vy, vx) in pixels per frame over the last views; None with one view."""
        if len(self.frames) < 2:
            return None
        frames = self.frames[-VELOCITY_VIEWS:]
        positions = np.asarray(self.positions_px[-VELOCITY_VIEWS:])
        return (positions[-1] - positions[0]) / (frames[-1] - frames[0])


@dataclass(frozen=True)
class TrackUpdate:
    """What one frame did: the track id of each detection (in their order) and the
    tracks that ended before this frame."""

    ids: list[int]
    ended: list[Track]


class Tracker:
    """Links each frame's detections to the cells of the previous frames."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._open: dict[int, Track] = {}
        self._ids = itertools.count(1)
        self._last_frame: int | None = None
        self._previous: np.ndarray = np.zeros((0, 2))  # the last frame's detections
        self._previous_frame: int | None = None
        # Displacements between consecutive frames' detections (all pairs within
        # reach), per frame, for the flow's direction: true pairs share it, false
        # pairs point anywhere.
        self._votes: collections.deque[np.ndarray] = collections.deque(maxlen=FLOW_WINDOW)

    def flow_velocity_px(self) -> np.ndarray | None:
        """The flow's velocity (pixels per frame), None while unknown: its direction
        the configured one, else the one most displacements between consecutive
        frames share (over the last :data:`FLOW_WINDOW` frames); its size their
        median along it (0 before any cell was seen twice)."""
        flow = self._flow()
        return None if flow is None else flow[0] * flow[1]

    def _flow(self) -> tuple[np.ndarray, float] | None:
        """(unit direction, speed in pixels per frame) of the flow, or None."""
        moves = np.concatenate(list(self._votes)) if self._votes else np.zeros((0, 2))
        fixed = DIRECTIONS.get(self.config.flow_direction)
        if fixed is not None:
            axis = np.asarray(fixed)
            along = moves @ axis
            across = np.abs(moves @ np.array([-axis[1], axis[0]]))
            gate_px = self.config.gate_um / self.config.pixel_size_um
            near = (along > 0) & (across <= gate_px)
            return axis, float(np.median(along[near])) if near.any() else 0.0
        if not len(moves):
            return None
        angles = np.arctan2(moves[:, 0], moves[:, 1])
        bins = np.round(angles / FLOW_BIN_RAD).astype(int) % FLOW_BINS
        counts = np.bincount(bins, minlength=FLOW_BINS)
        index = np.arange(FLOW_BINS)
        support = counts[index - 1] + counts + counts[(index + 1) % FLOW_BINS]
        best = int(np.argmax(support))
        # The runner-up outside the winner's neighbourhood: lateral pairs of cells
        # that entered together vote across the flow, so a direction is trusted
        # only when clearly ahead.
        distance = np.abs(((index - best + FLOW_BINS // 2) % FLOW_BINS) - FLOW_BINS // 2)
        rival = int(support[distance > 2].max()) if (distance > 2).any() else 0
        if support[best] < FLOW_MIN_VOTES or support[best] < FLOW_MARGIN * rival:
            return None
        near = np.abs(((bins - best + FLOW_BINS // 2) % FLOW_BINS) - FLOW_BINS // 2) <= 1
        unit = moves[near] / np.hypot(*moves[near].T)[:, None]
        axis = unit.mean(axis=0)
        axis /= np.hypot(*axis)
        return axis, float(np.median(moves[near] @ axis))

    def _vote(self, frame: int, detections: np.ndarray) -> None:
        if self._previous_frame is not None and len(self._previous) and len(detections):
            gap = frame - self._previous_frame
            moves = (detections[None, :, :] - self._previous[:, None, :]).reshape(-1, 2)
            reach = self.config.max_step_um / self.config.pixel_size_um * gap
            step = np.hypot(*moves.T)
            moves = moves[(step > 0) & (step <= reach)] / gap
            self._votes.append(moves)
        self._previous, self._previous_frame = detections, frame

    def update(self, frame: int, positions_px: list[tuple[float, float]]) -> TrackUpdate:
        """Link the detections at ``positions_px`` (camera (y, x)) of camera frame
        ``frame`` (the camera's counter: gaps are dropped frames)."""
        if self._last_frame is not None and frame <= self._last_frame:
            raise ValueError(f"frames must increase: {frame} after {self._last_frame}")
        self._last_frame = frame
        cfg = self.config
        ended = [t for t in self._open.values() if frame - t.last_frame > cfg.max_missed_frames + 1]
        for track in ended:
            del self._open[track.id]
        tracks = list(self._open.values())
        detections = np.asarray(positions_px, dtype=float).reshape(-1, 2)
        self._vote(frame, detections)
        ids = [0] * len(detections)
        if tracks and len(detections):
            cost = self._costs(tracks, detections, frame)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if math.isfinite(cost[r, c]) and cost[r, c] < _GATED:
                    ids[c] = tracks[r].id
        for index, (y, x) in enumerate(detections):
            if not ids[index]:
                track = Track(next(self._ids))
                self._open[track.id] = track
                ids[index] = track.id
            track = self._open[ids[index]]
            track.frames.append(frame)
            track.positions_px.append((float(y), float(x)))
            track.detections.append(index)
        return TrackUpdate(ids, ended)

    def close(self) -> list[Track]:
        """End every open track (acquisition stops, a replay ends)."""
        ended = list(self._open.values())
        self._open.clear()
        return ended

    def _costs(self, tracks: list[Track], detections: np.ndarray, frame: int) -> np.ndarray:
        """Distance from each track's prediction to each detection, in pixels, with
        pairs outside the track's gate at :data:`_GATED`."""
        cfg = self.config
        gate_px = cfg.gate_um / cfg.pixel_size_um
        flow = self._flow()
        cost = np.full((len(tracks), len(detections)), _GATED)
        for row, track in enumerate(tracks):
            gap = frame - track.last_frame
            last = np.asarray(track.positions_px[-1])
            own = track.velocity_px()
            offsets = detections - last
            if own is not None:
                distance = np.hypot(*(offsets - own * gap).T)
                allowed = distance <= gate_px
            elif flow is not None:
                # One view: the cell moves down the flow at any speed of the profile
                # (up to max_step_um a frame; the median is only the likeliest) and
                # sideways within the gate.
                axis, speed = flow
                along = offsets @ axis
                across = np.abs(offsets @ np.array([-axis[1], axis[0]]))
                reach = cfg.max_step_um / cfg.pixel_size_um * gap
                allowed = (along >= -gate_px) & (along <= reach) & (across <= gate_px)
                distance = np.hypot(along - speed * gap, across)
            else:
                distance = np.hypot(*offsets.T)
                allowed = distance <= cfg.max_step_um / cfg.pixel_size_um * gap
            cost[row] = np.where(allowed, distance, _GATED)
        return cost


#: The cost of a pair outside its gate: never chosen over a new track.
_GATED = 1e12

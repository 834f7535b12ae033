"""The camera loop's states, error reasons and counts: one vocabulary for the
runner, the metrics and the HTTP schemas."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """Where the camera loop is (see :class:`service.loop.runner.AcquisitionRunner`)."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"


class ErrorReason(StrEnum):
    """Why a frame, a grab or a batch of cells failed (``topgan_frame_errors_total``)."""

    GRAB_TIMEOUT = "grab_timeout"
    GRAB_FAILED = "grab_failed"
    CAMERA_OPEN = "camera_open"
    CAMERA_LOST = "camera_lost"
    RECONSTRUCTION = "reconstruction"
    WORKER = "worker"
    CLASSIFY = "classify"


class Count(StrEnum):
    """What the camera loop counts (``GET /acquisition`` ``counts``)."""

    FRAMES_GRABBED = "frames_grabbed"
    FRAMES_DROPPED = "frames_dropped"
    FRAMES_PROCESSED = "frames_processed"
    FRAMES_WITHOUT_CELLS = "frames_without_cells"
    CELLS_CUT = "cells_cut"
    CELLS_STORED = "cells_stored"
    CELLS_LOST = "cells_lost"
    EVENTS_STORED = "events_stored"
    EVENTS_LOST = "events_lost"
    EDGE_ONLY_TRACKS = "edge_only_tracks"
    RECONNECTS = "reconnects"
    REFERENCE_REFRESHES = "reference_refreshes"

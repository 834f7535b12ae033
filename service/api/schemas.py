"""Response and request models of the HTTP API (they make its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..loop.states import Count, ErrorReason, RunState


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, in one sentence")


class ModelSummary(BaseModel):
    name: str
    version: str
    method: str
    classes: list[str]


class CellResult(BaseModel):
    index: int = Field(description="position of the crop (or cell) in the request")
    id: int | None = Field(
        description="the stored result's id; null for a posted crop that failed its QC "
        "(not stored, not counted: see rejected)"
    )
    label: str
    probabilities: dict[str, float]
    qc: dict[str, float | bool | None] = Field(default_factory=dict)
    position_px: list[float] | None = Field(None, description="(y, x) in hologram pixels")
    uncertain: bool = Field(
        description="its largest probability is below min_confidence (it keeps its label)"
    )
    rejected: str | None = Field(
        None,
        description="POST /classify: why the crop is not a cell by the camera's rules "
        "(empty, too_small, too_large, clipped, touching, not_round); it is classified "
        "but not stored or counted. null: a cell",
    )


class ClassifyResponse(BaseModel):
    model: ModelSummary
    cells: list[CellResult]


class Optics(BaseModel):
    sample_half: str = Field(description="the part of the frame segmented for cells")
    pixel_size_um: float = Field(description="camera pixel in the sample plane, um")
    wavelength_nm: float
    carrier: list[float] = Field(
        description="(ky, kx) of the +1 sideband used, cycles per pixel (found or given)"
    )
    reference: bool = Field(description="a cell-free reference hologram was subtracted")


class HologramClassifyResponse(ClassifyResponse):
    optics: Optics | None = Field(
        None,
        description="how the hologram was reconstructed (the service's optics, or the request's)",
    )
    rejected: dict[str, int] = Field(
        default_factory=dict,
        description="objects of the hologram not classified, by reason: too_small, "
        "too_large, clipped (cut by the sample region's border), touching (cells "
        "pressed together), not_round; reasons that did not occur are absent",
    )
    reference_id: str | None = Field(
        None,
        description="the reference hologram subtracted: 16 hex digits of its SHA-256 (null: "
        "none, with the request's own optics or a hologram of another shape)",
    )
    pipeline_id: str | None = Field(
        None,
        description="the configuration the cells were found and classified with: the "
        "service's or the request's optics, its segmentation and the served model "
        "(GET /pipelines/{id})",
    )


class StoredResult(BaseModel):
    id: int
    created: float = Field(description="Unix time, seconds")
    source: str = Field(description="camera or api")
    frame_id: int | None
    y_px: float | None
    x_px: float | None
    label: str
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    qc: dict[str, Any]
    latency_s: float | None
    event_id: int | None = Field(
        description="the cell this view belongs to (GET /events); every view of one cell "
        "shares it; null for crops posted to the API"
    )
    uncertain: bool | None = Field(
        description="its largest probability was below min_confidence when it was stored; "
        "null for results stored before the flag existed"
    )
    reference_id: str | None = Field(
        description="the reference hologram it was reconstructed against: 16 hex digits of its "
        "SHA-256, as GET /acquisition's reference_id; null without one (a background "
        "surface was fitted), for crops posted to /classify and for rows stored before "
        "it was recorded"
    )
    pipeline_id: str | None = Field(
        description="the configuration it ran with (GET /pipelines/{id}); null for crops posted "
        "to /classify and for rows stored before it was recorded"
    )


class StoredEvent(BaseModel):
    id: int = Field(description="the event (cell) id, as results' event_id")
    created: float = Field(description="Unix time of the cell's first sighting, seconds")
    ended: float = Field(description="Unix time of its last sighting, seconds")
    source: str = Field(description="camera")
    first_frame: int = Field(description="camera frame of the first sighting")
    last_frame: int = Field(description="camera frame of the last sighting")
    views: int = Field(description="frames the cell was classified in (fully in view)")
    sightings: int = Field(description="frames it was seen in, clipped by the border too")
    label: str = Field(description="the class of the combined views")
    probabilities: dict[str, float] = Field(
        description="the views' probabilities combined: mean of log-probabilities, renormalised"
    )
    speed_um_s: float | None = Field(
        description="first to last sighting over their grab times, um/s (null: one sighting)"
    )
    qc: dict[str, float] = Field(description="the views' mean QC (flags: fraction of views)")
    model_name: str
    model_version: str
    latency_s: float | None = Field(description="grab of the last view to the stored event")
    uncertain: bool | None = Field(
        description="the combined probabilities' largest was below min_confidence; null for "
        "events stored before the flag existed"
    )
    reference_id: str | None = Field(
        description="its last view's reference_id (a refresh while the cell crossed the "
        "field: its views' own are in GET /results); null for events stored before it was "
        "recorded"
    )
    pipeline_id: str | None = Field(
        description="its last view's pipeline_id (a model reload while the cell crossed "
        "the field: its views' own are in GET /results); null for events stored before it "
        "was recorded"
    )


class StoredPipeline(BaseModel):
    id: str = Field(
        description="16 hex digits of the SHA-256 of the description's canonical JSON "
        "(keys sorted, separators ',' and ':')"
    )
    created: float = Field(description="Unix time it was first stored, seconds")
    description: dict[str, Any] = Field(
        description="reconstruction, segmentation (with the model's crop geometry), camera "
        "(the settings that shape the frames; null for posted holograms), tracking (null: "
        "off, or a posted hologram), min_confidence, model (name, version, method, "
        "onnx_sha256, input)"
    )


class PipelinesPage(BaseModel):
    pipelines: list[StoredPipeline]


class Page(BaseModel):
    """The cursors of a page of /results or /events."""

    next_after_id: int = Field(
        description="order=asc: pass as after_id to get the next page; order=desc: the "
        "largest id of this page (after_id for what came after it, in order=asc)"
    )
    next_before_id: int | None = Field(
        None,
        description="order=desc: pass as before_id to get the next (older) page; null "
        "when this page is empty, and with order=asc",
    )


class EventsPage(Page):
    events: list[StoredEvent]


class EventSummary(BaseModel):
    total: int = Field(description="cells counted once, since the service started")
    counts: dict[str, int] = Field(description="cells per class")
    fractions: dict[str, float] = Field(description="class fractions of the cells")
    uncertain: int = Field(
        0, description="of the cells, those flagged uncertain (also counted in their class)"
    )
    per_second: float = Field(description="cells per second")
    per_ul: float | None = Field(
        None, description="concentration, cells per uL of sample (when flow_rate_ul_min is set)"
    )


class ResultsPage(Page):
    results: list[StoredResult]


class CountSummary(BaseModel):
    cells: int = Field(description="stored views (and posted crops) of this group")
    counts: dict[str, int] = Field(description="of them, per class")
    fractions: dict[str, float] = Field(description="class fractions of this group")
    uncertain: int = Field(0, description="of them, those flagged uncertain")


class Summary(BaseModel):
    since: float = Field(description="Unix time the counts start at (the service's start)")
    seconds: float = Field(description="seconds since then")
    total_stored: int = Field(description="results stored over all time")
    total_uncertain: int = Field(
        0,
        description="of them, those flagged uncertain (rows stored before the flag existed "
        "count as not uncertain)",
    )
    cells: int = Field(description="stored views of the camera and posted crops, since then")
    counts: dict[str, int] = Field(description="cells per class, every source and model")
    fractions: dict[str, float] = Field(description="class fractions of cells")
    uncertain: int = Field(
        0,
        description="of the cells, those flagged uncertain (largest probability below "
        "min_confidence); they are also counted in their class",
    )
    min_confidence: float = Field(
        0.0, description="the service's min_confidence: below it a cell is uncertain"
    )
    sources: dict[str, int] = Field(description="cells per source (camera, api)")
    cells_per_second: float = Field(description="cells per second since then")
    by_source: dict[str, CountSummary] = Field(
        default_factory=dict,
        description="cells, counts and fractions per source (camera, api; those with "
        "cells), so crops posted to /classify do not mix into the camera's fractions",
    )
    by_model: dict[str, CountSummary] = Field(
        default_factory=dict,
        description="cells, counts and fractions per model version (after a reload, "
        "each model's own)",
    )
    events: EventSummary = Field(
        description="the camera loop's cells, each counted once however many frames it "
        "crossed (cells, counts, fractions above count every stored view)"
    )


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool = Field(
        description="a model is loaded and the camera loop (when configured) is neither "
        "opening its camera nor failed; a deliberately stopped loop is ready"
    )
    reasons: list[str] = Field(description="why not ready (empty when ready)")
    model: ModelSummary | None = Field(description="the served model (null: none loaded)")
    camera: str = Field(description="the configured camera (none: no camera loop)")
    serving: bool = Field(False, description="a model is loaded: POST /classify answers")
    acquiring: bool = Field(False, description="the camera loop is running (grabbing frames)")
    acquisition: RunState | Literal["disabled"] = Field(
        "disabled", description="the camera loop's state, as GET /acquisition's"
    )


class ModelInfo(BaseModel):
    directory: str
    providers: list[str]
    manifest: dict[str, Any]


class ReloadRequest(BaseModel):
    path: str = Field(description="model directory, absolute or relative to the models root")


class AcquisitionStatus(BaseModel):
    # Built from service.loop.runner.LoopStatus: a field of the snapshot that this
    # schema does not know is an error, not silently dropped.
    model_config = ConfigDict(extra="forbid")

    state: RunState | Literal["disabled"] = Field(
        description="disabled, idle, starting, running, stopping or failed"
    )
    camera: str
    detail: str | None = None
    started_at: float | None = Field(None, description="Unix time of the last start")
    frames_per_second: float = Field(
        0.0, description="grab rate over the last 5 s while running; 0 in any other state"
    )
    queue_depth: int = Field(0, description="frames waiting for the workers")
    queue_size: int = Field(0, description="the queue's bound; a full queue drops the oldest")
    reference_id: str | None = Field(
        None,
        description="the reference hologram in use: 16 hex digits of its SHA-256 (null: none, "
        "a background surface is fitted instead); changes when it is refreshed",
    )
    pipeline_id: str | None = Field(
        None,
        description="the configuration its results are stored with now (GET "
        "/pipelines/{id}): the loop's reconstruction, segmentation, camera and tracking "
        "settings with the served model; changes with POST /model/reload; null: no model",
    )
    counts: dict[Count, int] = Field(
        default_factory=dict,
        description="frames_grabbed, frames_dropped, frames_processed, cells_cut, "
        "cells_stored, cells_lost, events_stored (cells counted once), events_lost, "
        "edge_only_tracks (only ever seen clipped by the border), reconnects, "
        "reference_refreshes (since the service started)",
    )
    errors: dict[ErrorReason, int] = Field(
        default_factory=dict, description="errors by reason (those that occurred)"
    )
    last_error: str | None = None
    camera_info: dict[str, Any] = Field(default_factory=dict, description="the open camera")
    archive: dict[str, Any] | None = Field(
        None, description="the crop archive: archived, skipped, errors, files_deleted, bytes"
    )

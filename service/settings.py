"""Service settings: one pydantic-settings class, environment prefix ``TOPGAN_``.

Values come, highest priority first, from the constructor (tests pass their own),
the environment (``TOPGAN_PORT=9000``; nested with ``__``), and a TOML file named
by ``TOPGAN_CONFIG`` (or the ``config_file`` argument).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from acquisition.cameras import CameraConfig
from acquisition.cameras.spec import CameraSpec, parse_camera
from acquisition.reconstruction import ReconstructionConfig
from acquisition.segmentation import SegmentationConfig
from acquisition.simulator.flow import FlowConfig
from acquisition.simulator.phantoms import parse_lines
from acquisition.tracking import TrackerConfig

from .loop.reference import RefreshConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The settings file of the current :func:`load_settings` call (else $TOPGAN_CONFIG).
_CONFIG_FILE: ContextVar[str | None] = ContextVar("topgan_config_file", default=None)
#: The models bundled with the package; POST /model/reload may load them besides the
#: models root's.
BUNDLED_MODELS = REPO_ROOT / "models"
DEFAULT_MODEL = BUNDLED_MODELS / "sw480-sw620"


class Settings(BaseSettings):
    """Every setting of ``topgan serve``."""

    model_config = SettingsConfigDict(
        env_prefix="TOPGAN_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    # -- camera (the acquisition loop) --
    camera: str = Field(
        "emulator",
        description="emulator, basler, replay:PATH, simulator or none (API only)",
    )
    camera_serial: str | None = Field(
        None, description="Basler serial number (first camera if unset)"
    )
    exposure_us: float = Field(2000.0, gt=0, description="exposure time, microseconds")
    roi: tuple[int, int, int, int] | None = Field(
        None, description="camera ROI as (offset_x, offset_y, width, height), pixels"
    )
    pixel_format: Literal["Mono8", "Mono12"] = Field("Mono8", description="camera pixel format")
    frame_rate_hz: float = Field(
        90.0, ge=0, description="frame rate (camera, replay, simulator); 0: as fast as possible"
    )
    trigger: Literal["free", "software", "hardware"] = Field("free", description="trigger mode")
    buffer_count: int = Field(16, ge=1, le=1024, description="camera driver frame buffers")
    grab_timeout_s: float = Field(1.0, gt=0, description="how long one grab waits for a frame")
    frame_queue: int = Field(
        64, ge=1, le=4096, description="frames waiting for the workers; when full the oldest drops"
    )
    pipeline_workers: int = Field(
        2, ge=1, le=64, description="reconstruction and segmentation threads"
    )
    worker_processes: bool = Field(
        True, description="run each worker in a process of its own (else threads)"
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, description="longest wait between attempts to reopen a lost camera"
    )
    simulated_lines: str = Field(
        "sw480,sw620", description="cell lines of the emulator's and the simulator's holograms"
    )
    emulator_images: Path = Field(
        Path("data/emulator"), description="where the emulator's simulated holograms are kept"
    )
    emulator_frames: int = Field(96, ge=1, description="simulated holograms the emulator cycles")
    simulator_pool_frames: int = Field(
        96, ge=1, description="frames the simulator camera renders before it streams"
    )
    simulated_flow: bool = Field(
        True,
        description="the emulator's and simulator's cells flow across the field, each seen "
        "in several frames (else every frame is a fresh draw)",
    )
    simulated_flow_speed_um_s: float = Field(
        FlowConfig.flow_speed_um_s,
        gt=0,
        description="their flow speed in the channel's centre, um/s",
    )
    simulated_cells_per_second: float = Field(
        FlowConfig.cells_per_second, ge=0, description="cells entering their field per second"
    )
    replay_loop: bool = Field(True, description="replay: start again after the last frame")

    # -- optics and reconstruction --
    wavelength_nm: float = Field(632.8, gt=0, description="illumination wavelength")
    pixel_size_um: float = Field(0.12, gt=0, description="camera pixel in the sample plane")
    sample_half: Literal["left", "right", "top", "bottom", "full"] = Field(
        "left", description="the half of the frame that carries the cells"
    )
    carrier: tuple[float, float] | None = Field(
        None, description="(ky, kx) of the +1 sideband in cycles/pixel; None: found automatically"
    )
    reference: Path | None = Field(None, description="hologram recorded without cells")
    reference_refresh: bool = Field(
        False,
        description="record a new reference from frames without any object when the "
        "background spread grows past TOPGAN_REFERENCE_REFRESH_NM",
    )
    reference_refresh_nm: float | None = Field(
        None,
        gt=0,
        description="median background spread (nm) over the last TOPGAN_REFERENCE_REFRESH_"
        "WINDOW frames above which the reference is refreshed; none: "
        "TOPGAN_QUALITY_BACKGROUND_MAX_NM",
    )
    reference_refresh_window: int = Field(
        25, ge=1, le=10000, description="frames the background spread's median is taken over"
    )
    reference_refresh_frames: int = Field(
        9, ge=1, le=1000, description="frames without a cell whose median is the new reference"
    )
    array_backend: Literal["auto", "numpy", "cupy"] = Field(
        "auto", description="reconstruction backend"
    )

    # -- segmentation --
    threshold_nm: float | None = Field(None, gt=0, description="fixed seed threshold; None: Otsu")
    crop_pixel_size_um: float = Field(0.25, gt=0, description="pixel size of the crops")

    # -- tracking (cells in flow) --
    tracking: bool = Field(
        True,
        description="follow each cell across frames and count it once (else every "
        "detection is an event of its own)",
    )
    flow_direction: Literal["auto", "+x", "-x", "+y", "-y"] = Field(
        "auto", description="the way cells flow in camera pixels; auto: learnt from their motion"
    )
    track_gate_um: float = Field(
        6.0, gt=0, description="how far a cell may stray from its track's prediction, um"
    )
    track_max_step_um: float = Field(
        60.0, gt=0, description="the fastest cell's move per frame, um (links a cell's first views)"
    )
    track_max_missed_frames: int = Field(
        3, ge=0, le=100, description="an event ends when its cell is not seen for more frames"
    )
    flow_rate_ul_min: float | None = Field(
        None, gt=0, description="sample flow rate, uL/min; set, /results/summary gives cells/uL"
    )

    # -- model and inference --
    model_dir: Path | None = Field(DEFAULT_MODEL, description="model directory to serve")
    models_root: Path = Field(
        Path("data/models"),
        description="where trained models go: POST /model/reload loads directories under "
        "here, or among the bundled models (models/ in the repository)",
    )
    served_model_file: Path = Field(
        Path("data/served-model.json"),
        description="remembers the model POST /model/reload loaded: a restart serves it "
        "again while model_dir names the same model as at the reload",
    )
    execution_provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="ONNX Runtime provider: auto takes CUDA when its libraries load"
    )
    inference_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads; 0: all cores"
    )
    batch_size: int = Field(64, ge=1, le=4096, description="largest micro-batch")
    batch_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits to fill")
    min_confidence: float = Field(
        0.7,
        ge=0,
        le=1,
        description="a cell (view, posted crop or event) whose largest probability is below "
        "this is flagged uncertain: still stored with its label, and counted; 0: never",
    )

    # -- storage --
    database_url: str = Field("sqlite:///data/results.sqlite", description="SQLAlchemy URL")
    results_retention_days: float | None = Field(
        None,
        gt=0,
        description="stored views and events older than this are deleted "
        "(checked every minute); none: kept",
    )
    results_max_rows: int | None = Field(
        None, ge=1, description="at most this many stored views (the oldest go); none: no bound"
    )
    crop_archive: Path | None = Field(
        None, description="folder where every crop of the camera loop is archived; none: off"
    )
    crop_archive_format: Literal["h5", "rtdc"] = Field(
        "h5",
        description="the archive's files: h5 (crop datasets) or rtdc (dclab's, as topgan "
        "export rtdc maps a view)",
    )
    crop_archive_max_bytes: int = Field(
        20 * 2**30, gt=0, description="the archive's disk bound: the oldest files go beyond it"
    )
    crop_archive_file_crops: int = Field(4096, ge=1, description="crops per archive file")

    # -- the operator's live page --
    live_opd_range_nm: tuple[float, float] | None = Field(
        (0.0, 800.0),
        description="the fixed OPD colour scale of the live page's map and cell images, "
        "(low, high) nm; none: each image spans its own range",
    )
    live_history_seconds: int = Field(
        600, ge=10, le=86400, description="per-second figures the live page can plot"
    )
    quality_background_max_nm: float = Field(
        10.0,
        gt=0,
        description="the background OPD spread (median over 5 min) above which the reference "
        "is stale; the page's threshold and alert TopganBackgroundDrift",
    )
    quality_fringe_contrast_min: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="the fringe contrast below which alignment is lost; the page's threshold "
        "and alert TopganFringeContrastLow",
    )
    quality_carrier_drift_max: float = Field(
        0.002,
        gt=0,
        description="the carrier drift from the reference's, cycles/px, above which the "
        "module is misaligned; the page's threshold and alert TopganCarrierDrift",
    )
    latency_p99_max_s: float = Field(
        0.1,
        gt=0,
        description="the p99 grab-to-stored latency above which the loop falls behind; the "
        "page's threshold and alert TopganLatencyHigh",
    )

    # -- HTTP --
    api_key: str | None = Field(None, description="when set, every POST needs X-API-Key")
    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8000, ge=0, le=65535, description="listen port")
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="larger bodies answer 413")
    max_crops_per_request: int = Field(1024, gt=0, description="more crops answer 413")

    @field_validator("simulated_lines")
    @classmethod
    def _simulated_lines(cls, value: str) -> str:
        return ",".join(parse_lines(value))

    @field_validator("live_opd_range_nm")
    @classmethod
    def _live_opd_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"live_opd_range_nm must be (low, high) with low < high, got {value}")
        return value

    @field_validator("camera")
    @classmethod
    def _camera(cls, value: str) -> str:
        if value == "none":
            return value
        try:
            parse_camera(value)
        except ValueError:
            kinds = "emulator, basler, simulator, none"
            raise ValueError(
                f"camera must be one of {kinds} or replay:PATH, got {value!r}"
            ) from None
        return value

    def camera_spec(self) -> CameraSpec | None:
        """The camera to build (None for ``camera = "none"``: the API alone)."""
        if self.camera == "none":
            return None
        kind, replay_path = parse_camera(self.camera)
        config = CameraConfig(
            serial=self.camera_serial,
            exposure_us=self.exposure_us,
            roi=self.roi,
            pixel_format=self.pixel_format,
            frame_rate_hz=self.frame_rate_hz or None,
            trigger=self.trigger,
            buffer_count=self.buffer_count,
            grab_timeout_s=self.grab_timeout_s,
        )
        return CameraSpec(
            kind,
            config,
            replay_path=replay_path,
            replay_loop=self.replay_loop,
            reference=self.reference,
            simulated_lines=tuple(parse_lines(self.simulated_lines)),
            emulator_images=self.emulator_images,
            emulator_frames=self.emulator_frames,
            simulator_pool_frames=self.simulator_pool_frames,
            simulated_flow=FlowConfig(
                flow_speed_um_s=self.simulated_flow_speed_um_s,
                frame_rate_hz=self.frame_rate_hz or FlowConfig.frame_rate_hz,
                cells_per_second=self.simulated_cells_per_second,
            )
            if self.simulated_flow
            else None,
        )

    def reconstruction_config(self) -> ReconstructionConfig:
        """The optics settings as the reconstruction takes them."""
        return ReconstructionConfig(
            wavelength_nm=self.wavelength_nm,
            pixel_size_um=self.pixel_size_um,
            sample_half=self.sample_half,
            carrier=self.carrier,
        )

    def refresh_config(self) -> RefreshConfig | None:
        """When the camera loop records a new reference (None: never)."""
        if not self.reference_refresh:
            return None
        return RefreshConfig(
            threshold_nm=self.reference_refresh_nm or self.quality_background_max_nm,
            window_frames=self.reference_refresh_window,
            record_frames=self.reference_refresh_frames,
        )

    def tracker_config(self) -> TrackerConfig | None:
        """How the camera loop follows cells (None: tracking off)."""
        if not self.tracking:
            return None
        return TrackerConfig(
            pixel_size_um=self.pixel_size_um,
            gate_um=self.track_gate_um,
            max_step_um=self.track_max_step_um,
            max_missed_frames=self.track_max_missed_frames,
            flow_direction=self.flow_direction,
        )

    def segmentation_config(self) -> SegmentationConfig:
        """The segmentation settings; the served model sets the crop geometry
        (:meth:`SegmentationConfig.for_crop`)."""
        return SegmentationConfig(
            threshold=self.threshold_nm if self.threshold_nm else "otsu",
            crop_pixel_size_um=self.crop_pixel_size_um,
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = _CONFIG_FILE.get() or os.environ.get("TOPGAN_CONFIG")
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``overrides``, the environment and a TOML file (if any)."""
    if config_file is None:
        return Settings(**overrides)
    if not config_file.is_file():
        raise ValueError(f"settings file {config_file} does not exist")
    token = _CONFIG_FILE.set(str(config_file))
    try:
        return Settings(**overrides)
    finally:
        _CONFIG_FILE.reset(token)

"""The automatic reference refresh on simulated holograms whose wavefront drifts:
the background grows against the first reference, a new one is recorded from frames
without cells, the background falls back, and no frame is lost on the way."""

from __future__ import annotations

import sqlite3
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from acquisition.cameras import ReplayCamera
from acquisition.cameras.emulator import prepare_emulator_images
from acquisition.frames import FrameProcessor
from acquisition.reconstruction import ReconstructionConfig
from acquisition.segmentation import SegmentationConfig
from acquisition.simulator.scene import SceneConfig
from service.loop.reference import RefreshConfig, reference_id
from service.loop.runner import AcquisitionRunner, FrameResult
from service.loop.states import Count, ErrorReason
from service.loop.workers import WorkerConfig
from service.services import Services
from service.settings import DEFAULT_MODEL, Settings

FRAMES = 40
#: The wavefront's drift: the background spread against frame 0's reference grows
#: from about 2 nm by about 0.25 nm a frame.
DRIFT = SceneConfig(cells_per_frame=0.8, debris_per_frame=0.0, aberration_drift_rad_per_frame=0.01)
THRESHOLD_NM = 5.0
RECONSTRUCTION = ReconstructionConfig(wavelength_nm=632.8, pixel_size_um=0.12, sample_half="left")


@pytest.fixture(scope="module")
def drifting(tmp_path_factory) -> tuple[Path, np.ndarray]:
    images = prepare_emulator_images(
        tmp_path_factory.mktemp("drift"), ["sw480"], FRAMES, seed=5, scene=DRIFT
    )
    return images.frames, tifffile.imread(images.reference)


def test_a_stale_reference_is_refreshed_and_no_frame_is_lost(tmp_path, drifting):
    frames, first_reference = drifting
    service = Services.start(
        Settings(
            camera="none",
            database_url=f"sqlite:///{tmp_path}/r.sqlite",
            model_dir=DEFAULT_MODEL,
            execution_provider="cpu",
        )
    )
    seen: list[FrameResult] = []
    installed: dict[str, np.ndarray] = {}
    try:
        runner = AcquisitionRunner(
            "drift",
            lambda: (ReplayCamera(frames, rate_hz=20, loop=False), first_reference),
            WorkerConfig(RECONSTRUCTION, SegmentationConfig(), backend="numpy", fft_workers=1),
            service.classification,
            service.metrics,
            workers=2,
            queue_size=FRAMES,  # room for every frame: a drop here would be a bug
            reference_refresh=RefreshConfig(THRESHOLD_NM, window_frames=5, record_frames=3),
        )
        refresher = runner.refresher
        assert refresher is not None
        install = refresher._install

        def keep(reference: np.ndarray) -> str:
            new = install(reference)
            installed[new] = reference.copy()
            return new

        refresher._install = keep
        runner.on_frame.append(seen.append)
        runner.start()
        deadline = time.monotonic() + 120
        while runner.state != "idle" or runner.status().detail == "not started":
            assert time.monotonic() < deadline, runner.status()
            time.sleep(0.05)
        status = runner.status()
    finally:
        service.close()

    counts = status.counts
    assert counts[Count.FRAMES_GRABBED] == counts[Count.FRAMES_PROCESSED] == FRAMES
    assert counts[Count.FRAMES_DROPPED] == 0
    assert status.errors.get(ErrorReason.WORKER, 0) == 0
    assert counts[Count.REFERENCE_REFRESHES] >= 1
    assert len(installed) == counts[Count.REFERENCE_REFRESHES]
    assert counts[Count.CELLS_STORED] == counts[Count.CELLS_CUT]

    by_frame = sorted(seen, key=lambda r: r.frame.index)
    assert [r.frame.index for r in by_frame] == list(range(1, FRAMES + 1))
    first = reference_id(first_reference)
    spread = [r.processed.quality()["background_opd_nm"] for r in by_frame]
    used = [r.reference_id for r in by_frame]
    # Every frame was reconstructed against a reference that was whole: the first or
    # one the refresh installed, in grab order one after another.
    assert set(used) <= {first, *installed}
    switches = [i for i in range(1, FRAMES) if used[i] != used[i - 1]]
    # Each refresh is taken up by the frames after it (one installed at the last frames
    # may have none left), never going back to an older reference.
    assert [used[i] for i in switches] == list(installed)[: len(switches)]
    assert len(switches) >= len(installed) - 1 >= 0
    assert all(used[i] not in used[:i] for i in switches), "never back to an older one"
    # The spread grew past the threshold against the first reference...
    stale = switches[0]
    assert statistics.median(spread[stale - 5 : stale]) > THRESHOLD_NM
    assert spread[0] < THRESHOLD_NM
    # ... and fell back under it against the refreshed one.
    after = spread[stale : stale + 3]
    assert max(after) < THRESHOLD_NM, after
    # A frame reconstructed against the refreshed reference is what that reference
    # gives when reconstructed afresh (it was in use whole, not half written).
    now_used = used[stale]
    assert now_used is not None
    refreshed = installed[now_used]
    assert refreshed.dtype == first_reference.dtype
    assert refreshed.shape == first_reference.shape
    fresh = FrameProcessor(RECONSTRUCTION, SegmentationConfig(), reference=refreshed)
    again = fresh.process(by_frame[stale].frame.image)
    np.testing.assert_allclose(again.maps.opd_nm, by_frame[stale].processed.maps.opd_nm, atol=1e-3)
    # Every stored view names the reference its frame was reconstructed against, and
    # every event its last view's; the pipeline stays one (a reference is not in it).
    with sqlite3.connect(tmp_path / "r.sqlite") as conn:
        views = conn.execute(
            "SELECT frame_id, event_id, reference_id, pipeline_id FROM results ORDER BY id"
        ).fetchall()
        events = conn.execute("SELECT id, last_frame, reference_id FROM events").fetchall()
    assert views
    assert [(f, r) for f, _, r, _ in views] == [(f, used[f - 1]) for f, _, _, _ in views]
    assert len({p for *_, p in views}) == 1
    assert None not in {p for *_, p in views}
    last_view: dict[int, tuple[int, str]] = {}
    for frame, event, ref, _ in views:
        if event not in last_view or frame > last_view[event][0]:
            last_view[event] = (frame, ref)
    assert {(e, ref) for e, _, ref in events} == {(e, ref) for e, (_, ref) in last_view.items()}
    assert len({ref for _, _, ref in events}) > 1, "the refresh shows in the events too"


def test_refresh_config_is_checked():
    with pytest.raises(ValueError, match="threshold_nm must be positive"):
        RefreshConfig(0.0)
    with pytest.raises(ValueError, match="at least 1"):
        RefreshConfig(5.0, record_frames=0)

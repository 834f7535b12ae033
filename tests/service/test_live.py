"""The operator's live view: LiveView on real holograms, and the page in headless Chromium."""

from __future__ import annotations

import io
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile
from PIL import Image

from acquisition.backend import get_backend
from acquisition.io import read_hologram
from acquisition.reconstruction import ReconstructionConfig, Reconstructor
from acquisition.segmentation import FrameSegmentation, SegmentationConfig, Segmenter
from service.live import (
    ACCEPTED_RGB,
    MAX_DISPLAY_PX,
    REJECTED_RGB,
    LiveView,
    bit_depth_of,
    opd_display_shape,
)
from tests.service.conftest import headless_chromium, page_text, page_wait, start_server
from tests.service.test_api import npy

REAL_FILES = [
    "hl60_hologram_with_bg.npz",
    "single_cell_hologram.tif",
    "single_cell_hologram_meta.h5",
]


@dataclass
class RealFrame:
    name: str
    hologram: np.ndarray
    opd_nm: np.ndarray
    segmentation: FrameSegmentation

    @property
    def accepted(self) -> list[int]:
        return [c.label for c in self.segmentation.cells]


def reconstruct(path: Path, segmenter: Segmenter | None = None) -> RealFrame:
    file = read_hologram(path)
    config = ReconstructionConfig(sample_half="full", wavelength_nm=file.wavelength_nm or 632.8)
    maps = Reconstructor(config, get_backend("numpy"), file.reference).reconstruct(file.frames[0])
    segmentation = (segmenter or Segmenter()).segment(maps)[0]
    return RealFrame(path.name, file.frames[0], maps.opd_nm[0], segmentation)


@pytest.fixture(scope="module")
def real_frames(real_dir) -> dict[str, RealFrame]:
    return {name: reconstruct(real_dir / name) for name in REAL_FILES}


def feed(
    view: LiveView, frame: RealFrame, frame_id: int = 7, accepted: list[int] | None = None
) -> None:
    view.frame(
        frame_id,
        time.time(),
        frame.hologram,
        frame.opd_nm,
        frame.segmentation.labels,
        frame.accepted if accepted is None else accepted,
        8,
        "camera",
    )


def decode(png: bytes | None) -> Image.Image:
    assert png is not None
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def upscaled_mask(labels: np.ndarray, number: int, factor: int) -> np.ndarray:
    return np.kron(labels == number, np.ones((factor, factor), dtype=bool)).astype(bool)


def colour_fraction(rgb: np.ndarray, where: np.ndarray, colour: tuple[int, int, int]) -> float:
    return float(np.all(rgb[where] == colour, axis=-1).mean())


# -- LiveView on real holograms -----------------------------------------------------------


def test_nothing_before_the_first_frame():
    view = LiveView()
    assert view.hologram_png() is None
    assert view.opd_png() is None
    assert view.crop_png(1) is None
    state = view.snapshot()
    assert state["frame"] is None
    assert state["sequence"] == 0
    assert state["crops"] == []


@pytest.mark.parametrize("name", REAL_FILES)
def test_opd_png_outlines_the_accepted_cell_on_its_boundary(real_frames, name):
    frame = real_frames[name]
    assert len(frame.accepted) == 1, "each real hologram holds one cell"
    view = LiveView()
    feed(view, frame)
    image = decode(view.opd_png())
    assert image.mode == "P"
    h, w = frame.opd_nm.shape
    assert (image.height, image.width) == opd_display_shape((h, w))
    assert max(image.size) <= MAX_DISPLAY_PX
    factor = image.width // w
    assert factor >= 2, "these small maps are enlarged for the page"
    assert image.height == h * factor

    rgb = np.asarray(image.convert("RGB"))
    cell = upscaled_mask(frame.segmentation.labels, frame.accepted[0], factor)
    boundary = cell & ~ndi.binary_erosion(cell)
    assert boundary.sum() > 50
    assert colour_fraction(rgb, boundary, ACCEPTED_RGB) == 1.0
    # The outline is drawn on the cell's own pixels and leaves its inside and the
    # background to the colour map.
    inside = ndi.binary_erosion(cell, iterations=3)
    outlined = np.all(rgb == ACCEPTED_RGB, axis=-1) | np.all(rgb == REJECTED_RGB, axis=-1)
    assert inside.sum() > 100
    assert not outlined[inside].any()
    assert not outlined[~cell].any()
    # Brighter where the cell is thicker: the colour map runs dark to bright.
    brightness = rgb.astype(float).sum(axis=-1)
    background = ~ndi.binary_dilation(cell, iterations=4)
    assert brightness[inside].mean() > 2 * brightness[background].mean()


def test_rejected_objects_are_outlined_in_their_own_colour(real_dir):
    # Too small for this configuration: the cell is found, then rejected.
    strict = Segmenter(SegmentationConfig(min_area_um2=5000, max_area_um2=9000))
    frame = reconstruct(real_dir / "hl60_hologram_with_bg.npz", strict)
    assert frame.accepted == []
    assert frame.segmentation.rejected == {"too_small": 1}
    view = LiveView()
    feed(view, frame)
    image = decode(view.opd_png())
    rgb = np.asarray(image.convert("RGB"))
    factor = image.width // frame.opd_nm.shape[1]
    rejected = upscaled_mask(frame.segmentation.labels, 1, factor)
    boundary = rejected & ~ndi.binary_erosion(rejected)
    assert colour_fraction(rgb, boundary, REJECTED_RGB) == 1.0
    assert not np.all(rgb == ACCEPTED_RGB, axis=-1).any()
    frame_state = view.snapshot()["frame"]
    assert (frame_state["accepted"], frame_state["rejected"]) == (0, 1)


def test_hologram_png_sizes_and_grey_levels(real_frames):
    frame = real_frames["hl60_hologram_with_bg.npz"]
    view = LiveView(display_interval_s=0)
    feed(view, frame)
    small = decode(view.hologram_png())
    assert small.mode == "L"
    # Small holograms are shown as they are, count for count.
    np.testing.assert_array_equal(np.asarray(small), frame.hologram)

    camera = np.tile(frame.hologram, (6, 7))[:1024, :1280]  # an acA1300's 1024 x 1280
    view.frame(8, time.time(), camera, frame.opd_nm, frame.segmentation.labels, [1], 8, "camera")
    big = decode(view.hologram_png())
    assert big.size == (640, 512)
    assert abs(float(np.asarray(big).mean()) - float(camera.mean())) < 1.0

    twelve_bit = (camera.astype(np.uint16) << 4) | 0xF  # Mono12 counts, full scale 4095
    assert bit_depth_of(twelve_bit) == 12
    labels = frame.segmentation.labels
    view.frame(9, time.time(), twelve_bit, frame.opd_nm, labels, [1], 12, "camera")
    np.testing.assert_allclose(np.asarray(decode(view.hologram_png())), np.asarray(big), atol=1)

    as_float = frame.hologram.astype(np.float32) * 0.01 + 3
    assert bit_depth_of(as_float) == 0
    view.frame(-1, time.time(), as_float, frame.opd_nm, labels, [1], 0, "api")
    grey = np.asarray(decode(view.hologram_png()))
    assert (grey.min(), grey.max()) == (0, 255), "floats are stretched over their range"


def test_snapshot_describes_the_frame(real_frames):
    frame = real_frames["single_cell_hologram_meta.h5"]
    view = LiveView()
    feed(view, frame, frame_id=42)
    state = view.snapshot()
    f = state["frame"]
    assert state["sequence"] == state["frames_received"] == 1
    assert f["frame_id"] == 42
    assert f["source"] == "camera"
    assert f["shape"] == list(frame.hologram.shape)
    assert f["opd_shape"] == list(frame.opd_nm.shape)
    assert (f["accepted"], f["rejected"]) == (1, 0)
    lo, hi = f["opd_range_nm"]
    peak = float(frame.opd_nm.max())
    assert lo < 0.1 * peak < 0.7 * peak < hi <= peak, "robust: from background to near the peak"
    assert 0 <= f["age_s"] < 5
    assert state["frame_rate_hz"] > 0
    assert state["colours"]["accepted"] == "#00ff00"


def test_renderings_are_cached_per_frame(real_frames):
    view = LiveView(display_interval_s=0)
    feed(view, real_frames["single_cell_hologram.tif"])
    assert view.opd_png() is view.opd_png()
    assert view.hologram_png() is view.hologram_png()
    before = view.opd_png()
    feed(view, real_frames["single_cell_hologram.tif"], frame_id=8)
    assert view.opd_png() is not before


def test_displayed_frame_is_held_and_a_page_gets_the_frame_it_was_told(real_frames):
    a, b = real_frames["hl60_hologram_with_bg.npz"], real_frames["single_cell_hologram.tif"]
    view = LiveView(display_interval_s=30)
    feed(view, a, frame_id=1)
    assert view.snapshot()["frame"]["frame_id"] == 1
    feed(view, b, frame_id=2)
    # Frames arriving faster than the display interval do not replace the one shown...
    state = view.snapshot()
    assert state["frame"]["frame_id"] == 1
    assert state["frames_received"] == 2
    assert decode(view.opd_png()).size == decode(view.opd_png(state["sequence"])).size
    # ... until it has been shown long enough; the previous one stays reachable.
    view.display_interval_s = 0
    state = view.snapshot()
    assert state["frame"]["frame_id"] == 2
    old = opd_display_shape(a.opd_nm.shape)
    new = opd_display_shape(b.opd_nm.shape)
    assert old != new
    assert decode(view.opd_png(1)).size[::-1] == old
    assert decode(view.opd_png(2)).size[::-1] == new
    assert decode(view.opd_png(12345)).size[::-1] == new, "unknown sequence: the latest"


def test_tracked_cells_paths_are_fractions_of_the_opd_image(real_frames):
    frame = real_frames["hl60_hologram_with_bg.npz"]
    h, w = frame.opd_nm.shape
    view = LiveView(display_interval_s=0)
    tracks = [(12, [(0.0, 0.0), (h / 2, w / 4)]), (None, [(h, w)])]
    view.frame(
        3,
        time.time(),
        frame.hologram,
        frame.opd_nm,
        frame.segmentation.labels,
        [1],
        8,
        "camera",
        tracks,
    )
    assert view.snapshot()["frame"]["tracks"] == [
        {"event_id": 12, "path": [[0.0, 0.0], [0.25, 0.5]]},
        {"event_id": None, "path": [[1.0, 1.0]]},
    ]


def test_crops_a_page_was_told_of_stay_fetchable(real_frames):
    """At hundreds of cells a second the ring buffer turns over between a page's
    /live/state and its crop requests: the crops named stay until replaced twice."""
    crop = real_frames["hl60_hologram_with_bg.npz"].segmentation.cells[0].crop_nm
    batch = np.stack([crop] * 4)
    probs = [{"sw480": 0.5, "sw620": 0.5}] * 4
    view = LiveView(max_crops=4, display_interval_s=0.3)
    view.results(1, batch, [1, 2, 3, 4], ["sw480"] * 4, probs)
    named = [c["result_id"] for c in view.snapshot()["crops"]]
    assert named == [4, 3, 2, 1]
    view.results(2, batch, [5, 6, 7, 8], ["sw480"] * 4, probs)  # the buffer turned over
    assert all(view.crop_png(i) is not None for i in named), "still fetchable"
    assert [c["result_id"] for c in view.snapshot()["crops"]] == named, "held"
    time.sleep(0.35)
    state = view.snapshot()
    assert [c["result_id"] for c in state["crops"]] == [8, 7, 6, 5]
    assert all(view.crop_png(i) is not None for i in named), "the selection before"
    view.results(3, batch, [9, 10, 11, 12], ["sw480"] * 4, probs)
    time.sleep(0.35)
    assert [c["result_id"] for c in view.snapshot()["crops"]] == [12, 11, 10, 9]
    assert view.crop_png(1) is None, "replaced twice: gone"
    assert view.crop_png(5) is not None


def test_crops_ring_buffer(real_frames):
    crop = real_frames["hl60_hologram_with_bg.npz"].segmentation.cells[0].crop_nm
    batch = np.stack([crop * (1 + i / 10) for i in range(4)])
    view = LiveView(max_crops=5, display_interval_s=0)  # every snapshot the latest
    probs = [{"sw480": 0.25, "sw620": 0.75}] * 4
    view.results(1, batch, [10, 11, 12, 13], ["sw620"] * 4, probs)
    view.results(2, batch[:3], [14, 15, 16], ["sw480", "sw620", "sw480"], probs[:3], [7, 8, 9])
    state = view.snapshot()
    assert [c["result_id"] for c in state["crops"]] == [16, 15, 14, 13, 12]
    assert state["crops"][0] == {
        "result_id": 16,
        "frame_id": 2,
        "label": "sw480",
        "probabilities": {"sw480": 0.25, "sw620": 0.75},
        "peak_opd_nm": pytest.approx(float(batch[2].max())),
        "event_id": 9,
        "qc": {},
        "uncertain": None,
    }
    assert state["crops"][-1]["event_id"] is None, "crops without an event (posted ones)"
    assert state["crops_sequence"] == 1, "one selection of crops shown so far"
    image = decode(view.crop_png(16))
    assert (image.size, image.mode) == ((128, 128), "P")
    assert view.crop_png(11) is None, "evicted"
    assert view.crop_png(16) is view.crop_png(16)
    # A batch larger than the buffer keeps its last crops.
    many = np.repeat(batch[:1], 7, axis=0)
    view.results(3, many, list(range(20, 27)), ["sw480"] * 7, [probs[0]] * 7)
    assert [c["result_id"] for c in view.snapshot()["crops"]] == [26, 25, 24, 23, 22]
    with pytest.raises(ValueError, match="same N crops"):
        view.results(4, batch, [1, 2], ["a", "b"], probs[:2])


def test_a_fixed_opd_scale_colours_every_image_alike(real_frames):
    """With a fixed scale the same OPD is the same colour in the map and in every crop,
    whatever each one's own peak; the page is told the scale and each crop's QC."""
    frame = real_frames["hl60_hologram_with_bg.npz"]
    cell = frame.segmentation.cells[0]
    view = LiveView(display_interval_s=0, opd_range_nm=(0.0, 800.0))
    feed(view, frame)
    crops = np.stack([cell.crop_nm, cell.crop_nm * 0.5])
    probs = [{"sw480": 0.5, "sw620": 0.5}] * 2
    view.results(
        7,
        crops,
        [1, 2],
        ["sw480"] * 2,
        probs,
        qc=[cell.qc, {"clipped": True}],
        uncertain=[True, False],
    )
    state = view.snapshot()
    assert state["opd_scale"] == "fixed"
    assert state["crop_opd_range_nm"] == [0.0, 800.0]
    assert state["frame"]["opd_range_nm"] == [0.0, 800.0]
    by_id = {c["result_id"]: c for c in state["crops"]}
    assert by_id[1]["qc"]["area_um2"] == pytest.approx(cell.qc["area_um2"])
    assert by_id[2]["qc"] == {"clipped": True}
    assert (by_id[1]["uncertain"], by_id[2]["uncertain"]) == (True, False)
    full, half = (np.asarray(decode(view.crop_png(i))) for i in (1, 2))
    # Half the OPD, half the colour level: the level is OPD / 800 nm of the map's 254.
    peak = np.unravel_index(np.argmax(cell.crop_nm), cell.crop_nm.shape)
    assert abs(int(full[peak]) - round(cell.crop_nm[peak] / 800 * 253)) <= 1
    assert abs(int(half[peak]) - round(cell.crop_nm[peak] / 2 / 800 * 253)) <= 1
    auto = LiveView(display_interval_s=0)
    auto.results(7, crops, [1, 2], ["sw480"] * 2, probs)
    assert auto.snapshot()["opd_scale"] == "auto"
    own = (np.asarray(decode(auto.crop_png(i))) for i in (1, 2))
    assert all(int(image[peak]) == 253 for image in own), "auto: each crop to its own peak"
    with pytest.raises(ValueError, match="opd_range_nm"):
        LiveView(opd_range_nm=(10.0, 10.0))


def test_bad_frames_are_refused():
    view = LiveView()
    opd = np.zeros((10, 10), np.float32)
    with pytest.raises(ValueError, match="2-D"):
        view.frame(1, 0.0, np.zeros((2, 8, 8), np.uint8), opd, np.zeros((10, 10), int), [], 8, "x")
    with pytest.raises(ValueError, match="same 2-D shape"):
        view.frame(1, 0.0, np.zeros((8, 8), np.uint8), opd, np.zeros((9, 10), int), [], 8, "x")
    with pytest.raises(ValueError, match="max_crops"):
        LiveView(max_crops=0)


def test_handing_over_a_frame_keeps_it_and_renders_nothing(real_frames):
    """``frame()`` runs in the camera loop's workers: it keeps the arrays by reference
    and renders nothing; a frame is rendered once, when a page asks for it (what
    that costs is measured by ``bench/live.py``, not asserted here)."""
    frame = real_frames["hl60_hologram_with_bg.npz"]
    view = LiveView(display_interval_s=0)
    for i in range(2000):
        feed(view, frame, frame_id=i)
    latest = view._latest
    assert latest is not None
    assert latest.frame_id == 1999
    assert latest.hologram is frame.hologram
    assert latest.opd_nm is frame.opd_nm
    assert latest.labels is frame.segmentation.labels
    assert latest.cache == {}, "nothing is rendered until a page asks"
    png = view.hologram_png()
    assert png is not None
    assert latest.cache, "the rendering is kept for the next viewer"
    assert view.hologram_png() is png


def test_concurrent_frames_results_and_renderings(real_frames):
    frames = list(real_frames.values())
    view = LiveView(max_crops=6, display_interval_s=0)
    hologram_sizes = {f.hologram.shape[::-1] for f in frames}
    opd_sizes = {opd_display_shape(f.opd_nm.shape)[::-1] for f in frames}
    shapes = {(tuple(f.hologram.shape), tuple(f.opd_nm.shape)) for f in frames}
    crop = frames[0].segmentation.cells[0].crop_nm[None]
    errors: list[BaseException] = []
    stop = threading.Event()
    ids = iter(range(1, 10**9))
    id_lock = threading.Lock()

    def guarded(work):
        def run() -> None:
            try:
                while not stop.is_set():
                    work()
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        return run

    def camera(offset: int):
        counter = iter(range(offset, 10**9, 2))

        def work() -> None:
            i = next(counter)
            feed(view, frames[i % len(frames)], frame_id=i)
            if i % 5 == 0:
                with id_lock:
                    rid = next(ids)
                view.results(i, crop, [rid], ["sw480"], [{"sw480": 1.0}])
            time.sleep(0.0005)  # a fast camera, several times the 100 frames/s of the real one

        return work

    renders = {"opd": 0, "hologram": 0, "crop": 0}

    def viewer() -> None:
        state = view.snapshot()
        for c in state["crops"][:2]:
            png = view.crop_png(c["result_id"])
            if png is not None:  # it may have been evicted since
                assert decode(png).size == (128, 128)
                renders["crop"] += 1
        if state["frame"] is not None:
            f = state["frame"]
            assert (tuple(f["shape"]), tuple(f["opd_shape"])) in shapes
            assert decode(view.opd_png(state["sequence"])).size in opd_sizes
            assert decode(view.hologram_png(state["sequence"])).size in hologram_sizes
            renders["opd"] += 1
            renders["hologram"] += 1

    threads = [threading.Thread(target=guarded(camera(k))) for k in (0, 1)]
    threads += [threading.Thread(target=guarded(viewer)) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors, repr(errors[0])
    assert all(n > 5 for n in renders.values()), renders
    state = view.snapshot()
    assert state["frames_received"] > 100
    assert len(state["crops"]) == 6
    assert len({c["result_id"] for c in state["crops"]}) == 6


# -- the page, served by a real server, in headless Chromium --------------------------------


@pytest.fixture
def live_server(tmp_path, models_root):
    # The real hologram's cell lies outside the default left half: segment the full frame.
    srv = start_server(tmp_path, models_root, TOPGAN_SAMPLE_HALF="full")
    yield srv
    srv.stop()


def test_live_routes_before_and_after_a_hologram(live_server, real_dir):
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        for path in ("/live/hologram.png", "/live/opd.png"):
            answer = c.get(path)
            assert answer.status_code == 404
            assert answer.json()["detail"].startswith("no frame yet")
        missing = c.get("/live/crops/1.png")
        assert missing.status_code == 404
        assert "no crop with result id 1" in missing.json()["detail"]
        assert c.get("/live/state").json()["frame"] is None

        hologram = tifffile.imread(real_dir / "single_cell_hologram.tif")
        cells = c.post(
            "/classify/hologram",
            content=npy(hologram),
            headers={"content-type": "application/x-npy"},
        ).json()["cells"]
        assert len(cells) == 1
        state = c.get("/live/state").json()
        frame = state["frame"]
        assert (frame["frame_id"], frame["source"], frame["bit_depth"]) == (-1, "api", 8)
        assert frame["shape"] == list(hologram.shape)
        assert (frame["accepted"], frame["rejected"]) == (1, 0)
        assert [(x["result_id"], x["label"]) for x in state["crops"]] == [
            (cells[0]["id"], cells[0]["label"])
        ]
        assert state["crops"][0]["probabilities"] == pytest.approx(cells[0]["probabilities"])
        assert state["crops"][0]["uncertain"] == cells[0]["uncertain"]
        holo = c.get("/live/hologram.png", params={"seq": state["sequence"]})
        assert holo.headers["content-type"] == "image/png"
        assert decode(holo.content).size == hologram.shape[::-1]
        opd = decode(c.get("/live/opd.png").content).convert("RGB")
        assert np.all(np.asarray(opd) == ACCEPTED_RGB, axis=-1).sum() > 50
        assert decode(c.get(f"/live/crops/{cells[0]['id']}.png").content).size == (128, 128)
        page = c.get("/")
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>topgan live</title>" in page.text
        schema = c.get("/openapi.json").json()
        assert "LiveState" in schema["components"]["schemas"]
        assert "image/png" in schema["paths"]["/live/opd.png"]["get"]["responses"]["200"]["content"]


def test_page_in_chromium_shows_the_hologram_just_classified(browser_paths, live_server, real_dir):
    from selenium.webdriver.common.by import By

    hologram = tifffile.imread(real_dir / "single_cell_hologram.tif")
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        answer = c.post(
            "/classify/hologram",
            content=npy(hologram),
            headers={"content-type": "application/x-npy"},
        )
        assert answer.status_code == 200, answer.text
        cell = answer.json()["cells"][0]
        summary = c.get("/results/summary").json()

    driver = headless_chromium(browser_paths)
    try:
        driver.get(live_server.url + "/")
        wait = page_wait(driver, 10)
        loaded = "const i = document.getElementById(arguments[0]);"
        loaded += "return i.complete && i.naturalWidth"
        wait.until(lambda d: all(d.execute_script(loaded, i) for i in ("hologram", "opd")))
        assert driver.execute_script(loaded, "hologram") == hologram.shape[1]
        crop = f'.crop[data-result-id="{cell["id"]}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, crop))
        assert page_text(driver, f"{crop} .label") == cell["label"]
        loaded_crop = "const i = document.querySelector(arguments[0]);"
        loaded_crop += "return i !== null && i.complete && i.naturalWidth"
        wait.until(lambda d: d.execute_script(loaded_crop, f"{crop} img"))
        wait.until(lambda d: page_text(d, "#total-cells") == str(summary["cells"]))
        for label, count in summary["counts"].items():  # the rows are rebuilt on every poll
            assert page_text(driver, f'#counts tr[data-class="{label}"] .count') == str(count)
        assert page_text(driver, "#frame-id") == "-1"
        assert page_text(driver, "#acq-state").lower() == "disabled"
        assert page_text(driver, "#model-name") == "small 1"
        assert not driver.find_element(By.ID, "banner").is_displayed()

        # The operator sees when the service goes away.
        live_server.stop()
        wait.until(
            lambda d: (
                d.find_element(By.ID, "banner").is_displayed()
                and "unreachable" in page_text(d, "#banner")
            )
        )
    finally:
        driver.quit()


def test_api_documentation_works_without_internet(browser_paths, live_server):
    """/docs and /redoc load their scripts from the service, never from a CDN (the
    microscope's PC may have no internet; this machine reaches none)."""
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        for path in ("/docs", "/redoc"):
            page = c.get(path)
            assert page.status_code == 200
            sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
            assert sources
            assert all(s.startswith("/") for s in sources), sources
            for source in sources:
                if source.startswith("/docs-assets/"):
                    assert c.get(source).status_code == 200, source
    driver = headless_chromium(browser_paths)
    try:
        driver.get(live_server.url + "/docs")
        wait = page_wait(driver, 20)
        wait.until(lambda d: "topgan" in page_text(d, ".swagger-ui .info .title"))
        wait.until(lambda d: "/classify/hologram" in page_text(d, ".swagger-ui"))
    finally:
        driver.quit()

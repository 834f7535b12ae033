from __future__ import annotations

import io
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import tifffile

from tests.service.conftest import start_server

NPY = {"content-type": "application/x-npy"}


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def crops(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    out = np.empty((n, 128, 128), np.float32)
    for i in range(n):
        r = rng.uniform(15, 35)
        cy, cx = 64 + rng.normal(0, 3, 2)
        out[i] = (
            rng.uniform(200, 700)
            * np.clip(1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2, 0, None) ** 0.5
        )
    return out + rng.normal(0, 2, out.shape).astype(np.float32)


def direct_probabilities(model_dir, batch: np.ndarray) -> np.ndarray:
    """The ONNX file run directly, with the manifest's normalization done here by hand."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    norm = manifest["input"]["normalization"]
    lo, hi = norm["opd_min_nm"], norm["opd_max_nm"]
    x = ((np.clip(batch, lo, hi) - lo) / (hi - lo) * 2 - 1).astype(np.float32)[:, None]
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_classify_matches_onnx_runtime_directly(client, models_root):
    batch = crops(7)
    answer = client.post("/classify", content=npy(batch), headers=NPY)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == {
        "name": "small",
        "version": "1",
        "method": "cnn",
        "classes": ["sw480", "sw620"],
    }
    got = np.array(
        [[c["probabilities"]["sw480"], c["probabilities"]["sw620"]] for c in body["cells"]]
    )
    expected = direct_probabilities(models_root / "m1", batch)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [c["index"] for c in body["cells"]] == list(range(7))
    assert [c["label"] for c in body["cells"]] == [
        ["sw480", "sw620"][i] for i in expected.argmax(1)
    ]
    assert len({c["id"] for c in body["cells"]}) == 7


def test_every_media_type_gives_the_same_answer(client):
    batch = crops(3, seed=1)
    via_npy = client.post("/classify", content=npy(batch), headers=NPY).json()
    buf = io.BytesIO()
    tifffile.imwrite(buf, batch, photometric="minisblack")
    via_tiff = client.post(
        "/classify", content=buf.getvalue(), headers={"content-type": "image/tiff"}
    ).json()
    via_json = client.post("/classify", json={"opd": batch.tolist()}).json()
    single = client.post("/classify", content=npy(batch[0]), headers=NPY).json()

    def table(answer):
        return np.array(
            [[c["probabilities"]["sw480"], c["probabilities"]["sw620"]] for c in answer["cells"]]
        )

    for other in (via_tiff, via_json):
        np.testing.assert_allclose(table(other), table(via_npy), atol=1e-6)
    assert len(single["cells"]) == 1
    assert single["cells"][0]["probabilities"] == pytest.approx(
        via_npy["cells"][0]["probabilities"]
    )


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"hello", {"content-type": "text/plain"}, 415, "unsupported media type 'text/plain'"),
        (b"", NPY, 422, "body is empty"),
        (b"\x93NUMPY garbage", NPY, 422, "not a valid .npy"),
        (
            npy(np.zeros((64, 64), np.float32)),
            NPY,
            422,
            "shape (128, 128) or (N, 128, 128), got (64, 64)",
        ),
        (npy(np.zeros((2, 3, 128, 128), np.float32)), NPY, 422, "got (2, 3, 128, 128)"),
        (npy(np.zeros((0, 128, 128), np.float32)), NPY, 422, "no crops"),
        (npy(np.zeros((128, 128), complex)), NPY, 422, "dtype complex128 is not supported"),
        (npy(np.full((128, 128), np.nan, np.float32)), NPY, 422, "16384 NaN and 0 Inf"),
        (npy(np.full((128, 128), np.inf)), NPY, 422, "0 NaN and 16384 Inf"),
        (npy(np.array([{"a": 1}], dtype=object)), NPY, 422, "not a valid .npy"),
        (b"not a tiff", {"content-type": "image/tiff"}, 422, "not a valid TIFF"),
        (b"{", {"content-type": "application/json"}, 422, "not valid JSON"),
        (b'{"x": 1}', {"content-type": "application/json"}, 422, '{"opd": nested lists'),
        (b'{"opd": [[1, 2], [3]]}', {"content-type": "application/json"}, 422, "equal lengths"),
        (b'{"opd": "abc"}', {"content-type": "application/json"}, 422, "nested lists of numbers"),
    ],
)
def test_bad_input_answers_4xx_with_the_reason(client, body, headers, status, message):
    answer = client.post("/classify", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]


def test_limits_answer_413(tmp_path, models_root):
    srv = start_server(
        tmp_path, models_root, TOPGAN_MAX_BODY_BYTES="200000", TOPGAN_MAX_CROPS_PER_REQUEST="2"
    )
    try:
        import httpx

        with httpx.Client(base_url=srv.url) as c:
            big = c.post("/classify", content=npy(crops(4)), headers=NPY)
            assert big.status_code == 413
            assert "exceeds the limit of 200000" in big.json()["detail"]
            many = c.post("/classify", content=npy(crops(3).astype(np.float16)), headers=NPY)
            assert many.status_code == 413
            assert "3 crops in one request; the limit is 2" in many.json()["detail"]
            assert c.post("/classify", content=npy(crops(2)), headers=NPY).status_code == 200
    finally:
        srv.stop()


def test_api_key_guards_every_post(tmp_path, models_root):
    import httpx

    srv = start_server(tmp_path, models_root, TOPGAN_API_KEY="s3cret")
    try:
        with httpx.Client(base_url=srv.url) as c:
            for path in ("/classify", "/classify/hologram", "/model/reload", "/acquisition/start"):
                answer = c.post(path, content=b"x", headers=NPY)
                assert answer.status_code == 401, path
                assert "X-API-Key" in answer.json()["detail"]
            assert (
                c.post(
                    "/classify", content=npy(crops(1)), headers={**NPY, "X-API-Key": "wrong"}
                ).status_code
                == 401
            )
            assert (
                c.post(
                    "/classify", content=npy(crops(1)), headers={**NPY, "X-API-Key": "s3cret"}
                ).status_code
                == 200
            )
            assert c.get("/results").status_code == 200
    finally:
        srv.stop()


def test_results_pages_and_summary(client):
    first = client.post("/classify", content=npy(crops(5, seed=3)), headers=NPY).json()
    ids = [c["id"] for c in first["cells"]]
    page = client.get("/results", params={"after_id": ids[0] - 1, "limit": 3}).json()
    assert [r["id"] for r in page["results"]] == ids[:3]
    assert page["next_after_id"] == ids[2]
    rest = client.get("/results", params={"after_id": page["next_after_id"], "limit": 2}).json()
    assert [r["id"] for r in rest["results"]] == ids[3:]
    row = rest["results"][0]
    assert row["source"] == "api"
    assert row["model_version"] == "1"
    assert row["label"] in ("sw480", "sw620")
    assert row["latency_s"] > 0
    summary = client.get("/results/summary").json()
    assert summary["cells"] >= 5
    assert sum(summary["counts"].values()) == summary["cells"]
    assert client.get("/results", params={"limit": 0}).status_code == 422
    assert "limit" in client.get("/results", params={"limit": "x"}).json()["detail"]


def test_metrics_count_cells_and_requests(client):
    before = client.get("/metrics").text
    client.post("/classify", content=npy(crops(4, seed=9)), headers=NPY)
    text = client.get("/metrics").text

    def total(metrics: str, prefix: str) -> float:
        return sum(
            float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix)
        )

    assert total(text, "topgan_cells_total{") - total(before, "topgan_cells_total{") == 4
    assert 'topgan_http_requests_total{route="/classify",status="200"}' in text
    assert 'topgan_model_info{method="cnn",name="small"' in text
    assert "topgan_stage_seconds_bucket" in text
    assert "topgan_cell_latency_seconds_count" in text


def test_health_ready_model_acquisition(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] is True
    assert ready["model"]["name"] == "small"
    model = client.get("/model").json()
    assert model["manifest"]["version"] == "1"
    assert model["providers"] == ["CPUExecutionProvider"]
    assert client.get("/acquisition").json()["state"] == "disabled"
    assert client.post("/acquisition/start").status_code == 409


def test_reload_is_atomic(tmp_path, models_root):
    import httpx

    root = tmp_path / "models"
    shutil.copytree(models_root, root)
    shutil.copytree(root / "m1", root / "corrupt")
    (root / "corrupt" / "model.onnx").write_bytes(b"not onnx")
    shutil.copytree(root / "m1", root / "tampered")
    with (root / "tampered" / "model.onnx").open("ab") as f:
        f.write(b"\0")
    bad_onnx = root / "bad-onnx"
    bad_onnx.mkdir()
    (bad_onnx / "model.onnx").write_bytes(b"junk")
    manifest = json.loads((root / "m1" / "manifest.json").read_text())
    import hashlib

    manifest["onnx_sha256"] = hashlib.sha256(b"junk").hexdigest()
    (bad_onnx / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "outside").mkdir()
    srv = start_server(tmp_path, root)
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            cases = [
                ("missing", 404, "does not exist"),
                ("../outside", 403, "outside the models root"),
                (str(tmp_path / "outside"), 403, "outside the models root"),
                ("tampered", 422, "does not match its manifest"),
                ("corrupt", 422, "does not match its manifest"),
                ("bad-onnx", 422, "cannot be loaded by ONNX Runtime"),
            ]
            for path, status, message in cases:
                answer = c.post("/model/reload", json={"path": path})
                assert answer.status_code == status, (path, answer.text)
                assert message in answer.json()["detail"]
                assert c.get("/model").json()["manifest"]["version"] == "1", (
                    "the old model keeps serving"
                )
                assert c.post("/classify", content=npy(crops(1)), headers=NPY).status_code == 200
            ok = c.post("/model/reload", json={"path": "m2"})
            assert ok.status_code == 200
            assert ok.json()["manifest"]["version"] == "2"
            answer = c.post("/classify", content=npy(crops(2)), headers=NPY).json()
            assert answer["model"]["version"] == "2"
            np.testing.assert_allclose(
                [
                    [cell["probabilities"]["sw480"], cell["probabilities"]["sw620"]]
                    for cell in answer["cells"]
                ],
                direct_probabilities(root / "m2", crops(2)),
                atol=1e-6,
            )
            assert 'version="2"' in c.get("/metrics").text
    finally:
        srv.stop()


def test_hologram_route_classifies_each_cell(client, real_dir):
    hologram = tifffile.imread(real_dir / "single_cell_hologram.tif")
    # The service's default sample half is the left one; this ordinary hologram's cell
    # is not in it: no cell, and no error.
    empty = client.post("/classify/hologram", content=npy(hologram), headers=NPY)
    assert empty.status_code == 200
    assert empty.json()["cells"] == []
    assert empty.json()["optics"]["sample_half"] == "left", "the answer says how it looked"
    # Its own optics, given with the request: the whole frame holds the cell.
    found = client.post(
        "/classify/hologram",
        params={"sample_half": "full", "pixel_size_um": 0.12, "wavelength_nm": 632.8},
        content=npy(hologram),
        headers=NPY,
    )
    assert found.status_code == 200, found.text
    assert len(found.json()["cells"]) == 1
    optics = found.json()["optics"]
    assert (optics["sample_half"], optics["reference"]) == ("full", False)
    carrier = optics["carrier"]
    again = client.post(
        "/classify/hologram",
        params={"sample_half": "full", "carrier": f"{carrier[0]},{carrier[1]}"},
        content=npy(hologram),
        headers=NPY,
    )
    assert again.json()["optics"]["carrier"] == pytest.approx(carrier)
    assert again.json()["cells"][0]["probabilities"] == pytest.approx(
        found.json()["cells"][0]["probabilities"], abs=1e-6
    )
    for bad in (
        {"carrier": "0.2"},
        {"carrier": "0.7,0.1"},
        {"sample_half": "middle"},
        {"pixel_size_um": -1},
    ):
        refused = client.post("/classify/hologram", params=bad, content=npy(hologram), headers=NPY)
        assert refused.status_code == 422, bad
        assert refused.json()["detail"], bad
    flat = client.post(
        "/classify/hologram", content=npy(np.full((256, 256), 9, np.uint8)), headers=NPY
    )
    assert flat.status_code == 422
    assert "no sideband" in flat.json()["detail"]
    line = client.post("/classify/hologram", content=npy(np.zeros(64)), headers=NPY)
    assert line.status_code == 422
    assert "2-D" in line.json()["detail"]


def test_hologram_route_finds_simulated_cells(tmp_path, models_root):
    import httpx

    from acquisition.simulator.scene import FlowSimulator, SceneConfig

    scene = SceneConfig(
        shape=(512, 640),
        cells_per_frame=3,
        touching_probability=0,
        clipped_probability=0,
        debris_per_frame=0,
    )
    sim = FlowSimulator(scene, ["sw480"], seed=4)
    tifffile.imwrite(tmp_path / "reference.tif", sim.reference)
    frame = sim.frame(0)
    srv = start_server(tmp_path, models_root, TOPGAN_REFERENCE=str(tmp_path / "reference.tif"))
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            answer = c.post("/classify/hologram", content=npy(frame.hologram), headers=NPY)
            assert answer.status_code == 200, answer.text
            cells = answer.json()["cells"]
            truth = [o for o in frame.objects if o.kind == "cell"]
            assert len(cells) == len(truth) > 0
            for obj in truth:
                assert (
                    min(
                        np.hypot(c["position_px"][0] - obj.y_px, c["position_px"][1] - obj.x_px)
                        for c in cells
                    )
                    < 3
                )
            assert all(c["qc"]["area_um2"] > 20 for c in cells)
            stored = c.get("/results").json()["results"]
            assert {r["id"] for r in stored} >= {cell["id"] for cell in cells}
            assert stored[-1]["y_px"] is not None
    finally:
        srv.stop()


def test_results_survive_a_restart(tmp_path, models_root):
    import httpx

    srv = start_server(tmp_path, models_root)
    with httpx.Client(base_url=srv.url) as c:
        ids = [
            cell["id"]
            for cell in c.post("/classify", content=npy(crops(6)), headers=NPY).json()["cells"]
        ]
    # uvicorn shuts down gracefully on SIGTERM, then exits by that signal.
    assert srv.stop() in (0, -15)
    assert "Finished server process" in srv.log.read_text()
    again = start_server(tmp_path, models_root, db=srv.db)
    try:
        with httpx.Client(base_url=again.url) as c:
            stored = [r["id"] for r in c.get("/results", params={"limit": 1000}).json()["results"]]
            assert set(ids) <= set(stored)
            new = c.post("/classify", content=npy(crops(1)), headers=NPY).json()["cells"][0]["id"]
            assert new > max(ids)
    finally:
        again.stop()


def test_no_model_means_503_and_not_ready(tmp_path, models_root):
    import httpx

    srv = start_server(tmp_path, models_root, model=None, TOPGAN_MODEL_DIR=str(tmp_path / "none"))
    try:
        with httpx.Client(base_url=srv.url) as c:
            ready = c.get("/ready")
            assert ready.status_code == 503
            assert "no model loaded" in ready.json()["reasons"][0]
            answer = c.post("/classify", content=npy(crops(1)), headers=NPY)
            assert answer.status_code == 503
            assert "no model is loaded" in answer.json()["detail"]
            assert c.post("/model/reload", json={"path": "m1"}).status_code == 200
            assert c.get("/ready").status_code == 200
    finally:
        srv.stop()


def test_npy_layouts_and_truncation(client):
    batch = crops(2, seed=5)
    reference = client.post("/classify", content=npy(batch), headers=NPY).json()["cells"]
    for variant in (np.asfortranarray(batch), batch.astype(">f8"), batch.astype(np.float16)):
        cells = client.post("/classify", content=npy(variant), headers=NPY).json()["cells"]
        for got, want in zip(cells, reference, strict=True):
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-3)
    truncated = client.post("/classify", content=npy(batch)[:-10], headers=NPY)
    assert truncated.status_code == 422
    assert "the body holds" in truncated.json()["detail"]


def test_hologram_route_says_why_objects_were_rejected(tmp_path, rejecting_scene):
    from service.app import create_app
    from service.services import Services
    from service.settings import DEFAULT_MODEL, Settings
    from tests.service.conftest import in_process

    np.save(tmp_path / "reference.npy", rejecting_scene.reference)
    settings = Settings(
        camera="none",
        reference=str(tmp_path / "reference.npy"),
        array_backend="numpy",
        database_url=f"sqlite:///{tmp_path}/results.sqlite",
        model_dir=DEFAULT_MODEL,
        execution_provider="cpu",
    )
    services = Services.start(settings)
    try:
        app = create_app(settings)
        app.state.services = services  # the lifespan would start services of its own
        with in_process(app) as client:
            crowded, alone = (
                client.post("/classify/hologram", content=npy(frame), headers=NPY)
                for frame in rejecting_scene.holograms
            )
            assert crowded.status_code == 200, crowded.text
            assert crowded.json()["rejected"] == {"touching": 1, "clipped": 1}
            assert len(crowded.json()["cells"]) == 1
            assert alone.json()["rejected"] == {}
            assert len(alone.json()["cells"]) == 1
            # No cell at all still says why: the pair alone, cut out of the frame.
            pair = rejecting_scene.holograms[0].copy()
            pair[300:, :] = rejecting_scene.reference[300:, :]
            empty = client.post("/classify/hologram", content=npy(pair), headers=NPY)
            assert empty.status_code == 200, empty.text
            assert empty.json()["cells"] == []
            assert empty.json()["rejected"] == {"touching": 1}
            schema = client.get("/openapi.json").json()["components"]["schemas"]
            assert "rejected" in schema["HologramClassifyResponse"]["properties"]
    finally:
        services.close()


def test_posted_crops_pass_the_camera_qc_or_are_not_counted(client):
    """An all-zero crop (no cell) and a cell cut by the crop's edge are classified but
    neither stored nor counted, and say why; ?qc=false takes every crop as a cell."""
    cell = crops(1, seed=3)[0]
    cut = np.roll(cell, 64, axis=1)  # the disc split across the crop's left and right edges
    batch = np.stack([cell, np.zeros_like(cell), cut])
    before = client.get("/results/summary").json()["cells"]
    body = client.post("/classify", content=npy(batch), headers=NPY).json()
    first, empty, clipped = body["cells"]
    assert first["rejected"] is None
    assert first["id"] is not None
    assert first["qc"]["area_um2"] > 20
    assert first["qc"]["amplitude_std"] is None, "a crop holds no amplitude"
    assert (empty["rejected"], empty["id"], empty["qc"]) == ("empty", None, {})
    assert empty["label"] in ("sw480", "sw620"), "still classified, for whoever asks"
    assert (clipped["rejected"], clipped["id"]) == ("clipped", None)
    assert client.get("/results/summary").json()["cells"] == before + 1
    stored = client.get("/results", params={"order": "desc", "limit": 1}).json()["results"][0]
    assert stored["id"] == first["id"]

    taken = client.post("/classify", params={"qc": "false"}, content=npy(batch), headers=NPY)
    assert all(c["id"] is not None and c["rejected"] is None for c in taken.json()["cells"])
    assert client.get("/results/summary").json()["cells"] == before + 4

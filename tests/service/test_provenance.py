"""Every result records the reference it was reconstructed against and the pipeline it
ran with: a replayed camera run through the routes of a real uvicorn server, a model
reload, posted holograms and crops, a restart, the ``.rtdc`` export; and a database
from before the ids, migrated on start."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from typing import Any

import httpx
import pytest
import tifffile

from acquisition.commandline import run_command
from service.app import create_app
from service.cli import build_parser
from service.export_rtdc import COMMAND as EXPORT
from service.loop.reference import reference_id
from service.pipelines import canonical_json
from service.services import Services
from service.store import EventRow, PipelineRow, ResultRow, ResultStore
from tests.service.conftest import (
    emulator_replay_folder,
    in_process,
    replay_settings,
    wait_until_replayed,
)
from tests.service.test_api import NPY, crops, npy

dclab = pytest.importorskip("dclab")

FRAMES = 6


def _all(client: httpx.Client, route: str, key: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        answer = client.get(route, params={"after_id": after, "limit": 1000, **params})
        assert answer.status_code == 200, answer.text
        page = answer.json()[key]
        if not page:
            return rows
        rows += page
        after = page[-1]["id"]


def _replay(client: httpx.Client, services: Services) -> dict[str, Any]:
    """Replay the folder (again) and wait until it has stopped: /acquisition then."""
    assert client.post("/acquisition/start").status_code == 200
    wait_until_replayed(services, timeout=180)
    status: dict[str, Any] = client.get("/acquisition").json()
    return status


def _resolves(client: httpx.Client, pipeline_id: str) -> dict[str, Any]:
    """The stored description of ``pipeline_id``, checked to hash to it."""
    answer = client.get(f"/pipelines/{pipeline_id}")
    assert answer.status_code == 200, answer.text
    stored = answer.json()
    assert stored["id"] == pipeline_id
    digest = hashlib.sha256(canonical_json(stored["description"]).encode()).hexdigest()
    assert digest[:16] == pipeline_id, "the id is the hash of what GET /pipelines gives back"
    description: dict[str, Any] = stored["description"]
    return description


def export(*argv: str) -> int:
    args = build_parser([EXPORT]).parse_args(["export", *argv])
    return run_command(args.run, args, args.command_prog)


def test_results_record_the_reference_and_the_pipeline_they_ran_with(tmp_path, models_root, caplog):
    caplog.set_level(logging.INFO, logger="service")
    folder = emulator_replay_folder(tmp_path, FRAMES)
    settings = replay_settings(
        folder,
        tmp_path,
        model_dir=models_root / "m1",
        models_root=models_root,
        min_confidence=0.6,
    )
    services = Services.start(settings)
    app = create_app(settings)
    app.state.services = services  # the lifespan would start services of its own
    try:
        with in_process(app) as client:
            wait_until_replayed(services, timeout=180)
            first = client.get("/acquisition").json()
            expected_reference = reference_id(tifffile.imread(folder / "reference.tiff"))
            assert first["reference_id"] == expected_reference
            assert first["pipeline_id"] is not None
            views = _all(client, "/results", "results")
            events = _all(client, "/events", "events")
            assert views
            assert events
            assert {(v["reference_id"], v["pipeline_id"]) for v in views} == {
                (first["reference_id"], first["pipeline_id"])
            }
            assert {(e["reference_id"], e["pipeline_id"]) for e in events} == {
                (first["reference_id"], first["pipeline_id"])
            }

            served = client.get("/model").json()["manifest"]
            described = _resolves(client, first["pipeline_id"])
            assert described["model"]["onnx_sha256"] == served["onnx_sha256"]
            assert described["model"]["version"] == "1"
            assert described["camera"] == {
                "kind": "replay",
                "pixel_format": "Mono8",
                "roi": None,
                "exposure_us": settings.exposure_us,
                "frame_rate_hz": None,  # frame_rate_hz 0: as fast as it goes
                "trigger": "free",
            }
            assert described["reconstruction"]["wavelength_nm"] == settings.wavelength_nm
            assert described["segmentation"]["crop_size"] == 128  # the model's crops
            assert described["tracking"]["max_missed_frames"] == settings.track_max_missed_frames
            assert described["min_confidence"] == 0.6

            # a reload changes the pipeline of /acquisition and of every new row
            reload = client.post("/model/reload", json={"path": "m2"})
            assert reload.status_code == 200, reload.text
            after_reload = client.get("/acquisition").json()
            assert after_reload["pipeline_id"] not in (None, first["pipeline_id"])
            second = _replay(client, services)
            assert second["pipeline_id"] == after_reload["pipeline_id"]
            assert second["reference_id"] == expected_reference
            new_views = _all(client, "/results", "results", pipeline_id=second["pipeline_id"])
            assert len(new_views) == len(views), "the same frames, the same cells, once more"
            assert min(v["id"] for v in new_views) > max(v["id"] for v in views)
            assert _all(client, "/results", "results", pipeline_id=first["pipeline_id"]) == views
            assert _all(client, "/results", "results", reference_id=expected_reference) == (
                views + new_views
            )
            assert _all(client, "/results", "results", reference_id="0" * 16) == []
            new_events = _all(client, "/events", "events", pipeline_id=second["pipeline_id"])
            assert new_events
            assert {e["reference_id"] for e in new_events} == {expected_reference}
            reloaded = _resolves(client, second["pipeline_id"])
            m2 = client.get("/model").json()["manifest"]
            assert reloaded["model"]["onnx_sha256"] == m2["onnx_sha256"] != served["onnx_sha256"]
            assert {k: v for k, v in reloaded.items() if k != "model"} == {
                k: v for k, v in described.items() if k != "model"
            }, "only the model changed"

            # a posted hologram: the loop's reference, a pipeline without camera and
            # tracking; with optics of its own, no reference and another pipeline
            frame = npy(tifffile.imread(sorted(folder.glob("frame_*.tif"))[0]))
            posted = client.post("/classify/hologram", content=frame, headers=NPY).json()
            assert posted["cells"], posted
            assert posted["reference_id"] == expected_reference
            hologram = _resolves(client, posted["pipeline_id"])
            assert (hologram["camera"], hologram["tracking"]) == (None, None)
            assert hologram["reconstruction"] == reloaded["reconstruction"]
            assert hologram["segmentation"] == reloaded["segmentation"]
            assert hologram["model"] == reloaded["model"]
            own = client.post(
                "/classify/hologram", content=frame, headers=NPY, params={"wavelength_nm": 650}
            ).json()
            assert own["reference_id"] is None
            assert own["pipeline_id"] not in (posted["pipeline_id"], second["pipeline_id"])
            assert _resolves(client, own["pipeline_id"])["reconstruction"]["wavelength_nm"] == 650
            # posted crops: no reference, no pipeline
            answer = client.post("/classify", content=npy(crops(2)), headers=NPY).json()
            crop_ids = [c["id"] for c in answer["cells"]]
            api = {r["id"]: r for r in _all(client, "/results", "results", source="api")}
            for cell in posted["cells"]:
                assert api[cell["id"]]["reference_id"] == expected_reference
                assert api[cell["id"]]["pipeline_id"] == posted["pipeline_id"]
            for cell in own["cells"]:
                assert (api[cell["id"]]["reference_id"], api[cell["id"]]["pipeline_id"]) == (
                    None,
                    own["pipeline_id"],
                )
            assert [(api[i]["reference_id"], api[i]["pipeline_id"]) for i in crop_ids] == [
                (None, None)
            ] * 2

            listed = [p["id"] for p in client.get("/pipelines").json()["pipelines"]]
            wanted = {first["pipeline_id"], second["pipeline_id"], posted["pipeline_id"]}
            assert wanted | {own["pipeline_id"]} <= set(listed)
            assert client.get(f"/pipelines/{'f' * 16}").status_code == 404
            assert client.get("/pipelines/not-an-id").status_code == 422
            assert client.get("/results", params={"pipeline_id": "xyz"}).status_code == 422
    finally:
        services.close()
    logged = caplog.text
    assert f"acquisition pipeline {first['pipeline_id']}" in logged  # at start
    assert f"acquisition pipeline {second['pipeline_id']} (was {first['pipeline_id']})" in logged
    assert f"pipeline {posted['pipeline_id']}: {canonical_json(hologram)}" in logged
    assert f"reference in use: {expected_reference}" in logged

    # a restart: the pipelines are still there, whatever this process remembered
    store = ResultStore(settings.database_url)
    try:
        assert store.pipeline(first["pipeline_id"])["description"] == described  # type: ignore[index]
    finally:
        store.close()

    # the export: each row's ids by dclab's index, and each pipeline's description
    out = tmp_path / "cells.rtdc"
    assert export("rtdc", "--out", str(out), "--db", settings.database_url) == 0
    with dclab.new_dataset(out) as ds:
        assert len(ds) == len(events) + len(new_events)
        log = list(ds.logs["topgan-export"])
        spans = {
            first["pipeline_id"]: (f"1-{len(events)}", described),
            second["pipeline_id"]: (f"{len(events) + 1}-{len(ds)}", reloaded),
        }
        for pid, (span, description) in spans.items():
            assert f"index {span}: reference {expected_reference}, pipeline {pid}" in log
            assert f"pipeline {pid}: log topgan-pipeline-{pid}" in log
            assert json.loads("\n".join(ds.logs[f"topgan-pipeline-{pid}"])) == description
        assert max(len(line) for name in ds.logs for line in ds.logs[name]) <= 100


#: The schema of before the reference and pipeline ids (results, events, tallies).
BEFORE_IDS = (
    "CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, created FLOAT NOT NULL,"
    " source VARCHAR(16) NOT NULL, frame_id INTEGER, y_px FLOAT, x_px FLOAT,"
    " label VARCHAR(64) NOT NULL, probabilities TEXT NOT NULL,"
    " model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL,"
    " qc TEXT NOT NULL, latency_s FLOAT, event_id INTEGER, uncertain BOOLEAN)",
    "CREATE TABLE events (id INTEGER PRIMARY KEY, created FLOAT NOT NULL, ended FLOAT NOT NULL,"
    " source VARCHAR(16) NOT NULL, first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL,"
    " views INTEGER NOT NULL, sightings INTEGER NOT NULL, label VARCHAR(64) NOT NULL,"
    " probabilities TEXT NOT NULL, speed_um_s FLOAT, qc TEXT NOT NULL,"
    " model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL, latency_s FLOAT,"
    " uncertain BOOLEAN)",
    "CREATE TABLE tallies (kind VARCHAR(16) NOT NULL, source VARCHAR(16) NOT NULL,"
    " label VARCHAR(64) NOT NULL, model_version VARCHAR(64) NOT NULL, n BIGINT NOT NULL,"
    " uncertain BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (kind, source, label, model_version))",
)


def check_migrated_store(store: ResultStore) -> None:
    """A store opened on a database from before the ids (one old view, one old event):
    the old rows have none, new rows and pipelines are stored, listed and filtered."""
    [old_view] = store.list()
    [old_event] = store.list_events()
    assert (old_view["reference_id"], old_view["pipeline_id"]) == (None, None)
    assert (old_event["reference_id"], old_event["pipeline_id"]) == (None, None)
    assert store.list_pipelines() == []
    description = json.dumps({"model": {"onnx_sha256": "ab" * 32}})
    store.add_pipeline(PipelineRow("0123456789abcdef", description, created=5.0)).result(30)
    again = PipelineRow("0123456789abcdef", json.dumps({"other": 1}), created=9.0)
    store.add_pipeline(again).result(30)  # kept once: the first stays
    assert store.pipeline("0123456789abcdef") == {
        "id": "0123456789abcdef",
        "created": 5.0,
        "description": json.loads(description),
    }
    assert store.pipeline("fedcba9876543210") is None
    event_id = store.new_event_id()
    view = ResultRow(
        "camera",
        "sw620",
        {"sw480": 0.2, "sw620": 0.8},
        "m",
        "2",
        frame_id=3,
        event_id=event_id,
        reference_id="00000000000000aa",
        pipeline_id="0123456789abcdef",
    )
    [new_id] = store.add([view]).result(30)
    event = EventRow(
        id=event_id,
        created=2.0,
        ended=2.1,
        first_frame=3,
        last_frame=4,
        views=1,
        sightings=2,
        label="sw620",
        probabilities={"sw480": 0.2, "sw620": 0.8},
        model_name="m",
        model_version="2",
        reference_id="00000000000000aa",
        pipeline_id="0123456789abcdef",
    )
    store.add_event(event).result(30)
    assert [r["id"] for r in store.list(pipeline_id="0123456789abcdef")] == [new_id]
    assert [r["id"] for r in store.list(reference_id="00000000000000aa")] == [new_id]
    assert [e["id"] for e in store.list_events(pipeline_id="0123456789abcdef")] == [event_id]
    assert store.list_events(reference_id="00000000000000bb") == []
    assert store.summary()["total_stored"] == 2


def test_a_database_from_before_the_ids_is_migrated(tmp_path):
    db = tmp_path / "old.sqlite"
    probabilities = json.dumps({"sw480": 0.55, "sw620": 0.45})
    with sqlite3.connect(db) as conn:
        for statement in BEFORE_IDS:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO results (created, source, label, probabilities, model_name,"
            " model_version, qc, event_id, uncertain, frame_id)"
            " VALUES (1.0, 'camera', 'sw480', ?, 'm', '1', '{}', 7, 0, 1)",
            (probabilities,),
        )
        conn.execute(
            "INSERT INTO events VALUES (7, 1.0, 1.1, 'camera', 1, 2, 1, 2, 'sw480', ?, NULL,"
            " '{}', 'm', '1', 0.01, 0)",
            (probabilities,),
        )
        conn.execute("INSERT INTO tallies VALUES ('results', 'camera', 'sw480', '1', 1, 0)")
        conn.execute("INSERT INTO tallies VALUES ('events', 'camera', 'sw480', '1', 1, 0)")
    store = ResultStore(f"sqlite:///{db}")
    try:
        check_migrated_store(store)
    finally:
        store.close()
    with sqlite3.connect(db) as conn:
        columns = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in
                   ("results", "events", "pipelines")}  # fmt: skip
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(results)")}
    assert {"reference_id", "pipeline_id"} <= columns["results"] & columns["events"]
    assert columns["pipelines"] == {"id", "created", "description"}
    assert {"ix_results_reference_id_id", "ix_results_pipeline_id_id"} <= indexes

    # the export of the migrated database: the old event's ids are not recorded
    out = tmp_path / "old.rtdc"
    assert export("rtdc", "--out", str(out), "--db", f"sqlite:///{db}") == 0
    with dclab.new_dataset(out) as ds:
        log = list(ds.logs["topgan-export"])
    assert "index 1: reference none, pipeline none" in log
    assert "index 2: reference 00000000000000aa, pipeline 0123456789abcdef" in log
    assert "pipeline 0123456789abcdef: log topgan-pipeline-0123456789abcdef" in log


def test_a_pipeline_is_the_hash_of_its_canonical_json(tmp_path, models_root):
    """Equal configurations share an id; any setting in it changes it."""
    from acquisition.reconstruction import ReconstructionConfig
    from acquisition.segmentation import SegmentationConfig
    from models.manifest import read_model_dir
    from service.pipelines import CameraSettings, Stages, describe, pipeline_id

    manifest = read_model_dir(models_root / "m1")[0]
    stages = Stages(ReconstructionConfig(), SegmentationConfig())
    base = pipeline_id(describe(stages, manifest, 0.7))
    same = Stages(ReconstructionConfig(), SegmentationConfig())
    assert base == pipeline_id(describe(same, manifest, 0.7))
    camera = CameraSettings("basler", "Mono12", (0, 0, 1024, 1024), 100.0, 90.0, "free")
    changed = [
        Stages(ReconstructionConfig(wavelength_nm=633.0), SegmentationConfig()),
        Stages(ReconstructionConfig(), SegmentationConfig(threshold=40.0)),
        Stages(ReconstructionConfig(), SegmentationConfig(), camera),
    ]
    ids = {pipeline_id(describe(s, manifest, 0.7)) for s in changed}
    ids.add(pipeline_id(describe(stages, manifest, 0.5)))
    ids.add(pipeline_id(describe(stages, read_model_dir(models_root / "m2")[0], 0.7)))
    assert len(ids) == 5
    assert base not in ids
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids | {base})

"""``topgan export rtdc``: the camera loop's cells as a dclab ``.rtdc`` file.

Written with dclab's own writer (:class:`dclab.RTDCWriter`), never laid out here.
One row per **event** (a cell, the ``events`` table) when the database holds events:
its combined probabilities and mean QC, and the crop, frame, time and position of
one **representative view**, the middle one (by frame) of its views whose crops are
in the archive (the cell farthest from where it entered and left the field). With
no events (an archive alone, or a database of views only) one row per **view**.
The feature mapping (:data:`QC_FEATURES`, :data:`USERDEF`) is written into the
file's log ``topgan-export`` and described in docs/design.md, "Files". dclab's
metadata keys are fixed and its per-row features numbers: each row's reference and
pipeline ids (16 hex digits, more than a float carries) are mapped in that log by
ranges of dclab's ``index``, and each pipeline's description is a log of its own,
``topgan-pipeline-<id>``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.commandline import (
    Command,
    CommandError,
    add_common_options,
    parse_time,
    positive_float,
)

#: The QC features with a dclab name: topgan's name -> (dclab's, conversion).
QC_FEATURES: dict[str, tuple[str, str]] = {
    "area_um2": ("area_um", "as is (um^2)"),
    "dry_mass_pg": ("qpi_dm", "as is (pg)"),
    # dclab's circularity is 2 sqrt(pi A) / P, topgan's 4 pi A / P^2
    "circularity": ("circ", "sqrt(circularity)"),
    # dclab's porosity is convex area / area, topgan's solidity its inverse
    "solidity": ("area_ratio", "1 / solidity"),
}
#: The values without a dclab name, in ``userdef1`` to ``userdef9``.
USERDEF: tuple[str, ...] = (
    "event_id",
    "views",
    "speed_um_s",
    "mean_opd_nm",
    "peak_opd_nm",
    "amplitude_std",
    "clipped",
    "touching",
    "out_of_focus",
)
#: What a userdef holds, for the log.
USERDEF_MEANING = {
    "event_id": "the event's id (views: their event's, -1 without one)",
    "views": "classified views of the event (views: 1)",
    "speed_um_s": "the event's speed, um/s (NaN when unknown)",
    "mean_opd_nm": "mean OPD over the cell, nm",
    "peak_opd_nm": "peak OPD, nm",
    "amplitude_std": "relative amplitude standard deviation",
    "clipped": "flag (events: fraction of views)",
    "touching": "flag (events: fraction of views)",
    "out_of_focus": "flag (events: fraction of views)",
}
ARCHIVE_FILE = re.compile(r"crops-\d{8}-\d{6}-\d+\.h5")


def phase_rad(opd_nm: np.ndarray, wavelength_nm: float) -> np.ndarray:
    """OPD (nm) as phase (rad) at ``wavelength_nm``: 2 pi OPD / wavelength."""
    if not wavelength_nm > 0:
        raise ValueError(f"the wavelength must be positive, got {wavelength_nm}")
    return (2 * np.pi / wavelength_nm * np.asarray(opd_nm, dtype=np.float64)).astype(np.float32)


def score_codes(classes: Sequence[str]) -> dict[str, str]:
    """Each class's three-character code for dclab's ``ml_score_xxx`` (``[a-z0-9]{3}``):
    the first three letters or digits of its name; if those are not distinct, the
    first two and the last; else ``c00``, ``c01``, ... in class order."""
    clean = [re.sub(r"[^a-z0-9]", "", c.lower()) for c in classes]
    for rule in (lambda s: s[:3], lambda s: s[:2] + s[-1:]):
        codes = [rule(s) for s in clean]
        if all(len(c) == 3 for c in codes) and len(set(codes)) == len(codes):
            return dict(zip(classes, codes, strict=True))
    return {c: f"c{i:02d}" for i, c in enumerate(classes)}


@dataclass
class Crop:
    """An archived crop: where it is and what the archive says of it."""

    path: Path
    row: int
    frame_id: int
    grabbed_at: float
    wavelength_nm: float
    pixel_size_um: float


@dataclass
class Row:
    """One row of the .rtdc file, before it is written."""

    probabilities: dict[str, float]
    qc: dict[str, float]
    frame: int
    time: float  # Unix s
    y_px: float | None
    x_px: float | None
    event_id: int | None
    views: int
    speed_um_s: float | None
    model: tuple[str, str]
    crop: Crop | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reference_id: str | None = None
    pipeline_id: str | None = None


def index_archive(folder: Path) -> dict[int, Crop]:
    """The archive's crops by result id (complete files only)."""
    import h5py

    from acquisition.cropfile import HDF5_ERRORS

    if not folder.is_dir():
        raise CommandError(f"--archive {folder}: no such folder")
    crops: dict[int, Crop] = {}
    for path in sorted(p for p in folder.iterdir() if ARCHIVE_FILE.fullmatch(p.name)):
        try:
            with h5py.File(path, "r") as h5:
                ids = h5["result_id"][()]
                frames = h5["frame_id"][()]
                grabbed = h5["grabbed_at"][()]
                wavelength = float(h5.attrs["wavelength_nm"])
                pixel = float(h5.attrs["pixel_size_um"])
        except (*HDF5_ERRORS, KeyError) as exc:
            raise CommandError(f"{path} is not a crop archive file: {exc}") from exc
        for row, (rid, frame, at) in enumerate(zip(ids, frames, grabbed, strict=True)):
            crops[int(rid)] = Crop(path, row, int(frame), float(at), wavelength, pixel)
    return crops


def archive_views(folder: Path, since: float | None) -> list[Row]:
    """One row per archived crop (no database): the archive's own results."""
    import h5py

    from acquisition.cropfile import HDF5_ERRORS

    crops = index_archive(folder)
    rows = []
    by_file: dict[Path, list[tuple[int, Crop]]] = {}
    for rid, crop in crops.items():
        by_file.setdefault(crop.path, []).append((rid, crop))
    for path, items in sorted(by_file.items()):
        try:
            with h5py.File(path, "r") as h5:
                names = [str(n) for n in h5.attrs["class_names"]]
                probability = h5["probability"][()]
                qc = {name: h5["qc"][name][()] for name in h5["qc"]} if "qc" in h5 else {}
                model = (str(h5.attrs["model_name"]), str(h5.attrs["model_version"]))
        except (*HDF5_ERRORS, KeyError) as exc:
            raise CommandError(f"{path} is not a crop archive file: {exc}") from exc
        for _rid, crop in items:
            if since is not None and crop.grabbed_at < since:
                continue
            i = crop.row
            rows.append(
                Row(
                    probabilities={n: float(p) for n, p in zip(names, probability[i], strict=True)},
                    qc={k: float(v[i]) for k, v in qc.items()},
                    frame=crop.frame_id,
                    time=crop.grabbed_at,
                    y_px=None,
                    x_px=None,
                    event_id=None,
                    views=1,
                    speed_um_s=None,
                    model=model,
                    crop=crop,
                )
            )
    rows.sort(key=lambda r: (r.time, r.frame))
    return rows


def database_rows(
    url: str, since: float | None, crops: Mapping[int, Crop] | None
) -> tuple[list[Row], str]:
    """Rows from the results store: one per event, else (no events) one per camera view;
    and which of the two ("event", "view")."""
    import sqlalchemy as sa

    from .store import events, results

    try:
        engine = sa.create_engine(url, future=True)
        with engine.connect() as conn:
            query = sa.select(events).order_by(events.c.id)
            if since is not None:
                query = query.where(events.c.created >= since)
            event_rows = [dict(r) for r in conn.execute(query).mappings()]
            views_query = (
                sa.select(results).where(results.c.source == "camera").order_by(results.c.id)
            )
            if since is not None:
                views_query = views_query.where(results.c.created >= since)
            view_rows = [dict(r) for r in conn.execute(views_query).mappings()]
        engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        reason = " ".join(str(exc.orig if hasattr(exc, "orig") and exc.orig else exc).split())
        raise CommandError(f"cannot read the database {url}: {reason}") from None
    for r in (*event_rows, *view_rows):
        r["probabilities"] = json.loads(r["probabilities"])
        r["qc"] = json.loads(r["qc"])

    def view_row(v: dict[str, Any]) -> Row:
        crop = crops.get(int(v["id"])) if crops is not None else None
        return Row(
            probabilities=v["probabilities"],
            qc=v["qc"],
            frame=int(v["frame_id"] if v["frame_id"] is not None else -1),
            time=float(v["created"]),
            y_px=v["y_px"],
            x_px=v["x_px"],
            event_id=v["event_id"],
            views=1,
            speed_um_s=None,
            model=(v["model_name"], v["model_version"]),
            crop=crop,
            extra={"result_id": int(v["id"])},
            reference_id=v["reference_id"],
            pipeline_id=v["pipeline_id"],
        )

    if not event_rows:
        return [view_row(v) for v in view_rows], "view"
    views_of: dict[int, list[dict[str, Any]]] = {}
    for v in view_rows:
        if v["event_id"] is not None:
            views_of.setdefault(int(v["event_id"]), []).append(v)
    out = []
    for e in event_rows:
        views = sorted(views_of.get(int(e["id"]), []), key=lambda v: (v["frame_id"], v["id"]))
        if crops is not None:
            views = [v for v in views if int(v["id"]) in crops]
        if not views:
            row = Row(
                probabilities=e["probabilities"],
                qc=e["qc"],
                frame=int(e["first_frame"]),
                time=float(e["created"]),
                y_px=None,
                x_px=None,
                event_id=int(e["id"]),
                views=int(e["views"]),
                speed_um_s=e["speed_um_s"],
                model=(e["model_name"], e["model_version"]),
                reference_id=e["reference_id"],
                pipeline_id=e["pipeline_id"],
            )
        else:
            middle = view_row(views[(len(views) - 1) // 2])
            row = Row(
                probabilities=e["probabilities"],
                qc=e["qc"],
                frame=middle.frame,
                time=middle.time,
                y_px=middle.y_px,
                x_px=middle.x_px,
                event_id=int(e["id"]),
                views=int(e["views"]),
                speed_um_s=e["speed_um_s"],
                model=(e["model_name"], e["model_version"]),
                crop=middle.crop,
                extra=middle.extra,
                reference_id=e["reference_id"],
                pipeline_id=e["pipeline_id"],
            )
        out.append(row)
    return out, "event"


def stored_pipelines(url: str, ids: set[str]) -> dict[str, str]:
    """The stored descriptions (canonical JSON) of the pipelines ``ids``."""
    import sqlalchemy as sa

    from .store import pipelines

    if not ids:
        return {}
    try:
        engine = sa.create_engine(url, future=True)
        with engine.connect() as conn:
            query = sa.select(pipelines.c.id, pipelines.c.description)
            found = {str(i): str(d) for i, d in conn.execute(query.where(pipelines.c.id.in_(ids)))}
        engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        reason = " ".join(str(exc.orig if hasattr(exc, "orig") and exc.orig else exc).split())
        raise CommandError(f"cannot read the database {url}: {reason}") from None
    return found


def provenance_log(rows: Sequence[Row]) -> list[str]:
    """Each row's reference and pipeline ids, as ranges of dclab's ``index`` (from 1)."""
    lines: list[str] = []
    start = 0
    for i in range(1, len(rows) + 1):
        here = (rows[start].reference_id, rows[start].pipeline_id)
        if i < len(rows) and (rows[i].reference_id, rows[i].pipeline_id) == here:
            continue
        span = f"{start + 1}" if i == start + 1 else f"{start + 1}-{i}"
        lines.append(f"index {span}: reference {here[0] or 'none'}, pipeline {here[1] or 'none'}")
        start = i
    return lines


@dataclass
class Optics:
    """What the file's metadata says of the setup (the service's settings)."""

    camera_pixel_size_um: float
    crop_pixel_size_um: float
    wavelength_nm: float
    frame_rate_hz: float | None
    flow_rate_ul_min: float | None
    medium_index: float | None
    exposure_us: float | None = None
    channel_width_um: float | None = None


def write_rtdc(
    out: Path,
    rows: Sequence[Row],
    kind: str,
    optics: Optics,
    command: str,
    pipelines: Mapping[str, str] | None = None,
) -> int:
    """Write ``rows`` to ``out`` with dclab's writer; returns the rows written.

    Rows without an archived crop are left out when any row has one (every row of a
    file has the same features). ``pipelines``: the stored descriptions (canonical
    JSON) of the rows' pipelines, each written as a log of its own."""
    import h5py
    import hdf5plugin  # noqa: F401  (dclab's compression filters)
    from dclab import RTDCWriter

    with_crops = any(r.crop is not None for r in rows)
    skipped = sum(r.crop is None for r in rows) if with_crops else 0
    rows = [r for r in rows if r.crop is not None] if with_crops else list(rows)
    if not rows:
        raise CommandError("nothing to export: the selection has no rows with crops")
    classes = list(rows[0].probabilities)
    for r in rows:
        if list(r.probabilities) != classes:
            raise CommandError(
                f"the selection mixes models with classes {classes} and "
                f"{list(r.probabilities)}: export one model's results (--since)"
            )
    codes = score_codes(classes)
    ordered = sorted(classes, key=lambda c: codes[c])  # dclab's ml_class: sorted score names
    n = len(rows)
    t0 = min(r.time for r in rows)
    features: dict[str, np.ndarray] = {
        "frame": np.asarray([r.frame for r in rows], dtype=np.uint64),
        "time": np.asarray([r.time - t0 for r in rows], dtype=np.float64),
    }
    for c in classes:
        features[f"ml_score_{codes[c]}"] = np.asarray(
            [r.probabilities[c] for r in rows], dtype=np.float64
        )
    features["ml_class"] = np.asarray(
        [ordered.index(max(r.probabilities, key=r.probabilities.__getitem__)) for r in rows],
        dtype=np.uint32,
    )
    if all(r.y_px is not None and r.x_px is not None for r in rows):
        # pos_x along the channel: the camera's x (flow along x or y; see the log)
        features["pos_x"] = np.asarray(
            [float(r.x_px) * optics.camera_pixel_size_um for r in rows]  # type: ignore[arg-type]
        )
        features["pos_y"] = np.asarray(
            [float(r.y_px) * optics.camera_pixel_size_um for r in rows]  # type: ignore[arg-type]
        )

    def qc(name: str) -> np.ndarray:
        return np.asarray([float(r.qc.get(name, math.nan)) for r in rows], dtype=np.float64)

    for name, (dclab_name, _) in QC_FEATURES.items():
        values = qc(name)
        if name == "circularity":
            values = np.sqrt(values)
        elif name == "solidity":
            values = 1 / values
        features[dclab_name] = values
    userdef = {
        "event_id": np.asarray([-1 if r.event_id is None else r.event_id for r in rows], float),
        "views": np.asarray([r.views for r in rows], dtype=np.float64),
        "speed_um_s": np.asarray(
            [math.nan if r.speed_um_s is None else r.speed_um_s for r in rows], dtype=np.float64
        ),
    }
    for name in USERDEF[3:]:
        userdef[name] = qc(name)
    for i, name in enumerate(USERDEF, start=1):
        features[f"userdef{i}"] = userdef[name]

    wavelength = optics.wavelength_nm
    pixel = optics.crop_pixel_size_um
    if with_crops:
        wavelength = rows[0].crop.wavelength_nm  # type: ignore[union-attr]
        pixel = rows[0].crop.pixel_size_um  # type: ignore[union-attr]
        if any(
            (r.crop.wavelength_nm, r.crop.pixel_size_um) != (wavelength, pixel)  # type: ignore[union-attr]
            for r in rows
        ):
            raise CommandError("the archive's files differ in wavelength or pixel size")
        images = np.empty((n, 0, 0), dtype=np.float32)
        by_file: dict[Path, list[int]] = {}
        for i, r in enumerate(rows):
            by_file.setdefault(r.crop.path, []).append(i)  # type: ignore[union-attr]
        for path, indices in by_file.items():
            with h5py.File(path, "r") as h5:
                opd = h5["opd"]
                if images.shape[1:] != opd.shape[1:]:
                    if images.size:
                        raise CommandError("the archive's crops differ in shape")
                    images = np.empty((n, *opd.shape[1:]), dtype=np.float32)
                for i in indices:
                    images[i] = opd[rows[i].crop.row]  # type: ignore[union-attr]
        features["qpi_pha"] = phase_rad(images, wavelength)
        features["qpi_amp"] = np.ones_like(features["qpi_pha"])

    frame_rate = optics.frame_rate_hz
    if not frame_rate:
        frame_rate = _measured_frame_rate(rows)
    start = datetime.fromtimestamp(t0, UTC)
    meta: dict[str, dict[str, Any]] = {
        "experiment": {
            "date": start.strftime("%Y-%m-%d"),
            "time": start.strftime("%H:%M:%S"),
            "timestamp": t0,
            "sample": f"topgan {kind}",
            "run index": 1,
        },
        # dclab's checker wants these keys; what topgan does not know is NaN or "unknown"
        "imaging": {
            "pixel size": pixel,
            "flash device": "unknown",
            "flash duration": math.nan if optics.exposure_us is None else optics.exposure_us,
            "roi position x": 0,  # the crops are cut around each cell, anywhere
            "roi position y": 0,
        },
        "qpi": {
            "wavelength": wavelength,
            "pixel size raw": optics.camera_pixel_size_um,
            "pixel size proc": pixel,
            "software version": f"topgan {_version()}",
        },
        "setup": {
            "software version": f"topgan {_version()}",
            "chip region": "channel",
            "medium": "other",
            "flow rate": math.nan,
            "channel width": math.nan
            if optics.channel_width_um is None
            else optics.channel_width_um,
        },
    }
    # the crop's size; 0 without images
    meta["imaging"]["roi size x"] = int(features["qpi_pha"].shape[2]) if with_crops else 0
    meta["imaging"]["roi size y"] = int(features["qpi_pha"].shape[1]) if with_crops else 0
    if frame_rate:
        meta["imaging"]["frame rate"] = float(frame_rate)
    if optics.medium_index is not None:
        meta["qpi"]["medium index"] = optics.medium_index
    if optics.flow_rate_ul_min:
        meta["setup"]["flow rate"] = optics.flow_rate_ul_min / 60  # uL/s
    models = sorted({r.model for r in rows})
    log = [
        f"command: {command}"[:99],
        *(f"model: {name} version {version}" for name, version in models),
        f"rows: one per {kind}; {n} written, {skipped} left out without an archived crop",
        "crop: the middle view by frame of those archived (qpi_pha, frame, time, pos)"
        if kind == "event"
        else "crop: the view's own",
        "scalars: the event's combined probabilities and mean QC"
        if kind == "event"
        else "scalars: the view's",
        f"qpi_pha: 2 pi OPD / {wavelength:g} nm; qpi_amp: ones (not archived)"
        if with_crops
        else "no crops: no qpi_pha, qpi_amp",
        "time: s since the first row; pos_x, pos_y: camera x, y times the pixel size",
        *(f"ml_score_{codes[c]}: {c}" for c in classes),
        f"ml_class: index into {[codes[c] for c in ordered]}",
        *(f"{d}: {name}, {how}" for name, (d, how) in QC_FEATURES.items()),
        *(f"userdef{i}: {name}, {USERDEF_MEANING[name]}" for i, name in enumerate(USERDEF, 1)),
        "reference, pipeline: the ids each row was reconstructed against and ran with "
        "(none: not recorded)",
        *provenance_log(rows),
    ]
    used = sorted({r.pipeline_id for r in rows if r.pipeline_id is not None})
    described = {p: (pipelines or {})[p] for p in used if p in (pipelines or {})}
    log += [f"pipeline {p}: log topgan-pipeline-{p}" for p in described]
    log += [f"pipeline {p}: not stored" for p in used if p not in described]
    if out.exists():
        out.unlink()
    with RTDCWriter(out, mode="reset") as writer:
        writer.store_metadata(meta)
        for name, values in features.items():
            with warnings.catch_warnings():
                # dclab's writer takes each feature's nanmin and nanmax: a feature that
                # is NaN throughout (the speed of views) would warn
                warnings.simplefilter("ignore", RuntimeWarning)
                writer.store_feature(name, values)
        writer.store_log("topgan-export", log)
        for p, text in described.items():  # one key a line: lines dclab keeps short
            lines = json.dumps(json.loads(text), indent=1, sort_keys=True).splitlines()
            writer.store_log(f"topgan-pipeline-{p}", lines)
    return n


def _measured_frame_rate(rows: Sequence[Row]) -> float | None:
    """Frames per second over the rows (frame counter over grab time), if measurable."""
    frames = np.asarray([r.frame for r in rows], dtype=np.float64)
    times = np.asarray([r.time for r in rows])
    if np.ptp(times) <= 0 or np.ptp(frames) <= 0:
        return None
    return float(np.ptp(frames) / np.ptp(times))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("topgan")
    except PackageNotFoundError:
        return "unknown"


def add_arguments(p: argparse.ArgumentParser) -> None:
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    rtdc = formats.add_parser(
        "rtdc",
        help="results and crops as a dclab .rtdc file (DCscope, dclab)",
        description="One row per cell (event) with its combined probabilities and the crop "
        "of its middle archived view; with no events (an archive alone) one row per view. "
        "Settings (optics, database, archive) as for topgan serve: TOPGAN_ variables or "
        "--config.",
    )
    add_common_options(rtdc)
    rtdc.add_argument("--out", required=True, metavar="FILE.rtdc")
    rtdc.add_argument(
        "--archive", metavar="DIR", help="the crop archive (default: TOPGAN_CROP_ARCHIVE)"
    )
    rtdc.add_argument("--db", metavar="URL", help="results database (default: the service's)")
    rtdc.add_argument("--since", metavar="T", help="only cells seen from T (Unix s or ISO 8601)")
    rtdc.add_argument("--medium-index", type=positive_float, metavar="N", help="[qpi] medium index")
    rtdc.add_argument(
        "--channel-width-um", type=positive_float, metavar="W", help="[setup] channel width"
    )
    rtdc.add_argument("--config", metavar="FILE.toml", help="settings file")


def run(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from .settings import load_settings

    try:
        settings = load_settings(Path(args.config) if args.config else None)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CommandError(f"setting {where}: {first['msg']}") from None
    since = parse_time(args.since, "--since") if args.since is not None else None
    out = Path(args.out)
    if out.suffix != ".rtdc":
        raise CommandError(f"--out {out}: the file name must end in .rtdc")
    if not out.parent.is_dir():
        raise CommandError(f"--out {out}: no folder {out.parent}")
    archive = Path(args.archive) if args.archive else settings.crop_archive
    url = args.db or settings.database_url
    db_file = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if db_file is not None and not db_file.is_file():
        if args.db:
            raise CommandError(f"--db {url}: no such database file")
        if archive is None:
            raise CommandError(f"no database at {url} and no crop archive: give --db or --archive")
        rows = archive_views(archive, since)
        kind = "view"
    else:
        crops = index_archive(archive) if archive is not None else None
        rows, kind = database_rows(url, since, crops)
    if not rows:
        raise CommandError("nothing to export: no results in the selection")
    optics = Optics(
        camera_pixel_size_um=settings.pixel_size_um,
        crop_pixel_size_um=settings.crop_pixel_size_um,
        wavelength_nm=settings.wavelength_nm,
        frame_rate_hz=settings.frame_rate_hz or None,
        flow_rate_ul_min=settings.flow_rate_ul_min,
        medium_index=args.medium_index,
        exposure_us=settings.exposure_us,
        channel_width_um=args.channel_width_um,
    )
    pipelines = stored_pipelines(url, {r.pipeline_id for r in rows if r.pipeline_id})
    n = write_rtdc(out, rows, kind, optics, " ".join(["topgan", *sys.argv[1:]]), pipelines)
    print(f"wrote {n} {kind}s to {out}", file=sys.stderr)


COMMAND = Command(
    name="export",
    help="export results (rtdc: a dclab .rtdc file)",
    add_arguments=add_arguments,
    run=run,
    order=45,
)

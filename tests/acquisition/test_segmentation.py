from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.ndimage as ndi

from acquisition.backend import get_backend
from acquisition.frames import FrameProcessor
from acquisition.reconstruction import ReconstructionConfig, Reconstructor
from acquisition.segmentation import (
    SegmentationConfig,
    Segmenter,
    _neck,
    otsu_threshold,
)
from acquisition.simulator.phantoms import render_cell, render_rbc
from acquisition.simulator.scene import FlowSimulator, SceneConfig
from tests.conftest import LEFT_CELLS, Disk, make_scene


def reconstruct(scene, backend, **kwargs):
    config = ReconstructionConfig(
        sample_half=kwargs.pop("sample_half", "left"),
        pixel_size_um=scene.optics.pixel_size_um,
        **kwargs,
    )
    return Reconstructor(config, backend, reference=scene.reference).reconstruct(scene.holograms)


def test_every_cell_found_once_and_no_ghost(flipping_scene, backend):
    maps = reconstruct(flipping_scene, backend)
    frames = Segmenter().segment(maps)
    assert [len(f.cells) for f in frames] == [len(c) for c in flipping_scene.cells]
    for found, truth in zip(frames, flipping_scene.cells, strict=True):
        for disk in truth:
            distances = [math.dist(c.position_px, (disk.y, disk.x)) for c in found.cells]
            assert min(distances) < 2.0, "each cell's centre of mass is where the phantom is"


def test_ghosts_never_counted_even_over_the_full_frame(flipping_scene, backend):
    left = reconstruct(flipping_scene, backend)
    maps = reconstruct(flipping_scene, backend, sample_half="full", sign=left.sign)
    frames = Segmenter().segment(maps)
    assert [len(f.cells) for f in frames] == [len(c) for c in flipping_scene.cells]
    width = flipping_scene.holograms.shape[-1]
    assert all(c.position_px[1] < width / 2 for f in frames for c in f.cells)


def test_qc_matches_the_phantom(flipping_scene, backend):
    scene = flipping_scene
    maps = reconstruct(scene, backend)
    frame = Segmenter().segment(maps)[0]
    cells = frame.cells
    pixel_area = scene.optics.pixel_size_um**2
    for disk in LEFT_CELLS:
        cell = min(cells, key=lambda c: math.dist(c.position_px, (disk.y, disk.x)))
        yy, xx = np.mgrid[: scene.opd_nm.shape[1], : scene.opd_nm.shape[2]]
        near = np.hypot(yy - disk.y, xx - disk.x) < disk.radius * 1.6
        true_mass = scene.opd_nm[0][near].sum() * 1e-3 * pixel_area / 0.18
        assert cell.qc["dry_mass_pg"] == pytest.approx(true_mass, rel=0.05)
        assert cell.qc["peak_opd_nm"] == pytest.approx(scene.opd_nm[0][near].max(), abs=20)
        true_area = (scene.opd_nm[0][near] > frame.low_threshold_nm).sum() * pixel_area
        assert cell.qc["area_um2"] == pytest.approx(true_area, rel=0.05)
        assert cell.qc["circularity"] > 0.85
        assert not cell.qc["touching"]
        assert not cell.qc["clipped"]
        assert not cell.qc["out_of_focus"]


def test_crops_are_centred_and_resampled(flipping_scene, backend):
    maps = reconstruct(flipping_scene, backend)
    config = SegmentationConfig(crop_size=128, crop_pixel_size_um=0.25)
    cells = Segmenter(config).segment(maps)[0].cells
    for cell in cells:
        crop = cell.crop_nm
        assert crop.shape == (128, 128)
        assert crop.dtype == np.float32
        weights = np.clip(crop, 0, None) * (crop > 50)
        yy, xx = np.mgrid[:128, :128]
        cy = (yy * weights).sum() / weights.sum()
        cx = (xx * weights).sum() / weights.sum()
        assert abs(cy - 63.5) < 1.0
        assert abs(cx - 63.5) < 1.0
        # Area measured on the crop grid agrees with the QC area at the map's pixel size.
        area_crop = (crop > 0.2 * crop.max()).sum() * 0.25**2
        assert area_crop == pytest.approx(cell.qc["area_um2"], rel=0.25)


def test_touching_cells_rejected_or_flagged(backend):
    pair = [Disk(200.0, 100.0, 40.0, 800.0), Disk(200.0, 178.0, 40.0, 800.0)]
    scene = make_scene([pair], seed=7)
    maps = reconstruct(scene, backend)
    rejected = Segmenter(SegmentationConfig(touching="reject")).segment(maps)[0]
    assert rejected.cells == []
    assert rejected.rejected == {"touching": 1}
    flagged = Segmenter(SegmentationConfig(touching="flag")).segment(maps)[0]
    assert len(flagged.cells) == 1
    assert flagged.cells[0].qc["touching"]


def test_border_debris_and_elongated_objects_rejected(backend):
    objects = [
        Disk(256.0, 4.0, 40.0, 800.0),  # clipped by the frame's edge
        Disk(256.0, 250.0, 40.0, 800.0),  # crosses into the mirrored half
        Disk(100.0, 120.0, 8.0, 300.0),  # debris, well under a cell's size
        Disk(420.0, 120.0, 40.0, 800.0),  # the one real cell
    ]
    scene = make_scene([objects], seed=11)
    maps = reconstruct(scene, backend)
    frame = Segmenter().segment(maps)[0]
    assert len(frame.cells) == 1
    assert math.dist(frame.cells[0].position_px, (420.0, 120.0)) < 2.0
    assert frame.rejected.get("clipped") == 2
    # A low fixed threshold seeds the debris too; the size filter drops it.
    low = Segmenter(SegmentationConfig(threshold=50.0)).segment(maps)[0]
    assert len(low.cells) == 1
    assert low.rejected.get("too_small") == 1
    kept = Segmenter(SegmentationConfig(reject_border=False)).segment(maps)[0]
    assert sum(bool(c.qc["clipped"]) for c in kept.cells) == 2


def test_defocused_cell_flagged_out_of_focus(backend):
    from acquisition.simulator.optics import band_limit, record_hologram
    from tests.conftest import disk_opd

    scene = make_scene([[LEFT_CELLS[0]]], seed=13)
    optics = scene.optics
    rng = np.random.default_rng(2)
    phase = (
        2 * math.pi * disk_opd(scene.holograms.shape[1:], [LEFT_CELLS[0]]) / optics.wavelength_nm
    )
    field = band_limit(np.exp(1j * phase), optics.cutoff_cycles_per_px)
    # Angular-spectrum propagation by 10 um in water: the cell leaves the focal plane.
    h, w = field.shape
    fy = np.fft.fftfreq(h, optics.pixel_size_um)[:, None]
    fx = np.fft.fftfreq(w, optics.pixel_size_um)[None, :]
    k = 1.333 / (optics.wavelength_nm * 1e-3)
    kz = np.sqrt(np.clip(k**2 - fy**2 - fx**2, 0, None))
    defocused = np.fft.ifft2(np.fft.fft2(field) * np.exp(2j * math.pi * 10.0 * kz))
    ref_field = band_limit(np.ones((h, w), complex), optics.cutoff_cycles_per_px)
    reference = record_hologram(ref_field, optics, rng)
    hologram = record_hologram(defocused, optics, rng)
    rec = Reconstructor(ReconstructionConfig(sample_half="left"), backend, reference=reference)
    in_focus = Segmenter().segment(
        Reconstructor(
            ReconstructionConfig(sample_half="left"), backend, reference=reference
        ).reconstruct(record_hologram(field, optics, rng))
    )[0]
    assert len(in_focus.cells) == 1
    assert not in_focus.cells[0].qc["out_of_focus"]
    blurred = Segmenter(SegmentationConfig(touching="flag", min_circularity=0.0)).segment(
        rec.reconstruct(hologram)
    )[0]
    assert blurred.cells, "the defocused cell is still found"
    assert all(c.qc["out_of_focus"] for c in blurred.cells)


def test_fixed_threshold(flipping_scene, backend):
    maps = reconstruct(flipping_scene, backend)
    frame = Segmenter(SegmentationConfig(threshold=200.0)).segment(maps)[0]
    assert frame.threshold_nm == 200.0
    assert len(frame.cells) == len(LEFT_CELLS)


def test_empty_frame_has_no_cells(backend):
    scene = make_scene([[]], seed=17)
    frame = Segmenter().segment(reconstruct(scene, backend, sign=1))[0]
    assert frame.cells == []


def test_otsu_splits_two_populations():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 5, 9000), rng.normal(400, 30, 1000)])
    assert 50 < otsu_threshold(values) < 350


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": -3.0}, "threshold"),
        ({"min_area_um2": 50, "max_area_um2": 10}, "min_area_um2"),
        ({"touching": "merge"}, "touching"),
        ({"crop_size": 4}, "crop_size"),
        ({"crop_pixel_size_um": 0}, "crop_pixel_size_um"),
    ],
)
def test_bad_segmentation_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentationConfig(**kwargs)


# Touching test on real morphologies: biconcave red blood cells, nuclei, nucleoli.

RBC_SCENE = SceneConfig(shape=(512, 640), cells_per_frame=0, debris_per_frame=0)


def rbc_frame(opd_nm: np.ndarray, seed: int, scene: SceneConfig = RBC_SCENE):
    """The frame of ``opd_nm`` : (H, W) through the simulator's optics (``scene``)
    and the frame processor, with the default segmentation."""
    simulator = FlowSimulator(scene, ["sw480"], seed=seed)
    optics = scene.optics
    processor = FrameProcessor(
        ReconstructionConfig(
            wavelength_nm=optics.wavelength_nm,
            pixel_size_um=optics.pixel_size_um,
            sample_half=scene.sample_half,
        ),
        SegmentationConfig(),
        get_backend("numpy"),
        simulator.reference,
    )
    hologram = simulator.render(opd_nm, np.random.default_rng(seed))
    return processor.process(hologram)


@pytest.mark.parametrize(("rim_over_centre", "unevenness"), [(1.3, 0.45), (2.0, 0.35), (3.0, 0.3)])
def test_an_isolated_red_blood_cell_is_one_cell(rim_over_centre, unevenness):
    px = RBC_SCENE.optics.pixel_size_um
    rbc = render_rbc(
        np.random.default_rng(5),
        px,
        diameter_um=8.0,
        rim_over_centre=rim_over_centre,
        rim_unevenness=unevenness,
    )
    opd = np.zeros(RBC_SCENE.shape, np.float32)
    FlowSimulator._paste(opd, rbc.opd_nm, 250.0, 160.0)
    processed = rbc_frame(opd, seed=1)
    frame = processed.segmentations[0]
    assert frame.rejected == {}
    assert len(frame.cells) == 1
    cell = frame.cells[0]
    assert math.dist(cell.position_px, (250.0, 160.0)) < 3
    assert not cell.qc["touching"]
    # The case guarded: the uneven ring does fall apart into large arcs when cut at
    # the split levels (which alone used to reject the cell as touching).
    labels = frame.labels
    box = ndi.find_objects(labels)[cell.label - 1]
    segmenter = Segmenter()
    assert segmenter._splits(processed.maps.opd_nm[0][box], labels[box] == cell.label)


def test_red_blood_cells_found_and_pressed_pairs_rejected():
    scene = replace(RBC_SCENE, shape=(768, 640))
    px = scene.optics.pixel_size_um
    rng = np.random.default_rng(21)
    opd = np.zeros(scene.shape, np.float32)

    def rbc():
        return render_rbc(rng, px, rim_over_centre=rng.uniform(1.6, 3.0), rim_unevenness=0.35)

    # Six rows of three slots 100-125 px (12-15 um) apart over the 92 x 38 um sample
    # half: a cell for every 170 um^2; two rows hold a pair of cells pressed together
    # (centres 0.9 diameters apart) instead.
    rows, columns = (70.0, 195.0, 320.0, 445.0, 570.0, 695.0), (60.0, 160.0, 260.0)
    pairs, isolated = [], []
    for y in rows:
        if y in (195.0, 570.0):
            a, b = rbc(), rbc()
            phi = rng.uniform(-0.4, 0.4)
            half = 0.45 * (a.params["diameter_um"] + b.params["diameter_um"]) / 2 / px
            x = columns[1] + rng.uniform(-10, 10)
            ends = [(y - half * math.sin(phi), x - half * math.cos(phi))]
            ends.append((y + half * math.sin(phi), x + half * math.cos(phi)))
            for (cy, cx), cell in zip(ends, (a, b), strict=True):
                FlowSimulator._paste(opd, cell.opd_nm, cy, cx)
            pairs.append(ends)
            continue
        for x in columns:
            cy, cx = y + rng.uniform(-6, 6), x + rng.uniform(-6, 6)
            FlowSimulator._paste(opd, rbc().opd_nm, cy, cx)
            isolated.append((cy, cx))
    frame = rbc_frame(opd, seed=3, scene=scene).segmentations[0]
    assert frame.rejected == {"touching": len(pairs)}
    assert len(frame.cells) == len(isolated)
    for y, x in isolated:
        assert min(math.dist(c.position_px, (y, x)) for c in frame.cells) < 3
    assert not any(c.qc["touching"] for c in frame.cells)


@pytest.mark.parametrize("line", ["sw480", "sw620", "hs895-sk", "hs895-t"])
def test_cells_with_a_nucleus_and_nucleoli_stay_one_cell(line):
    px = RBC_SCENE.optics.pixel_size_um
    rng = np.random.default_rng(8)
    opd = np.zeros(RBC_SCENE.shape, np.float32)
    centres = [(130.0, 160.0), (380.0, 160.0)]
    nucleoli = 0
    for y, x in centres:
        cell = render_cell(line, rng, px)
        nucleoli += int(cell.params["nucleoli"])
        FlowSimulator._paste(opd, cell.opd_nm, y, x)
    assert nucleoli >= 2, "the phantoms carry nucleoli"
    frame = rbc_frame(opd, seed=9).segmentations[0]
    assert frame.rejected == {}
    assert len(frame.cells) == len(centres)
    for y, x in centres:
        assert min(math.dist(c.position_px, (y, x)) for c in frame.cells) < 3
    assert not any(c.qc["touching"] for c in frame.cells)


def test_neck_of_an_outline():
    yy, xx = np.mgrid[:120, :160].astype(float)
    disk = np.hypot(yy - 60, xx - 60) < 30
    assert _neck(disk, (0.5, 0.5), 0.3) == 1.0
    # Two disks 1.6 radii apart: the neck's half-width is 0.6 of a radius.
    peanut = disk | (np.hypot(yy - 60, xx - 108) < 30)
    assert _neck(peanut, (0.5, 0.5), 0.3) == pytest.approx(0.6, abs=0.08)
    # A bleb (a fifth of the radius) on the outline is no second cell.
    bleb = disk | (np.hypot(yy - 60, xx - 92) < 6)
    assert _neck(bleb, (0.5, 0.5), 0.3) == 1.0


@pytest.mark.parametrize("separation_px", [0, 20, 24, 28, 32, 40])
def test_touching_and_neck_are_plain_python_values(separation_px):
    """The QC is stored as JSON, which takes no NumPy bool: a slightly pinched outline
    (neck between the two thresholds) once gave ``numpy.bool`` and lost its frame's
    whole commit."""
    yy, xx = np.mgrid[:80, :120]
    half = separation_px / 2
    mask = (np.hypot(yy - 40, xx - 60 + half) < 20) | (np.hypot(yy - 40, xx - 60 - half) < 20)
    neck = _neck(mask, (0.12, 0.12), 0.3)
    touching = Segmenter(SegmentationConfig())._touching(mask * 300.0, mask, mask, (0.12, 0.12))
    assert type(neck) is float
    assert type(touching) is bool
    json.dumps({"neck": neck, "touching": touching})


def _neck_level_by_level(mask: np.ndarray, pixel_size_um: tuple[float, float], min_core: float):
    """The neck as first written: every level labelled on its own and measured with
    ``ndi.maximum`` (the reference of the stacked flooding in ``_neck``)."""
    distance = ndi.distance_transform_edt(np.pad(mask, 1), sampling=pixel_size_um)
    highest = float(distance.max())
    if highest <= 0:
        return 1.0
    tops = (distance == ndi.maximum_filter(distance, size=3)) & (distance >= min_core * highest)
    top_parts, count = ndi.label(tops, structure=np.ones((3, 3)))
    if count < 2:
        return 1.0
    second = float(np.sort(ndi.maximum(distance, top_parts, np.arange(1, count + 1)))[-2])
    ratio = 1.0
    for t in np.linspace(0.0, highest, 33)[:-1]:
        if t >= ratio * second:
            break
        pieces, count = ndi.label(distance > t, structure=np.ones((3, 3)))
        if count < 2:
            continue
        maxima = np.sort(ndi.maximum(distance, pieces, np.arange(1, count + 1)))[::-1]
        if maxima[1] >= min_core * highest:
            ratio = min(ratio, t / float(maxima[1]))
    return ratio


def _outlines(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Cells, pairs and triples of them at every gap, ellipses and ragged blobs."""
    yy, xx = np.mgrid[:110, :150].astype(float)
    out = []
    for _ in range(n):
        disks = []
        for _ in range(rng.integers(1, 4)):
            r = rng.uniform(8, 28)
            disks.append(
                np.hypot(
                    (yy - rng.uniform(35, 75)) / rng.uniform(0.6, 1.0), xx - rng.uniform(30, 120)
                )
                < r
            )
        mask = np.logical_or.reduce(disks)
        if rng.random() < 0.3:
            mask ^= ndi.binary_erosion(mask, iterations=2) & (rng.random(mask.shape) < 0.02)
        labels, count = ndi.label(mask)
        if count:
            biggest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
            out.append(ndi.binary_fill_holes(labels == biggest))
    return out


@pytest.mark.parametrize("min_core", [0.3, 0.6])
def test_neck_is_the_level_by_level_flooding(min_core):
    """The stacked flooding gives exactly the level-by-level answer."""
    outlines = _outlines(np.random.default_rng(4), 150)
    necks = [_neck(m, (0.25, 0.3), min_core) for m in outlines]
    assert necks == [_neck_level_by_level(m, (0.25, 0.3), min_core) for m in outlines]
    assert sum(n < 1.0 for n in necks) > 30, "the outlines include necks to find"


def test_objects_numbered_as_labelling_the_seeded_candidates():
    """A frame's labels: the candidates that hold a seed, numbered as ``ndi.label``
    numbers them when they are labelled again (unseeded candidates in between)."""
    objects = [
        Disk(256.0, 4.0, 40.0, 800.0),
        Disk(100.0, 120.0, 8.0, 300.0),
        Disk(420.0, 120.0, 40.0, 800.0),
        Disk(300.0, 150.0, 30.0, 60.0),  # faint: a candidate that holds no seed
    ]
    maps = reconstruct(make_scene([objects], seed=11), get_backend("numpy"))
    gaps = 0
    for config in (SegmentationConfig(), SegmentationConfig(threshold=200.0)):
        found = Segmenter(config).segment_frame(maps, 0)
        opd = maps.opd_nm[0]
        candidates, found_count = ndi.label(opd > found.low_threshold_nm, np.ones((3, 3)))
        seeded = np.unique(candidates[opd > found.threshold_nm])
        expected, count = ndi.label(np.isin(candidates, seeded[seeded > 0]), np.ones((3, 3)))
        assert count >= 2
        gaps += found_count > count
        np.testing.assert_array_equal(found.labels, expected)
        assert found.labels.dtype == expected.dtype
    assert gaps, "some candidates hold no seed"


def test_solidity_matches_qhull_on_random_outlines():
    """The monotone-chain hull's area is Qhull's on the same corners."""
    from scipy.spatial import ConvexHull

    from acquisition.segmentation import _solidity

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(400):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        blobs = ndi.binary_dilation(rng.random(shape) < rng.uniform(0.01, 0.3))
        parts, count = ndi.label(blobs)
        if count == 0:
            continue
        mask = ndi.binary_fill_holes(parts == 1)
        ys, xs = np.nonzero(mask)
        corners = np.concatenate(
            [np.stack([ys + dy, xs + dx], axis=1) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)]
        )
        expected = min(1.0, mask.sum() / ConvexHull(corners).volume)
        assert _solidity(mask) == pytest.approx(expected, rel=1e-12)
        checked += 1
    assert checked > 300


@pytest.mark.parametrize("start", [-1.3, 0.0, 0.6, 2.5])
def test_crop_weights_evaluate_the_spline_as_map_coordinates(start):
    """The separable crop (rows' weights, spline coefficients, columns' weights) is
    ``ndi.map_coordinates(order=3, mode="constant")`` on the grid, whether every tap
    lies inside the window (from 2.5 on) or the mirror folds some (near the edge)."""
    from acquisition.segmentation import _cubic_weights

    rng = np.random.default_rng(1)
    window = rng.normal(size=(40, 33))
    ys = start + np.arange(20) * 1.37
    xs = start + np.arange(20) * 1.21
    ys[-1] = math.ceil(ys[-1])  # an integer position: its tap at t = 2 weighs 0
    coefficients = ndi.spline_filter(window, order=3, mode="mirror")
    crop = _cubic_weights(ys, 40) @ coefficients @ _cubic_weights(xs, 33).T
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    expected = ndi.map_coordinates(window, [gy, gx], order=3, mode="constant")
    np.testing.assert_allclose(crop, expected, atol=1e-12, rtol=0)

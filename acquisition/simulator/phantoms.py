"""Cell phantoms: OPD maps in nm of single cells of each simulated cell line.

Suspended cells (``hs895-sk``, ``hs895-t``, ``sw480``, ``sw620``) are built as
volumes projected along the optical axis: OPD(x, y) = integral of (n(x, y, z) -
n_medium) dz, for a cytoplasm body (an ellipsoid whose outline carries low-order
membrane irregularities), blebs on the membrane, a nucleus, nucleoli and a
granular texture. ``sperm`` cells (fixed and dried on glass, the unlabeled
pretraining pool) are a head (ellipsoid with an acrosome cap and vacuoles), a
midpiece and a thin tail, in any orientation.

Every parameter is drawn from a per-line distribution; the distributions and
their sources are tabulated in ``docs/simulator.md`` and in :data:`CELL_LINES`.
Phantoms are rendered band-limited: edges and texture are smoothed to the
optical resolution (about 0.4 um), since no instrument measures finer OPD and
the ground truth must be what an ideal reconstruction can return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import scipy.ndimage as ndi

#: Refractive index of the suspension medium (PBS at 633 nm; e.g. Liu et al.,
#: J. Biophotonics 2016, review "Cell refractive index for cell biology and
#: disease diagnosis").
N_MEDIUM = 1.335
#: Smoothing of every phantom, um: the optical resolution of the simulated
#: objective (lambda / (2 NA) ~ 0.6 um at NA 0.5), so the truth is measurable.
SMOOTHING_UM = 0.4


@dataclass(frozen=True)
class Range:
    """A normal distribution truncated to [low, high]: mean, sd, low, high."""

    mean: float
    sd: float
    low: float
    high: float

    def draw(self, rng: np.random.Generator) -> float:
        if self.sd == 0:
            return self.mean
        for _ in range(100):
            value = rng.normal(self.mean, self.sd)
            if self.low <= value <= self.high:
                return float(value)
        return float(np.clip(self.mean, self.low, self.high))


@dataclass(frozen=True)
class CellLine:
    """Distributions of a suspended cell line's phantom parameters.

    Attributes
    ----------
    name, description
    diameter_um : cell diameter in suspension
    aspect : ratio of the long to the short lateral axis (1 = round)
    height_ratio : axial semi-axis over the lateral mean (flattening under flow)
    delta_n_cytoplasm : cytoplasm RI minus the medium's
    nucleus_ratio : nucleus diameter over cell diameter
    delta_n_nucleus : nucleus RI minus the cytoplasm's
    nucleus_offset : nucleus centre offset, fraction of the cell radius
    nucleoli : (mean count, Poisson); nucleolus_um : diameter;
    delta_n_nucleolus : nucleolus RI minus the nucleus's
    texture_nm : RMS of the granular texture, nm of OPD per um of thickness
    texture_um : correlation length of the texture
    irregularity : RMS relative radius modulation (membrane harmonics 2..8)
    blebs : mean count (Poisson); bleb_um : bleb diameter
    source : where the ranges come from
    """

    name: str
    description: str
    diameter_um: Range
    aspect: Range
    height_ratio: Range
    delta_n_cytoplasm: Range
    nucleus_ratio: Range
    delta_n_nucleus: Range
    nucleus_offset: Range
    nucleoli: float
    nucleolus_um: Range
    delta_n_nucleolus: Range
    texture_nm: Range
    texture_um: Range
    irregularity: Range
    blebs: float
    bleb_um: Range
    source: dict[str, str] = field(default_factory=dict, compare=False)

    def parameter_table(self) -> list[tuple[str, str]]:
        rows = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Range):
                rows.append(
                    (f.name, f"{value.mean:g} +- {value.sd:g} [{value.low:g}, {value.high:g}]")
                )
            elif isinstance(value, float):
                rows.append((f.name, f"{value:g} (Poisson mean)"))
        return rows


_SHARED_SOURCES = {
    "delta_n_cytoplasm": "cytoplasm RI 1.36-1.39 against PBS 1.335 (Liu et al. 2016 review; "
    "Schuermann et al., Biophys J 2016)",
    "delta_n_nucleus": "nucleus RI within +-0.01 of the cytoplasm (Schuermann et al. 2016 find "
    "it lower in HeLa, older work higher): assumption, a small positive excess",
    "delta_n_nucleolus": "nucleoli are the densest compartment, RI about 1.38-1.40 "
    "(Liu et al. 2016)",
    "height_ratio": "suspended cells are nearly spherical; slight flattening in flow: assumption",
    "texture": "granular texture (mitochondria, vesicles, melanosomes): assumption, "
    "calibrated with the nearest-neighbour difficulty check",
    "irregularity, blebs": "membrane ruffles and blebs of suspended cancer cells: assumption",
}

CELL_LINES: dict[str, CellLine] = {
    "hs895-sk": CellLine(
        name="hs895-sk",
        description="Hs 895.Sk: healthy skin fibroblasts (the healthy class of the first pair)",
        diameter_um=Range(16.7, 1.8, 11.0, 22.0),
        aspect=Range(1.12, 0.06, 1.0, 1.35),
        height_ratio=Range(0.92, 0.04, 0.8, 1.0),
        delta_n_cytoplasm=Range(0.0265, 0.004, 0.017, 0.040),
        nucleus_ratio=Range(0.45, 0.05, 0.32, 0.6),
        delta_n_nucleus=Range(0.004, 0.002, 0.0, 0.01),
        nucleus_offset=Range(0.2, 0.08, 0.0, 0.4),
        nucleoli=1.5,
        nucleolus_um=Range(1.2, 0.25, 0.7, 2.0),
        delta_n_nucleolus=Range(0.012, 0.003, 0.005, 0.02),
        texture_nm=Range(0.8, 0.25, 0.2, 1.6),
        texture_um=Range(1.0, 0.15, 0.7, 1.5),
        irregularity=Range(0.03, 0.012, 0.0, 0.07),
        blebs=0.5,
        bleb_um=Range(1.8, 0.4, 1.0, 3.0),
        source={
            "diameter_um": "suspended fibroblasts are 12-20 um across (e.g. Cross et al. 2007 "
            "report 15-20 um for suspended primary cells): assumption within that range",
            "aspect": "fibroblasts stay slightly elongated after trypsinisation: assumption",
            **_SHARED_SOURCES,
        },
    ),
    "hs895-t": CellLine(
        name="hs895-t",
        description="Hs 895.T: melanoma cells of the same patient "
        "(the cancer class of the first pair)",
        diameter_um=Range(14.4, 1.8, 10.0, 21.0),
        aspect=Range(1.05, 0.04, 1.0, 1.25),
        height_ratio=Range(0.95, 0.03, 0.85, 1.0),
        delta_n_cytoplasm=Range(0.0335, 0.004, 0.020, 0.046),
        nucleus_ratio=Range(0.58, 0.06, 0.42, 0.75),
        delta_n_nucleus=Range(0.006, 0.002, 0.0, 0.012),
        nucleus_offset=Range(0.12, 0.06, 0.0, 0.35),
        nucleoli=3.0,
        nucleolus_um=Range(1.6, 0.3, 0.9, 2.5),
        delta_n_nucleolus=Range(0.015, 0.003, 0.008, 0.024),
        texture_nm=Range(1.6, 0.4, 0.6, 2.8),
        texture_um=Range(0.8, 0.12, 0.6, 1.2),
        irregularity=Range(0.04, 0.015, 0.0, 0.09),
        blebs=1.5,
        bleb_um=Range(2.0, 0.5, 1.0, 3.2),
        source={
            "diameter_um": "melanoma cells in suspension 12-20 um: assumption overlapping the "
            "fibroblasts on purpose, so that size alone does not separate the pair",
            "nucleus_ratio": "a high nucleus-to-cytoplasm ratio and prominent nucleoli are "
            "hallmarks of malignancy (standard cytopathology criteria)",
            "texture_nm": "melanosomes add dense granules: assumption",
            **_SHARED_SOURCES,
        },
    ),
    "sw480": CellLine(
        name="sw480",
        description="SW480: primary colon adenocarcinoma (the primary class of the second pair)",
        diameter_um=Range(13.6, 1.5, 9.5, 18.0),
        aspect=Range(1.08, 0.05, 1.0, 1.3),
        height_ratio=Range(0.93, 0.04, 0.82, 1.0),
        delta_n_cytoplasm=Range(0.0285, 0.004, 0.018, 0.040),
        nucleus_ratio=Range(0.55, 0.06, 0.4, 0.7),
        delta_n_nucleus=Range(0.005, 0.002, 0.0, 0.011),
        nucleus_offset=Range(0.15, 0.07, 0.0, 0.35),
        nucleoli=2.0,
        nucleolus_um=Range(1.3, 0.25, 0.8, 2.0),
        delta_n_nucleolus=Range(0.013, 0.003, 0.006, 0.02),
        texture_nm=Range(1.1, 0.3, 0.4, 2.0),
        texture_um=Range(0.9, 0.12, 0.65, 1.3),
        irregularity=Range(0.035, 0.012, 0.0, 0.08),
        blebs=1.0,
        bleb_um=Range(1.8, 0.4, 1.0, 3.0),
        source={
            "diameter_um": "SW480 are a mix of round and spindle-shaped cells, larger than SW620 "
            "(Hewitt et al., J Pathol 2000; Leibovitz et al., Cancer Res 1976): values assumed",
            **_SHARED_SOURCES,
        },
    ),
    "sw620": CellLine(
        name="sw620",
        description="SW620: lymph-node metastasis of the same patient (the metastatic class)",
        diameter_um=Range(11.7, 1.4, 8.5, 17.0),
        aspect=Range(1.05, 0.04, 1.0, 1.25),
        height_ratio=Range(0.95, 0.03, 0.85, 1.0),
        delta_n_cytoplasm=Range(0.0335, 0.004, 0.022, 0.046),
        nucleus_ratio=Range(0.6, 0.06, 0.45, 0.75),
        delta_n_nucleus=Range(0.006, 0.002, 0.0, 0.012),
        nucleus_offset=Range(0.12, 0.06, 0.0, 0.33),
        nucleoli=2.5,
        nucleolus_um=Range(1.4, 0.25, 0.8, 2.1),
        delta_n_nucleolus=Range(0.014, 0.003, 0.007, 0.022),
        texture_nm=Range(1.3, 0.3, 0.5, 2.2),
        texture_um=Range(0.85, 0.12, 0.6, 1.2),
        irregularity=Range(0.03, 0.012, 0.0, 0.07),
        blebs=1.2,
        bleb_um=Range(1.8, 0.4, 1.0, 3.0),
        source={
            "diameter_um": "SW620 are smaller and rounder than SW480 (Hewitt et al. 2000): "
            "values assumed, overlapping SW480 so that size alone does not separate them",
            **_SHARED_SOURCES,
        },
    ),
    # The held-out pair: chosen for the third evaluation task before any result on it was
    # seen, and never used for a choice (docs/evaluation/README.md). Unlike the other two
    # pairs, the cancer line here is the LESS dense one, with a larger, more textured nucleus.
    "mcf10a": CellLine(
        name="mcf10a",
        description="MCF-10A: non-tumorigenic breast epithelial cells "
        "(the healthy class of the held-out pair)",
        diameter_um=Range(15.2, 1.6, 11.0, 20.0),
        aspect=Range(1.06, 0.04, 1.0, 1.25),
        height_ratio=Range(0.94, 0.03, 0.85, 1.0),
        delta_n_cytoplasm=Range(0.0310, 0.0035, 0.021, 0.042),
        nucleus_ratio=Range(0.50, 0.05, 0.36, 0.64),
        delta_n_nucleus=Range(0.004, 0.002, 0.0, 0.010),
        nucleus_offset=Range(0.14, 0.06, 0.0, 0.35),
        nucleoli=1.6,
        nucleolus_um=Range(1.2, 0.25, 0.7, 1.9),
        delta_n_nucleolus=Range(0.012, 0.003, 0.005, 0.02),
        texture_nm=Range(0.9, 0.25, 0.3, 1.7),
        texture_um=Range(0.95, 0.12, 0.7, 1.3),
        irregularity=Range(0.028, 0.010, 0.0, 0.06),
        blebs=0.6,
        bleb_um=Range(1.7, 0.4, 1.0, 2.8),
        source={
            "diameter_um": "suspended MCF-10A about 13-18 um: assumption",
            "delta_n_cytoplasm": "non-tumorigenic breast cells denser than MCF-7 in QPI and "
            "mechanics studies (cancer cells softer, lower mass density): assumption of the "
            "direction, not of the size",
            **_SHARED_SOURCES,
        },
    ),
    "mcf7": CellLine(
        name="mcf7",
        description="MCF-7: breast adenocarcinoma cells (the cancer class of the held-out pair)",
        diameter_um=Range(15.8, 1.9, 11.0, 22.0),
        aspect=Range(1.05, 0.04, 1.0, 1.25),
        height_ratio=Range(0.95, 0.03, 0.85, 1.0),
        delta_n_cytoplasm=Range(0.0280, 0.0035, 0.019, 0.040),
        nucleus_ratio=Range(0.58, 0.06, 0.42, 0.74),
        delta_n_nucleus=Range(0.005, 0.002, 0.0, 0.011),
        nucleus_offset=Range(0.12, 0.06, 0.0, 0.33),
        nucleoli=2.6,
        nucleolus_um=Range(1.5, 0.3, 0.8, 2.4),
        delta_n_nucleolus=Range(0.014, 0.003, 0.007, 0.022),
        texture_nm=Range(1.2, 0.3, 0.5, 2.2),
        texture_um=Range(0.85, 0.12, 0.6, 1.2),
        irregularity=Range(0.040, 0.014, 0.0, 0.085),
        blebs=1.3,
        bleb_um=Range(1.9, 0.45, 1.0, 3.1),
        source={
            "diameter_um": "MCF-7 in suspension about 13-20 um, overlapping MCF-10A on purpose",
            "nucleus_ratio": "a higher nucleus-to-cytoplasm ratio and more, larger nucleoli in "
            "the malignant line (standard cytopathology criteria)",
            **_SHARED_SOURCES,
        },
    ),
}

#: Sperm parameters (human, WHO laboratory manual 2010, chapter 2.15: head 4.1 um
#: (3.7-4.7) long, 2.8 um (2.5-3.2) wide, acrosome 40-70 % of the head, midpiece
#: about 1.5 head lengths, principal piece about 45 um).
SPERM = {
    "head_length_um": Range(4.3, 0.35, 3.5, 5.5),
    "head_width_um": Range(2.9, 0.25, 2.3, 3.6),
    "head_thickness_um": Range(1.0, 0.15, 0.6, 1.4),
    "delta_n_head": Range(0.10, 0.015, 0.06, 0.14),
    "acrosome_fraction": Range(0.55, 0.08, 0.4, 0.7),
    "acrosome_delta_n": Range(-0.02, 0.008, -0.04, 0.0),
    "vacuoles": Range(0.8, 0.0, 0.8, 0.8),  # Poisson mean
    "midpiece_length_um": Range(6.0, 0.6, 4.5, 7.5),
    "midpiece_width_um": Range(0.9, 0.1, 0.6, 1.2),
    "tail_width_um": Range(0.45, 0.05, 0.3, 0.6),
    "tail_length_um": Range(45.0, 3.0, 35.0, 55.0),
    "tail_curvature": Range(0.0, 0.03, -0.08, 0.08),  # 1/um
    "delta_n_tail": Range(0.06, 0.01, 0.03, 0.09),
}
SPERM_SOURCE = (
    "head, acrosome, midpiece and tail sizes: WHO laboratory manual for the examination of "
    "human semen, 5th ed. 2010; dried-cell RI excess 0.06-0.14 over the mounting medium: "
    "assumption (dry protein RI ~1.5 against a mounting medium ~1.4)"
)

ALL_LINES: tuple[str, ...] = ("sperm", *CELL_LINES)


def check_line(name: str) -> str:
    if name not in ALL_LINES:
        raise ValueError(f"unknown cell line {name!r}; known lines: {', '.join(ALL_LINES)}")
    return name


def parse_lines(text: str) -> list[str]:
    """Comma-separated cell line names, each checked; ValueError when none or unknown."""
    lines = [part.strip() for part in text.split(",") if part.strip()]
    if not lines:
        raise ValueError(f"no cell line given; known lines: {', '.join(ALL_LINES)}")
    return [check_line(line) for line in lines]


@dataclass
class Phantom:
    """One cell phantom: OPD in nm on a square grid centred on the cell.

    Attributes
    ----------
    opd_nm : (S, S) float32 OPD map, nm
    pixel_size_um : its pixel size
    line : cell-line name
    params : the drawn parameters (diameter_um, dry_mass_pg, ...)
    """

    opd_nm: np.ndarray
    pixel_size_um: float
    line: str
    params: dict[str, float]


def _grid(size: int, pixel_size_um: float) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) - (size - 1) / 2) * pixel_size_um
    return c[:, None], c[None, :]


def _ellipsoid_thickness(
    y: np.ndarray,
    x: np.ndarray,
    a: float,
    b: float,
    c: float,
    angle: float,
    radius_scale: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Axial thickness (um) of an ellipsoid with lateral semi-axes a, b (rotated)."""
    ca, sa = math.cos(angle), math.sin(angle)
    u = (x * ca + y * sa) / a
    v = (-x * sa + y * ca) / b
    rho2 = (u**2 + v**2) / np.square(radius_scale)
    return 2 * c * np.sqrt(np.clip(1 - rho2, 0, None))


def _extent_um(opd_nm: np.ndarray, pixel_size_um: float) -> float:
    """Diameter of the smallest centred disk that holds the phantom (OPD above 1 nm)."""
    ys, xs = np.nonzero(opd_nm > 1.0)
    if ys.size == 0:
        return 0.0
    c = (opd_nm.shape[0] - 1) / 2
    return float(2 * np.sqrt(((ys - c) ** 2 + (xs - c) ** 2).max()) * pixel_size_um)


def _texture(shape: tuple[int, int], rng: np.random.Generator, corr_px: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ``corr_px``."""
    noise = ndi.gaussian_filter(rng.normal(size=shape), corr_px / 2)
    return noise / max(float(noise.std()), 1e-12)


def render_cell(
    line: str, rng: np.random.Generator, pixel_size_um: float, size: int | None = None
) -> Phantom:
    """Draw one cell of ``line`` and render its OPD at ``pixel_size_um``.

    ``size`` is the side of the square map in pixels (default: the cell plus margin).
    """
    check_line(line)
    if line == "sperm":
        return render_sperm(rng, pixel_size_um, size)
    p = CELL_LINES[line]
    diameter = p.diameter_um.draw(rng)
    aspect = p.aspect.draw(rng)
    a = diameter / 2 * math.sqrt(aspect)
    b = diameter / 2 / math.sqrt(aspect)
    c = diameter / 2 * p.height_ratio.draw(rng)
    angle = rng.uniform(0, math.pi)
    if size is None:
        size = math.ceil((max(a, b) * 2 + 6) / pixel_size_um) | 1
    y, x = _grid(size, pixel_size_um)
    theta = np.arctan2(y, x)

    # Membrane: low-order harmonics of the outline, then blebs on it.
    irregular = p.irregularity.draw(rng)
    modulation = np.ones_like(theta)
    for k in range(2, 9):
        modulation = modulation + irregular / math.sqrt(7) * rng.normal() * np.cos(
            k * theta + rng.uniform(0, 6.3)
        )
    dn_cyto = p.delta_n_cytoplasm.draw(rng)
    thickness = _ellipsoid_thickness(y, x, a, b, c, angle, modulation)
    opd_um = dn_cyto * thickness
    for _ in range(rng.poisson(p.blebs)):
        phi = rng.uniform(0, 2 * math.pi)
        r_bleb = p.bleb_um.draw(rng) / 2
        rim = min(a, b) * 0.98
        by, bx = rim * math.sin(phi), rim * math.cos(phi)
        bleb = _ellipsoid_thickness(y - by, x - bx, r_bleb, r_bleb, r_bleb, 0.0)
        opd_um = np.maximum(opd_um, dn_cyto * np.maximum(thickness, bleb))

    # Nucleus and nucleoli: excess RI over the enclosing compartment.
    nuc_r = p.nucleus_ratio.draw(rng) * diameter / 2
    off = p.nucleus_offset.draw(rng) * (min(a, b) - nuc_r) if min(a, b) > nuc_r else 0.0
    phi = rng.uniform(0, 2 * math.pi)
    ny, nx = off * math.sin(phi), off * math.cos(phi)
    nuc_aspect = 1 + 0.5 * (aspect - 1)
    na, nb = nuc_r * math.sqrt(nuc_aspect), nuc_r / math.sqrt(nuc_aspect)
    nucleus = _ellipsoid_thickness(y - ny, x - nx, na, nb, nuc_r * 0.9, angle)
    dn_nuc = p.delta_n_nucleus.draw(rng)
    opd_um = opd_um + dn_nuc * nucleus
    n_nucleoli = rng.poisson(p.nucleoli)
    dn_nucleolus = p.delta_n_nucleolus.draw(rng)
    for _ in range(n_nucleoli):
        r_n = p.nucleolus_um.draw(rng) / 2
        rr = rng.uniform(0, max(nuc_r - r_n, 0.0) * 0.8)
        ph = rng.uniform(0, 2 * math.pi)
        opd_um = opd_um + dn_nucleolus * _ellipsoid_thickness(
            y - ny - rr * math.sin(ph), x - nx - rr * math.cos(ph), r_n, r_n, r_n, 0.0
        )

    # Granular texture, proportional to the local thickness (more material, more granules).
    tex_rms = p.texture_nm.draw(rng)
    tex_um = p.texture_um.draw(rng)
    body = opd_um > 0
    texture = _texture(opd_um.shape, rng, tex_um / pixel_size_um)
    opd_nm = opd_um * 1000 + tex_rms * texture * thickness * body
    opd_nm = np.clip(ndi.gaussian_filter(opd_nm, SMOOTHING_UM / pixel_size_um), 0, None)
    dry_mass = float(opd_nm.sum()) * 1e-3 * pixel_size_um**2 / 0.18
    params = {
        "diameter_um": diameter,
        "aspect": aspect,
        "delta_n_cytoplasm": dn_cyto,
        "nucleus_ratio": nuc_r * 2 / diameter,
        "nucleoli": float(n_nucleoli),
        "texture_nm": tex_rms,
        "irregularity": irregular,
        "peak_opd_nm": float(opd_nm.max()),
        "dry_mass_pg": dry_mass,
        "extent_um": _extent_um(opd_nm, pixel_size_um),
    }
    return Phantom(opd_nm.astype(np.float32), pixel_size_um, line, params)


def render_sperm(
    rng: np.random.Generator, pixel_size_um: float, size: int | None = None
) -> Phantom:
    """A fixed, dried sperm cell: head with acrosome and vacuoles, midpiece, curved tail."""
    d = {k: r.draw(rng) for k, r in SPERM.items()}
    if size is None:
        size = math.ceil(32.0 / pixel_size_um) | 1
    y, x = _grid(size, pixel_size_um)
    angle = rng.uniform(0, 2 * math.pi)
    ca, sa = math.cos(angle), math.sin(angle)
    # Cell frame: u along the cell's axis (head towards +u), v across; head centred.
    u = x * ca + y * sa
    v = -x * sa + y * ca
    hl, hw, ht = d["head_length_um"] / 2, d["head_width_um"] / 2, d["head_thickness_um"] / 2
    head = _ellipsoid_thickness(v, u, hl, hw, ht, 0.0)
    opd_um = d["delta_n_head"] * head
    # Acrosome: the front part of the head, lower density.
    front = u > hl * (1 - 2 * d["acrosome_fraction"])
    opd_um = opd_um + d["acrosome_delta_n"] * head * front
    for _ in range(rng.poisson(d["vacuoles"])):
        r_v = rng.uniform(0.25, 0.5)
        vu, vv = rng.uniform(-0.3, 0.6) * hl, rng.uniform(-0.4, 0.4) * hw
        opd_um = opd_um - d["delta_n_head"] * 0.6 * _ellipsoid_thickness(
            v - vv, u - vu, r_v, r_v, r_v, 0.0
        )
    # Midpiece and tail along a gently curved centreline behind the head.
    curvature = d["tail_curvature"]
    s = -(u + hl)  # arc length behind the head, approximately
    centre = 0.5 * curvature * np.clip(s, 0, None) ** 2
    dist = np.abs(v - centre)
    mid_len = d["midpiece_length_um"]
    width = np.where(s < mid_len, d["midpiece_width_um"], d["tail_width_um"])
    dn = np.where(s < mid_len, d["delta_n_head"] * 0.8, d["delta_n_tail"])
    tube = 2 * np.sqrt(np.clip((width / 2) ** 2 - dist**2, 0, None))
    along = (s > -0.2) & (s < mid_len + d["tail_length_um"])
    opd_um = np.maximum(opd_um, dn * tube * along)
    opd_nm = np.clip(ndi.gaussian_filter(opd_um * 1000, SMOOTHING_UM / pixel_size_um), 0, None)
    params = {
        "head_length_um": d["head_length_um"],
        "head_width_um": d["head_width_um"],
        "diameter_um": d["head_length_um"],
        "extent_um": _extent_um(opd_nm, pixel_size_um),
        "peak_opd_nm": float(opd_nm.max()),
        "dry_mass_pg": float(opd_nm.sum()) * 1e-3 * pixel_size_um**2 / 0.18,
    }
    return Phantom(opd_nm.astype(np.float32), pixel_size_um, "sperm", params)


#: Red blood cells (human, discocytes): the Evans-Fung profile (Evans and Fung,
#: Microvasc. Res. 4, 1972): thickness sqrt(1 - rho^2) (c0 + c2 rho^2 + c4 rho^4)
#: with c2 = 7.83 um, c4 = -4.39 um and c0 = 0.81 um for their mean cell (diameter
#: 7.82 um, rim 2.6 um, centre 0.8 um: a rim about 3 times the centre); haemoglobin
#: raises the RI to about 1.40 (Park et al., PNAS 105, 2008: 1.39-1.42).
RBC = {
    "diameter_um": Range(7.8, 0.5, 6.5, 9.0),
    "rim_over_centre": Range(2.0, 0.6, 1.3, 3.2),
    "delta_n": Range(0.065, 0.005, 0.05, 0.08),
    "tilt": Range(0.0, 0.08, -0.2, 0.2),  # relative thickness change across the cell
    # two thicker and two thinner quarters of the rim (a saddle-shaped, slightly
    # cupped disc): QPI images of RBCs often show such an uneven ring
    "rim_unevenness": Range(0.15, 0.12, 0.0, 0.45),
    "irregularity": Range(0.02, 0.01, 0.0, 0.05),
}
_RBC_C2_UM, _RBC_C4_UM = 7.83, -4.39


def _rbc_profile(rho: np.ndarray, c0: float) -> np.ndarray:
    """Evans-Fung thickness (um) at relative radius ``rho``, centre thickness ``c0``."""
    rho2 = np.square(np.clip(rho, 0, 1))
    return np.sqrt(1 - rho2) * (c0 + _RBC_C2_UM * rho2 + _RBC_C4_UM * rho2**2)


def _rbc_centre_thickness(rim_over_centre: float) -> float:
    """The Evans-Fung c0 (um) whose rim is ``rim_over_centre`` times the centre."""
    rho = np.linspace(0, 1, 2001)
    lo, hi = 0.05, 10.0  # the ratio falls as c0 grows
    for _ in range(60):
        c0 = (lo + hi) / 2
        if float(_rbc_profile(rho, c0).max()) / c0 > rim_over_centre:
            lo = c0
        else:
            hi = c0
    return (lo + hi) / 2


def render_rbc(
    rng: np.random.Generator,
    pixel_size_um: float,
    size: int | None = None,
    *,
    diameter_um: float | None = None,
    rim_over_centre: float | None = None,
    rim_unevenness: float | None = None,
) -> Phantom:
    """A red blood cell: a biconcave disc whose OPD dips in the centre.

    Not one of the simulated lines (:data:`ALL_LINES`): a test object for the
    segmentation of real blood samples, where every cell carries a dimple.

    Parameters
    ----------
    rng : draws the parameters of :data:`RBC` that are not given
    pixel_size_um : pixel size of the map
    size : side of the square map in pixels (default: the cell plus margin)
    diameter_um : the disc's diameter (default: drawn)
    rim_over_centre : the rim's thickness over the centre's, above 1 (default:
        drawn; 1.3 is a shallow dimple, 3 the Evans-Fung mean cell)
    rim_unevenness : relative amplitude of the rim's thickness variation around
        the cell (two thick and two thin quarters; default: drawn)
    """
    d = {k: r.draw(rng) for k, r in RBC.items()}
    diameter = diameter_um if diameter_um is not None else d["diameter_um"]
    ratio = rim_over_centre if rim_over_centre is not None else d["rim_over_centre"]
    if not ratio > 1:
        raise ValueError(f"rim_over_centre must be above 1, got {ratio}")
    if size is None:
        size = math.ceil((diameter + 4) / pixel_size_um) | 1
    y, x = _grid(size, pixel_size_um)
    theta = np.arctan2(y, x)
    modulation = np.ones_like(theta)
    for k in range(2, 6):
        modulation = modulation + d["irregularity"] / 2 * rng.normal() * np.cos(
            k * theta + rng.uniform(0, 6.3)
        )
    radius = diameter / 2
    rho = np.hypot(y, x) / (radius * modulation)
    c0 = _rbc_centre_thickness(ratio)
    # Scale to the Evans-Fung rim (2.6 um): a shallower dimple fills the centre in.
    scale = 2.6 / float(_rbc_profile(np.linspace(0, 1, 2001), c0).max())
    phi = rng.uniform(0, 2 * math.pi)
    tilt = 1 + d["tilt"] * (x * math.cos(phi) + y * math.sin(phi)) / radius
    uneven = rim_unevenness if rim_unevenness is not None else d["rim_unevenness"]
    saddle = 1 + uneven * np.clip(rho / 0.7, 0, 1) * np.cos(2 * (theta - rng.uniform(0, math.pi)))
    thickness = _rbc_profile(rho, c0) * scale * tilt * saddle * (rho < 1)
    opd_nm = d["delta_n"] * thickness * 1000
    opd_nm = np.clip(ndi.gaussian_filter(opd_nm, SMOOTHING_UM / pixel_size_um), 0, None)
    params = {
        "diameter_um": diameter,
        "rim_over_centre": ratio,
        "delta_n": d["delta_n"],
        "tilt": d["tilt"],
        "rim_unevenness": uneven,
        "peak_opd_nm": float(opd_nm.max()),
        "dry_mass_pg": float(opd_nm.sum()) * 1e-3 * pixel_size_um**2 / 0.18,
        "extent_um": _extent_um(opd_nm, pixel_size_um),
    }
    return Phantom(opd_nm.astype(np.float32), pixel_size_um, "rbc", params)

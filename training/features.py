"""The ``features`` method: per-cell QPI quantities and an L2 logistic regression.

:class:`QPIFeatures` is a fixed PyTorch module (no trained weights): from each OPD
crop it computes the quantities of :data:`FEATURES`, each with its unit. The cell's
mask is the crop's pixels above ``max(5 sigma, 0.1 peak)``, sigma the standard
deviation of the crop's outer band (8 px wide: background) and peak the crop's
largest OPD; 10 % of the peak is where the segmentation's mask ends too (20 % of
an Otsu threshold near half the peak). Everything is reductions, a sort and fixed
separable Gaussian blurs (written as products with band matrices, ONNX Runtime's
fastest way to run them), so it exports to ONNX like every network, and it is
invariant to the 8 rotations and reflections of a crop (up to float rounding).

:class:`FeatureClassifier` standardises the features with the mean and standard
deviation of the training crops and applies a multinomial logistic regression with
an L2 penalty (:func:`fit_logistic`), its strength chosen by cross-validation on the
training crops only (:func:`choose_l2`). It answers logits; the export adds the
softmax of the logits over the temperature fitted on the cross-validation's
out-of-fold logits (:func:`fit_features`), as for every network.

The model takes OPD in nm itself: its manifest's normalisation is
:data:`FEATURE_NORMALIZATION`, the identity on -10 to 10 um of OPD (far beyond any
cell), and the module undoes whatever linear normalisation it is built with, so the
features are those of the crop in nm.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from acquisition.segmentation import REFRACTIVE_INCREMENT_UM3_PER_PG
from models.manifest import Normalization

from .calibration import fitted_record, nll, softmax, uncalibrated
from .splits import stratified_folds

#: The features, in the order of the model's feature vector: (name, unit).
FEATURES: tuple[tuple[str, str], ...] = (
    ("area_um2", "um^2"),
    ("dry_mass_pg", "pg"),
    ("mean_opd_nm", "nm"),
    ("peak_opd_nm", "nm"),
    ("median_opd_nm", "nm"),
    ("p90_opd_nm", "nm"),
    ("opd_std_nm", "nm"),
    ("opd_skewness", "1"),
    ("opd_excess_kurtosis", "1"),
    # sqrt of the ratio of the mask's second-moment eigenvalues: 1 for a disc, a/b
    # for an ellipse of semi-axes a >= b
    ("aspect_ratio", "1"),
    # the mask's radius of gyration over that of a disc of the same area: 1 for a
    # disc, larger for any other outline
    ("gyration_ratio", "1"),
    # mean square of OPD minus its local mean (a Gaussian of sigma 0.5 um or 1.5 um
    # over the mask's pixels), over the mask eroded by sigma (the cell's interior)
    ("texture_0.5um_nm2", "nm^2"),
    ("texture_1.5um_nm2", "nm^2"),
    # mean OPD in rings around the OPD centre of mass, radii in quarters of the
    # equivalent radius sqrt(area / pi), over the peak OPD
    ("ring_0-0.25_fraction", "1"),
    ("ring_0.25-0.5_fraction", "1"),
    ("ring_0.5-0.75_fraction", "1"),
    ("ring_0.75-1_fraction", "1"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(name for name, _ in FEATURES)

#: The features model's input: OPD in nm as it is (clipped to +-10 um).
FEATURE_NORMALIZATION = Normalization(-1e4, 1e4, -1e4, 1e4)
#: Mask threshold: this many background standard deviations ...
NOISE_SIGMAS = 5.0
#: ... or this fraction of the crop's peak OPD, whichever is higher.
PEAK_FRACTION = 0.1
#: Width of the crop's outer band that measures the background, pixels.
BORDER_PX = 8
#: Gaussian scales of the texture energies, um.
TEXTURE_SIGMAS_UM = (0.5, 1.5)
#: Outer radii of the rings, in equivalent radii.
RING_EDGES = (0.25, 0.5, 0.75, 1.0)
#: The L2 strengths cross-validation chooses from (per crop: the loss is the mean
#: cross-entropy plus l2 / 2 times the squared weights of the standardised features).
L2_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: Used when a class has fewer than two training crops (no cross-validation).
DEFAULT_L2 = 0.1
CV_FOLDS = 5
_EPS = 1e-6


def _gaussian_kernel(sigma_px: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma_px))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma_px**2))
    return (k / k.sum()).float()


def _band(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) matrix M with ``x @ M`` the 1-D correlation of each row of x with the
    symmetric ``kernel``, zeros beyond the ends (``conv1d`` with padding r): M[j, i]
    = kernel[j - i + r] where |j - i| <= r. Symmetric, so ``M @ x`` does the columns."""
    r = (kernel.numel() - 1) // 2
    offset = torch.arange(n).view(-1, 1) - torch.arange(n).view(1, -1) + r
    inside = (offset >= 0) & (offset <= 2 * r)
    return torch.where(inside, kernel[offset.clamp(0, 2 * r)], torch.zeros(()))


class QPIFeatures(nn.Module):
    """(N, 1, H, W) normalised OPD crops -> (N, len(FEATURES)) QPI features.

    Parameters
    ----------
    crop_size : H = W of the crops, pixels
    pixel_size_um : the crops' pixel size
    norm : the normalisation the crops went through (undone first)
    """

    ys: torch.Tensor
    xs: torch.Tensor
    border: torch.Tensor
    bands: torch.Tensor

    def __init__(
        self, crop_size: int, pixel_size_um: float, norm: Normalization = FEATURE_NORMALIZATION
    ) -> None:
        super().__init__()
        if crop_size <= 2 * BORDER_PX:
            raise ValueError(f"crops must be larger than {2 * BORDER_PX} px, got {crop_size}")
        self.crop_size = crop_size
        self.pixel_size_um = float(pixel_size_um)
        # x = (opd - lo) * gain + out_min  ->  opd = (x - out_min) / gain + lo
        self.gain = (norm.out_max - norm.out_min) / (norm.opd_max_nm - norm.opd_min_nm)
        self.out_min = norm.out_min
        self.opd_min = norm.opd_min_nm
        n = crop_size
        # Pixel centres in um, symmetric about the crop's centre ((n - 1) / 2, where
        # the segmentation puts the cell's centre of mass): the 8 dihedral transforms
        # map this grid onto itself.
        coords = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * self.pixel_size_um
        self.register_buffer("ys", coords.view(1, n, 1).expand(1, n, n).contiguous())
        self.register_buffer("xs", coords.view(1, 1, n).expand(1, n, n).contiguous())
        border = torch.ones(n, n)
        border[BORDER_PX:-BORDER_PX, BORDER_PX:-BORDER_PX] = 0
        self.register_buffer("border", border.view(1, n * n))
        self.kernels = nn.ParameterList()
        self.erosions: list[int] = []
        bands = []
        for sigma_um in TEXTURE_SIGMAS_UM:
            sigma_px = sigma_um / self.pixel_size_um
            kernel = _gaussian_kernel(sigma_px)
            self.kernels.append(nn.Parameter(kernel, requires_grad=False))
            self.erosions.append(math.ceil(sigma_px))
            bands.append(_band(kernel, n))
        # Not saved: rebuilt from the kernels (a model saved before them loads as is).
        self.register_buffer("bands", torch.stack(bands), persistent=False)

    def _blur(self, opd: torch.Tensor, index: int) -> torch.Tensor:
        """The separable Gaussian ``index`` with zeros beyond the crop, as two matrix
        products with its band matrix: what two 1-D convolutions compute, at a
        fraction of their cost in ONNX Runtime (a convolution of one channel with a
        long kernel is its slowest case; a matrix product its fastest)."""
        band = self.bands[index]
        return torch.matmul(band, torch.matmul(opd, band))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.crop_size
        pixel_area = self.pixel_size_um**2
        opd4 = (x - self.out_min) / self.gain + self.opd_min  # (N, 1, H, W) nm
        opd = opd4.reshape(-1, n * n)
        border = self.border
        band = border.sum()
        band_mean = (opd * border).sum(1, keepdim=True) / band
        sigma = (((opd - band_mean) ** 2 * border).sum(1, keepdim=True) / band).sqrt()
        peak_all = opd.amax(1, keepdim=True)
        threshold = torch.maximum(NOISE_SIGMAS * sigma, PEAK_FRACTION * peak_all)
        mask = (opd > threshold).float()
        count = mask.sum(1, keepdim=True)
        safe = count.clamp(min=1.0)
        area = count * pixel_area
        masked = opd * mask
        total = masked.sum(1, keepdim=True)
        dry_mass = total * 1e-3 * pixel_area / REFRACTIVE_INCREMENT_UM3_PER_PG
        mean = total / safe
        peak = torch.where(count > 0, peak_all, torch.zeros_like(peak_all))
        centred = (opd - mean) * mask
        # Powers as products: ONNX Runtime's Pow is several times slower than Mul.
        centred2 = centred * centred
        var = centred2.sum(1, keepdim=True) / safe
        std = var.sqrt()
        scale = std.clamp(min=_EPS)
        skew = (centred2 * centred).sum(1, keepdim=True) / safe / scale**3
        kurt = (centred2 * centred2).sum(1, keepdim=True) / safe / scale**4 - 3 * (
            count > 0
        ).float()
        # Percentiles: the mask's values first in descending order, linear interpolation
        # between order statistics (NumPy's default). The median, the deepest of them,
        # reads descending rank ceil((count - 1) / 2) <= n * n // 2 at most: the
        # largest n * n // 2 + 1 values are all it needs (half the sort).
        ranked = torch.topk(
            torch.where(mask > 0, opd, torch.full_like(opd, -1e30)), n * n // 2 + 1
        )[0]
        median = self._quantile(ranked, count, 0.5)
        p90 = self._quantile(ranked, count, 0.9)
        # Shape: second moments of the mask.
        ys, xs = self.ys.reshape(1, -1), self.xs.reshape(1, -1)
        my = (ys * mask).sum(1, keepdim=True) / safe
        mx = (xs * mask).sum(1, keepdim=True) / safe
        dy, dx = (ys - my) * mask, (xs - mx) * mask
        a = (dy**2).sum(1, keepdim=True) / safe
        c = (dx**2).sum(1, keepdim=True) / safe
        b = (dy * dx).sum(1, keepdim=True) / safe
        half_sum, root = (a + c) / 2, (((a - c) / 2) ** 2 + b**2).sqrt()
        major, minor = half_sum + root, (half_sum - root).clamp(min=0)
        # A pixel of side p has variance p^2 / 12 of its own along each axis.
        own = pixel_area / 12
        aspect = ((major + own) / (minor + own)).sqrt()
        equivalent = (area / math.pi).sqrt()  # um
        gyration = (2 * (a + c + 2 * own)).sqrt() / equivalent.clamp(min=_EPS)
        gyration = torch.where(count > 0, gyration, torch.zeros_like(gyration))
        # Texture: high-pass energy over the mask's interior; the local mean is the
        # mask's own (a normalised convolution), so the background beyond the cell's
        # edge does not count as texture.
        textures = []
        mask4 = mask.view(-1, 1, n, n)
        for index, erosion in enumerate(self.erosions):
            local = self._blur(opd4 * mask4, index) / self._blur(mask4, index).clamp(min=_EPS)
            high = (opd4 - local).reshape(-1, n * n)
            k = 2 * erosion + 1
            inner = 1 - nn.functional.max_pool2d(1 - mask4, k, stride=1, padding=erosion)
            inner = inner.reshape(-1, n * n)
            textures.append(
                (high**2 * inner).sum(1, keepdim=True) / inner.sum(1, keepdim=True).clamp(min=1.0)
            )
        # Radial profile around the OPD centre of mass.
        weights = masked.clamp(min=0)
        weight = weights.sum(1, keepdim=True).clamp(min=_EPS)
        cy = (ys * weights).sum(1, keepdim=True) / weight
        cx = (xs * weights).sum(1, keepdim=True) / weight
        radius = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt() / equivalent.clamp(min=_EPS)
        rings = []
        inner_edge = 0.0
        for edge in RING_EDGES:
            ring = ((radius >= inner_edge) & (radius < edge)).float()
            ring_mean = (opd * ring).sum(1, keepdim=True) / ring.sum(1, keepdim=True).clamp(min=1.0)
            rings.append(ring_mean / peak.clamp(min=1.0))
            inner_edge = edge
        return torch.cat(
            [
                area,
                dry_mass,
                mean,
                peak,
                median,
                p90,
                std,
                skew,
                kurt,
                aspect,
                gyration,
                *textures,
                *rings,
            ],
            dim=1,
        )

    @staticmethod
    def _quantile(ranked: torch.Tensor, count: torch.Tensor, q: float) -> torch.Tensor:
        """The q-quantile of the first ``count`` values of each row of ``ranked``
        (descending)."""
        last = (count - 1).clamp(min=0)
        position = q * last
        lo = position.floor()
        frac = position - lo
        hi = torch.minimum(lo + 1, last)
        # Ascending rank i is descending rank count - 1 - i.
        v_lo = torch.gather(ranked, 1, (last - lo).long())
        v_hi = torch.gather(ranked, 1, (last - hi).long())
        value = v_lo + frac * (v_hi - v_lo)
        return torch.where(count > 0, value, torch.zeros_like(value))


class FeatureClassifier(nn.Module):
    """QPI features, standardised, through a linear layer: (N, 1, H, W) -> logits.

    Parameters
    ----------
    features : the feature module
    mean, std : (F,) the training crops' feature mean and standard deviation
    weight : (classes, F) and bias : (classes,) of the logistic regression
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        features: QPIFeatures,
        mean: np.ndarray,
        std: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
    ) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.features(x) - self.mean) / self.std
        return self.linear(z)


def extract(features: QPIFeatures, x: np.ndarray, batch: int = 128) -> np.ndarray:
    """(N, 1, H, W) normalised crops -> (N, F) float64 features."""
    with torch.no_grad():
        parts = [
            features(torch.from_numpy(x[i : i + batch])).double().numpy()
            for i in range(0, len(x), batch)
        ]
    return np.concatenate(parts) if parts else np.zeros((0, len(FEATURES)))


def standardisation(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each feature (1 where a feature is constant)."""
    mean = z.mean(0)
    std = z.std(0)
    return mean, np.where(std > 1e-9 * np.maximum(np.abs(mean), 1.0), std, 1.0)


def fit_logistic(
    z: np.ndarray, y: np.ndarray, classes: int, l2: float
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features ``z`` (N, F): minimise
    the mean cross-entropy plus ``l2`` / 2 times the squared weights (not the biases),
    a convex problem solved by L-BFGS in float64. Returns (weight (classes, F), bias)."""
    zt = torch.from_numpy(np.asarray(z, dtype=np.float64))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    w = torch.zeros(classes, zt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(zt @ w.T + b, yt) + 0.5 * l2 * (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().numpy().copy(), b.detach().numpy().copy()


def cv_folds(y: np.ndarray, classes: int, seed: int) -> list[np.ndarray] | None:
    """The cross-validation's test folds of the training crops (stratified, up to
    :data:`CV_FOLDS`); None when a class has fewer than two crops."""
    smallest = min(int((y == c).sum()) for c in range(classes))
    folds = min(CV_FOLDS, smallest)
    return stratified_folds(y, folds, seed) if folds >= 2 else None


def cross_validated_logits(
    z: np.ndarray, y: np.ndarray, classes: int, l2: float, tests: list[np.ndarray]
) -> np.ndarray:
    """(N, classes) out-of-fold logits of the training crops' raw features ``z``: each
    test fold's from the regression standardised and fitted on the other folds."""
    logits = np.zeros((len(y), classes))
    for test in tests:
        train = np.setdiff1d(np.arange(len(y)), test)
        mean, std = standardisation(z[train])
        weight, bias = fit_logistic((z[train] - mean) / std, y[train], classes, l2)
        logits[test] = ((z[test] - mean) / std) @ weight.T + bias
    return logits


def choose_l2(
    z: np.ndarray, y: np.ndarray, classes: int, seed: int
) -> tuple[float, float | None, float | None]:
    """The L2 strength of :data:`L2_GRID` with the lowest cross-validated log-loss on
    the training crops' raw features ``z`` (the folds of :func:`cv_folds`, each
    standardised on its own training part; ties go to the stronger penalty).
    Returns (l2, its cross-validated accuracy, its log-loss); :data:`DEFAULT_L2` and
    None when a class has fewer than two crops."""
    tests = cv_folds(y, classes, seed)
    if tests is None:
        return DEFAULT_L2, None, None
    best: tuple[float, float, float] | None = None
    for l2 in sorted(L2_GRID, reverse=True):
        logits = cross_validated_logits(z, y, classes, l2, tests)
        loss = nll(logits, y)
        if best is None or loss < best[2] - 1e-12:
            best = (l2, float((logits.argmax(1) == y).mean()), loss)
    assert best is not None
    return best


@dataclass(frozen=True)
class FittedFeatures:
    """A trained :class:`FeatureClassifier`, the normalisation of its input and the
    temperature of its probabilities (the export divides the logits by it too)."""

    model: FeatureClassifier
    norm: Normalization
    temperature: float = 1.0

    def logits(self, opd: np.ndarray) -> np.ndarray:
        """(N, H, W) OPD in nm -> (N, classes) logits (before the temperature)."""
        x = torch.from_numpy(self.norm.apply(opd))[:, None]
        with torch.no_grad():
            return self.model(x).numpy()

    def predict_proba(self, opd: np.ndarray) -> np.ndarray:
        """(N, H, W) OPD in nm -> (N, classes) calibrated probabilities."""
        return softmax(self.logits(opd), self.temperature)


def fit_features(
    opd: np.ndarray,
    labels: np.ndarray,
    classes: int,
    pixel_size_um: float,
    seed: int = 0,
    l2: float | None = None,
) -> tuple[FittedFeatures, dict[str, Any]]:
    """The features method on (N, H, W) OPD crops in nm with ``labels``: the
    standardisation from these crops, the L2 strength by :func:`choose_l2` (unless
    ``l2`` is given), then the regression on all of them. Returns the model and a
    record (train size, the chosen L2 and its cross-validated accuracy, seconds, per
    feature its unit, mean, standard deviation and coefficients, and ``calibration``).

    The temperature is fitted on the out-of-fold logits of every training crop at the
    chosen L2 (:func:`cross_validated_logits`): the regression's own logits of the
    crops it was fitted on are over-confident, and with 10 labels a held-out split
    would leave 2 crops, against 10 out-of-fold ones. Without cross-validation (a
    class of one crop), or on fewer crops than :data:`training.calibration.MIN_CROPS`,
    it stays 1."""
    started = time.monotonic()
    norm = FEATURE_NORMALIZATION
    features = QPIFeatures(opd.shape[1], pixel_size_um, norm).eval()
    z = extract(features, norm.apply(opd)[:, None])
    y = np.asarray(labels, dtype=np.int64)
    cv_accuracy: float | None = None
    cv_loss: float | None = None
    if l2 is None:
        l2, cv_accuracy, cv_loss = choose_l2(z, y, classes, seed)
    mean, std = standardisation(z)
    weight, bias = fit_logistic((z - mean) / std, y, classes, l2)
    model = FeatureClassifier(features, mean, std, weight, bias).eval()
    tests = cv_folds(y, classes, seed)
    if tests is None:
        calibration = uncalibrated("a class has fewer than two crops: no cross-validation")
    else:
        oof = cross_validated_logits(z, y, classes, l2, tests)
        calibration = fitted_record(oof, y, "out-of-fold")
        if calibration["method"] != "none":
            calibration["folds"] = len(tests)
    record: dict[str, Any] = {
        "train_size": len(y),
        "l2": l2,
        "l2_grid": list(L2_GRID),
        "cv_accuracy": None if cv_accuracy is None else round(cv_accuracy, 4),
        "cv_log_loss": None if cv_loss is None else round(cv_loss, 4),
        "train_seconds": round(time.monotonic() - started, 2),
        "features": [
            {
                "name": name,
                "unit": unit,
                "mean": float(mean[i]),
                "std": float(std[i]),
                "coefficients": [float(v) for v in weight[:, i]],
            }
            for i, (name, unit) in enumerate(FEATURES)
        ],
        "calibration": calibration,
    }
    return FittedFeatures(model, norm, float(calibration["temperature"])), record

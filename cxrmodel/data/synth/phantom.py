"""Grey-scale chest-radiograph phantoms with one visual sign per finding.

Coordinates are normalised: x and y run from -1 to 1 across the image, x to the right and
y downwards. Images are in PA convention: the patient's right lung is on the image's left
and the heart bulges to the image's right. Dense tissue is bright, air is dark.

Each finding draws a sign where a radiologist would look for it, sized so that it survives
downsampling to a 64-pixel model input:

=================== ==========================================================================
Finding             Sign
=================== ==========================================================================
Cardiomegaly        heart shadow widened (cardiothoracic ratio well above 0.5)
Effusion            dense basal fluid with a meniscus, blunting the costophrenic angle
Pneumothorax        apical-lateral black crescent with no lung markings behind a pleural line
Nodule              one to three small, sharp, round opacities
Mass                one large round opacity
Atelectasis         oblique plate-like band and an elevated hemidiaphragm (volume loss)
Infiltration        several small ill-defined patches scattered in both lungs
Consolidation       homogeneous upper-zone opacity with a flat lower border and air bronchograms
Pneumonia           mottled lower-zone cloud in one lung
Edema               bilateral perihilar "bat-wing" haze with basal septal lines
Emphysema           hyperlucent, over-expanded lungs with flattened diaphragm
Fibrosis            coarse reticular net in the lower, peripheral lungs
Pleural_Thickening  dense band along the lateral chest wall with an apical cap
Hernia              retrocardiac round lucency with an air-fluid level
=================== ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class Anatomy:
    """Per-patient geometry; follow-up studies of one patient share it."""

    shift_x: float
    shift_y: float
    scale: float
    lung_width: float
    lung_height: float
    heart_width: float
    heart_height: float
    dome_right: float
    dome_left: float
    rib_phase: float
    brightness: float


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a plausible adult thorax."""
    return Anatomy(
        shift_x=rng.normal(0, 0.02),
        shift_y=rng.normal(0, 0.02),
        scale=rng.uniform(0.94, 1.04),
        lung_width=rng.uniform(0.25, 0.29),
        lung_height=rng.uniform(0.53, 0.60),
        heart_width=rng.uniform(0.23, 0.27),
        heart_height=rng.uniform(0.17, 0.21),
        dome_right=rng.uniform(-0.02, 0.02),
        dome_left=rng.uniform(0.0, 0.04),
        rib_phase=rng.uniform(0, 0.05),
        brightness=rng.uniform(0.9, 1.1),
    )


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(ax, ax, indexing="ij")
    return x, y


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of ``d < 0`` with an edge of width ``edge``."""
    return 1.0 / (1.0 + np.exp(np.clip(d / edge, -30, 30)))


def _ellipse(x, y, cx, cy, ax, ay, edge=0.02) -> np.ndarray:
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return _soft(r - 1.0, edge / max(min(ax, ay), 1e-3))


def _disc(x, y, cx, cy, r, edge=0.01) -> np.ndarray:
    return _soft(np.hypot(x - cx, y - cy) - r, edge)


def _blob(x, y, cx, cy, sigma) -> np.ndarray:
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))


def _segment(x, y, p0, p1, half_width, edge=0.01) -> np.ndarray:
    """Soft thick line segment from ``p0`` to ``p1``."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    d = np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))
    return _soft(d - half_width, edge)


def render_phantom(
    findings: frozenset[str] | set[str],
    anatomy: Anatomy,
    rng: np.random.Generator,
    size: int = 256,
    view: str = "PA",
) -> np.ndarray:
    """Render one radiograph phantom as uint8 ``[size, size]``."""
    x0, y0 = _grid(size)
    x = (x0 - anatomy.shift_x) / anatomy.scale
    y = (y0 - anatomy.shift_y) / anatomy.scale
    a = anatomy
    if "Emphysema" in findings:
        a = replace(a, lung_height=a.lung_height * 1.13, lung_width=a.lung_width * 1.08, dome_right=0.1, dome_left=0.1)
    heart_scale = 1.08 if view == "AP" else 1.0  # AP films magnify the heart a little
    if "Cardiomegaly" in findings:
        heart_scale *= 1.55

    img = np.full((size, size), 0.06, dtype=np.float32)
    img += 0.40 * _ellipse(x, y, 0.0, 0.08, 0.86, 0.98, edge=0.04)  # soft tissue of the trunk
    img += 0.08 * _ellipse(x, y, 0.0, 0.95, 0.95, 0.35, edge=0.05)  # abdomen
    img += 0.15 * _segment(x, y, (0.0, -1.0), (0.0, 0.4), 0.1, edge=0.03)  # spine / mediastinum

    # Lungs: right (image left) and left (image right), bottoms cut by the diaphragm domes.
    lungs = []
    for side, cx, dome in ((-1, -0.37, a.dome_right), (1, 0.37, a.dome_left)):
        height = a.lung_height
        if "Atelectasis" in findings and side == -1:
            height *= 0.88  # volume loss lifts the right hemidiaphragm
        cy = -0.02 + dome * 0.5 - (a.lung_height - height)
        lung = _ellipse(x, y, cx, cy, a.lung_width, height, edge=0.025)
        lungs.append(lung)
    lung_mask = np.clip(lungs[0] + lungs[1], 0, 1)
    lucency = 0.30 if "Emphysema" not in findings else 0.40
    img -= lucency * lung_mask

    # Ribs: faint posterior arcs.
    rib = np.zeros_like(img)
    for k in range(9):
        yk = -0.62 + 0.15 * k + a.rib_phase + 0.18 * x**2
        rib += np.exp(-((y - yk) ** 2) / (2 * 0.012**2))
    img += 0.05 * rib * _ellipse(x, y, 0.0, 0.0, 0.8, 0.8, edge=0.05)

    # Lung markings: smooth texture inside the lungs (absent where there is pneumothorax).
    markings = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma=size / 128)
    markings /= markings.std() + 1e-6
    img += 0.025 * markings * lung_mask

    # Heart: bulges to the image's right.
    heart = _ellipse(x, y, 0.10, 0.30, a.heart_width * heart_scale, a.heart_height * min(heart_scale, 1.3), edge=0.03)
    img = img * (1 - heart) + 0.52 * heart

    side = -1 if rng.random() < 0.5 else 1
    lung_of = {-1: lungs[0], 1: lungs[1]}

    def pick_point_in_lung(lung_side: int, y_lo: float, y_hi: float) -> tuple[float, float]:
        cx = 0.37 * lung_side
        return cx + rng.uniform(-0.12, 0.12), rng.uniform(y_lo, y_hi)

    if "Effusion" in findings:
        sides = (-1, 1) if rng.random() < 0.3 else (side,)
        for s in sides:
            level = rng.uniform(0.30, 0.40)
            meniscus = y > level - 0.35 * np.clip(s * (x - 0.37 * s) / 0.25, 0, 1.2)
            img += 0.42 * lung_of[s] * meniscus
    if "Pneumothorax" in findings:
        s = side
        cx, cy = 0.37 * s, -0.02
        r = np.sqrt(((x - cx) / a.lung_width) ** 2 + ((y - cy) / a.lung_height) ** 2)
        upper_lateral = (y < 0.1) & (s * (x - cx) > -0.05)
        crescent = lung_of[s] * (r > 0.62) * upper_lateral
        img = img * (1 - crescent) + 0.0 * crescent
        img += 0.35 * np.exp(-((r - 0.62) ** 2) / (2 * 0.025**2)) * upper_lateral * lung_of[s]
    if "Nodule" in findings:
        for _ in range(rng.integers(1, 4)):
            cx, cy = pick_point_in_lung(int(rng.choice([-1, 1])), -0.35, 0.2)
            img += 0.45 * _disc(x, y, cx, cy, rng.uniform(0.06, 0.075), edge=0.008)
    if "Mass" in findings:
        cx, cy = pick_point_in_lung(side, -0.3, 0.15)
        img += 0.42 * _disc(x, y, cx, cy, rng.uniform(0.15, 0.2), edge=0.015)
    if "Atelectasis" in findings:
        s = -1
        cy = rng.uniform(0.1, 0.25)
        p0, p1 = (0.37 * s - 0.18, cy - 0.06), (0.37 * s + 0.14, cy + 0.06)
        img += 0.38 * _segment(x, y, p0, p1, 0.035) * lung_of[s]
    if "Infiltration" in findings:
        for _ in range(rng.integers(5, 9)):
            cx, cy = pick_point_in_lung(int(rng.choice([-1, 1])), -0.4, 0.35)
            img += 0.22 * _blob(x, y, cx, cy, rng.uniform(0.06, 0.09)) * lung_mask
    if "Consolidation" in findings:
        s = side
        floor = rng.uniform(-0.12, -0.02)
        upper = lung_of[s] * _soft(y - floor, 0.01)
        bronchi = sum(
            _segment(x, y, (0.2 * s, -0.12), (0.2 * s + s * rng.uniform(0.1, 0.25), rng.uniform(-0.5, -0.2)), 0.012)
            for _ in range(3)
        )
        img += (0.46 - 0.25 * np.clip(bronchi, 0, 1)) * upper
    if "Pneumonia" in findings:
        s = side
        cx, cy = 0.37 * s + s * rng.uniform(0.0, 0.08), rng.uniform(0.02, 0.18)
        mottle = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma=size / 64)
        mottle = np.clip(0.7 + mottle / (mottle.std() + 1e-6) * 0.3, 0, 1.2)
        img += 0.5 * np.clip(1.6 * _blob(x, y, cx, cy, 0.13), 0, 1) * mottle * lung_of[s]
    if "Edema" in findings:
        haze = _blob(x, y, -0.2, -0.02, 0.16) + _blob(x, y, 0.2, -0.02, 0.16)
        img += 0.30 * haze * lung_mask
        for s in (-1, 1):
            for k in range(4):
                yk = 0.22 + 0.05 * k
                img += 0.20 * _segment(x, y, (0.37 * s + 0.26 * s, yk), (0.37 * s + 0.15 * s, yk), 0.008) * lung_of[s]
    if "Fibrosis" in findings:
        net = (np.abs(np.sin(x * 26.0 + rng.uniform(0, 3))) < 0.22) | (np.abs(np.sin(y * 26.0 + rng.uniform(0, 3))) < 0.22)
        lower_peripheral = _soft(-y, 0.05) * _soft(0.33 - np.abs(x), 0.03)
        img += 0.22 * net.astype(np.float32) * lower_peripheral * lung_mask
    if "Pleural_Thickening" in findings:
        s = side
        cx, cy = 0.37 * s, -0.02
        r = np.sqrt(((x - cx) / a.lung_width) ** 2 + ((y - cy) / a.lung_height) ** 2)
        lateral_or_apex = (s * (x - cx) > 0.05) | (y < -0.4)
        band = lung_of[s] * _soft(0.86 - r, 0.02) * lateral_or_apex
        img += 0.34 * band
    if "Hernia" in findings:
        cx, cy, r = 0.05, 0.42, 0.11
        bubble = _disc(x, y, cx, cy, r, edge=0.008)
        air = bubble * (y < cy + 0.02)
        fluid = bubble * (y >= cy + 0.02)
        img = img - 0.38 * air + 0.12 * fluid

    img *= a.brightness
    img = gaussian_filter(img, sigma=size / 400)
    img += rng.normal(0, 0.018, size=img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)

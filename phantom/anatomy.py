"""Seed-randomised 3D label phantom of a human body.

Organs are analytic shapes (ellipsoids, shells, tubes along a centre line) placed on a body-centred
coordinate system: x to the patient's left, y posterior (DICOM LPS in-plane), ``depth`` in mm downwards
from the vertex. Sizes and positions are adult averages (ICRP 89 reference man scale) jittered per seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .presets import Preset

# Label values; lesions get LESION_BASE + k.
LABELS = {
    "background": 0, "fat": 1, "muscle": 2, "lung": 3, "myocardium": 4, "lv_blood": 5, "aorta": 6,
    "liver": 7, "spleen": 8, "kidney_cortex": 9, "bladder": 10, "bone_marrow": 11, "grey_matter": 12,
    "white_matter": 13, "heart_blood": 14, "kidney_medulla": 15,
}
LESION_BASE = 100


@dataclass
class Anatomy:
    labels: np.ndarray  # uint8 (Z, Y, X)
    lesions: list[dict]  # centre (depth, y, x) mm, diameter_mm, host organ, label
    legend: dict[str, int]


class _Grid:
    """Voxel-centre coordinates of a preset, broadcastable as (Z,1,1), (1,Y,1), (1,1,X)."""

    def __init__(self, preset: Preset):
        nz, ny, nx = preset.shape
        dz, dy, dx = preset.voxel_mm
        d0, d1 = preset.depth_range_mm
        # Z index increases towards the head (DICOM +z is superior): index 0 is the deepest slice.
        self.depth = (d1 - (np.arange(nz) + 0.5) * dz)[:, None, None]
        self.y = ((np.arange(ny) - (ny - 1) / 2) * dy)[None, :, None]
        self.x = ((np.arange(nx) - (nx - 1) / 2) * dx)[None, None, :]
        self.shape = preset.shape
        self.voxel_mm = preset.voxel_mm

    def ellipsoid(self, c, axes) -> np.ndarray:
        """c = (depth, y, x) centre in mm, axes = semi-axes (depth, y, x) in mm."""
        return ((self.depth - c[0]) / axes[0]) ** 2 + ((self.y - c[1]) / axes[1]) ** 2 + \
            ((self.x - c[2]) / axes[2]) ** 2 <= 1.0

    def tube(self, points: np.ndarray, radius: float) -> np.ndarray:
        """Voxels within ``radius`` mm of a polyline given as (N, 3) (depth, y, x) points."""
        seeds = np.zeros(self.shape, bool)
        dense = _resample_polyline(points, step=0.5 * min(self.voxel_mm))
        depth = self.depth.ravel()
        kz = np.rint((depth[0] - dense[:, 0]) / self.voxel_mm[0]).astype(int)
        ky = np.rint(dense[:, 1] / self.voxel_mm[1] + (self.shape[1] - 1) / 2).astype(int)
        kx = np.rint(dense[:, 2] / self.voxel_mm[2] + (self.shape[2] - 1) / 2).astype(int)
        inside = (kz >= 0) & (kz < self.shape[0]) & (ky >= 0) & (ky < self.shape[1]) & (kx >= 0) & \
            (kx < self.shape[2])
        if not inside.any():
            return seeds
        seeds[kz[inside], ky[inside], kx[inside]] = True
        return ndimage.distance_transform_edt(~seeds, sampling=self.voxel_mm) <= radius


def _resample_polyline(points: np.ndarray, step: float) -> np.ndarray:
    seg = np.diff(points, axis=0)
    length = np.linalg.norm(seg, axis=1)
    s = np.concatenate([[0], np.cumsum(length)])
    t = np.arange(0, s[-1] + step, step)
    return np.stack([np.interp(t, s, points[:, i]) for i in range(3)], axis=1)


def _body_profile(depth: np.ndarray, scale: float):
    """Semi-axes (x, y) of the trunk/head cross-section in mm as a function of depth from the vertex."""
    knots = np.array([0, 40, 120, 200, 235, 270, 300, 420, 560, 700, 850, 960, 1300])
    ax = np.array([1, 70, 78, 70, 55, 60, 165, 170, 160, 155, 170, 175, 175]) * scale
    ay = np.array([1, 75, 95, 85, 55, 60, 100, 115, 112, 108, 112, 110, 110]) * scale
    return np.interp(depth, knots, ax), np.interp(depth, knots, ay)


def build_anatomy(preset: Preset, rng: np.random.Generator) -> Anatomy:
    """Label volume for ``preset`` with organ shapes, sizes and lesions drawn from ``rng``."""
    g = _Grid(preset)
    j = lambda s=1.0: rng.uniform(1 - 0.12 * s, 1 + 0.12 * s)  # noqa: E731  size jitter
    o = lambda mm=8.0: rng.uniform(-mm, mm)  # noqa: E731  position jitter
    lab = np.zeros(preset.shape, np.uint8)
    L = LABELS
    scale = rng.uniform(0.9, 1.1)

    # Body: trunk/head ellipse per depth; below the pelvis two legs.
    ax, ay = _body_profile(g.depth, scale)
    ycen = -5.0
    trunk = ((g.x / ax) ** 2 + ((g.y - ycen) / ay) ** 2 <= 1) & (g.depth < 980)
    leg_r = 78 * scale
    legs = ((((np.abs(g.x) - 90 * scale) ** 2 + (g.y - ycen) ** 2) <= leg_r ** 2) & (g.depth >= 940))
    body = trunk | legs
    fat_mm = rng.uniform(8, 22)
    inner = ndimage.binary_erosion(body, iterations=max(1, int(round(fat_mm / preset.voxel_mm[2]))))
    lab[body] = L["fat"]
    lab[inner] = L["muscle"]

    # Brain.
    brain_c = (110 + o(5), 5 + o(3), o(2))
    brain_ax = (70 * j(0.5), 80 * j(0.5), 62 * j(0.5))
    lab[g.ellipsoid(brain_c, brain_ax)] = L["grey_matter"]
    lab[g.ellipsoid(brain_c, tuple(a * 0.72 for a in brain_ax))] = L["white_matter"]

    # Spine (vertebral bodies with marrow) from the neck to the sacrum.
    spine = g.tube(np.array([[230, 40, 0], [450, 75 * scale, 0], [700, 70 * scale, 0], [900, 60, 0]]),
                   radius=17 * j())
    lab[spine & (lab > 0)] = L["bone_marrow"]

    # Lungs, then the heart inside the thorax.
    lung_d, lung_h = 440 + o(10), 130 * j()
    for side in (-1, 1):
        lung = g.ellipsoid((lung_d, 10 + o(5), side * 85 * scale), (lung_h, 85 * j() * scale, 62 * j() * scale))
        lab[lung & (lab == L["muscle"])] = L["lung"]
    heart_c = np.array([480 + o(10), -25 + o(6), 25 + o(6)])
    heart_ax = np.array([55, 48, 58]) * j()
    lab[g.ellipsoid(heart_c, heart_ax)] = L["heart_blood"]
    lv_c = heart_c + np.array([8, 5, 12])
    lv_outer = np.array([44, 36, 36]) * j(0.5)
    wall = rng.uniform(9, 12)
    lab[g.ellipsoid(lv_c, lv_outer)] = L["myocardium"]
    lab[g.ellipsoid(lv_c, lv_outer - wall)] = L["lv_blood"]

    # Aorta: ascending from the left ventricle, arch, descending left of the spine to the bifurcation.
    r_ao = rng.uniform(11, 15)  # 2.2-3.0 cm calibre
    arch_top = heart_c[0] - 120 + o(8)
    aorta = np.array([
        [lv_c[0] - 20, lv_c[1] - 10, lv_c[2] - 25],
        [arch_top + 30, -20, 5],
        [arch_top, 5, 15],
        [arch_top + 30, 35, 22],
        [heart_c[0], 45 * scale, 22 + o(3)],
        [720, 40 * scale, 18],
        [900, 30, 10],
    ])
    lab[g.tube(aorta, r_ao) & (lab > 0)] = L["aorta"]

    # Abdomen.
    liver_c = (600 + o(12), 5 + o(8), -70 * scale + o(8))
    lab[g.ellipsoid(liver_c, (80 * j(), 85 * j() * scale, 95 * j() * scale)) & (lab == L["muscle"])] = L["liver"]
    lab[g.ellipsoid((595 + o(10), 50 + o(8), 95 * scale + o(6)), (55 * j(), 45 * j(), 32 * j()))
        & (lab == L["muscle"])] = L["spleen"]
    for side in (-1, 1):
        kc = (690 + o(12) + (10 if side < 0 else 0), 60 * scale + o(5), side * 65 * scale + o(5))
        kax = (55 * j(), 28 * j(), 26 * j())
        lab[g.ellipsoid(kc, kax)] = L["kidney_cortex"]
        lab[g.ellipsoid(kc, tuple(a - 7 for a in kax))] = L["kidney_medulla"]
    lab[g.ellipsoid((920 + o(10), -25 + o(5), o(5)), (35 * j(), 40 * j(), 45 * j()))] = L["bladder"]

    lesions = _place_lesions(g, lab, rng)
    legend = dict(L)
    legend.update({f"lesion_{k + 1}": les["label"] for k, les in enumerate(lesions)})
    return Anatomy(labels=lab, lesions=lesions, legend=legend)


def _place_lesions(g: _Grid, lab: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """Spherical lesions of 5-30 mm in organs present in the field of view."""
    hosts = [LABELS[n] for n in ("liver", "lung", "muscle", "bone_marrow", "spleen")]
    present = [h for h in hosts if (lab == h).sum() > 50]
    lesions: list[dict] = []
    if not present:
        return lesions
    for k in range(int(rng.integers(3, 9))):
        host = present[int(rng.integers(len(present)))]
        candidates = np.argwhere(ndimage.binary_erosion(lab == host, iterations=2))
        if candidates.size == 0:
            continue
        idx = candidates[int(rng.integers(len(candidates)))]
        centre = (float(g.depth.ravel()[idx[0]]), float(g.y.ravel()[idx[1]]), float(g.x.ravel()[idx[2]]))
        diameter = float(rng.uniform(5, 30))
        label = LESION_BASE + len(lesions) + 1
        lab[g.ellipsoid(centre, (diameter / 2,) * 3) & (lab > 0)] = label
        host_name = next(n for n, v in LABELS.items() if v == host)
        lesions.append({"label": label, "centre_depth_y_x_mm": centre, "diameter_mm": diameter,
                        "host": host_name})
    return lesions

"""Automatic blood-pool region for an image-derived input function (IDIF).

Blood is where activity peaks in the first minutes after injection and has mostly cleared later. Among such
voxels (at the lowest of a few peak levels that gives one) the descending (or ascending) aorta is preferred:
a vertical tube whose axial sections are round and of aortic calibre over at least 5 cm; the left-ventricle
cavity is the fallback when no aorta is in view (it suffers more spill-in from the myocardium): the largest
such region at least 12 mm across that has cleared to a third of its peak, as blood does and the liver does
not. Nothing thinner is used (a carotid or iliac artery in a head or pelvis field of view reads far below
blood through partial volume): the study is then refused. The region is eroded and reduced to its hottest
core, the usual defence against partial-volume loss at the vessel wall.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import InputError
from .patlak import mean_of_frames

log = logging.getLogger(__name__)

EARLY_WINDOW_MIN = 3.0  # the bolus peak lies within the first minutes in every clinical protocol
AORTA_RADIUS_MM = (6.0, 20.0)  # accepted radius of an eroded aortic section
MIN_AORTA_LENGTH_MM = 50.0
# The fallback cavity must hold a ball of this radius, as an aortic section must hold a disc of it: a thinner
# early-peaking region (a carotid or iliac artery, a venous sinus in a head or pelvis field of view) reads far
# below blood at its centre through partial volume, and Ki would come out too high by as much.
MIN_CAVITY_RADIUS_MM = AORTA_RADIUS_MM[0]
# Blood: early peak above these fractions of the early maximum (its 99.95th percentile), tried in turn for the
# aorta. The lowest keeps the whole vessel when the first pass is imaged; a scan started after it sees lungs and
# heart nearly as hot as the aorta, merged with it at the lowest level, and a higher one separates them.
PEAK_FRACTIONS = (0.35, 0.45, 0.55, 0.65)
CORE_FRACTION = 0.8  # keep voxels whose early peak reaches this fraction of the region's per-slice max
# Late activity over the early peak below which a voxel counts as cleared like blood: any early-peaking voxel
# for the aorta, whose shape identifies it; a stricter level for the fallback cavity, which has only its size.
# Organs fed by blood that keep FDG peak early too: the liver and spleen keep 0.4-0.6 of their early peak on
# the phantoms (in patients the liver keeps more), the blood pool 0.1-0.3 (90th percentile of the heart's and
# aorta's voxels, 5-100 % dose). At 0.5 an abdominal field of view with no heart and a short stretch of aorta
# gave the liver as the cavity (Ki 30 % low, unflagged); at 0.35 it is refused (give the curve or a mask).
CLEARED_FRACTION = 0.5
CAVITY_CLEARED_FRACTION = 0.35


@dataclass
class BloodPool:
    mask: np.ndarray  # bool (Z, Y, X)
    kind: str  # "aorta" or "left ventricle"
    volume_ml: float


def detect_blood_pool(activity: np.ndarray, frame_mid_min: np.ndarray, spacing_mm) -> BloodPool:
    """Find the blood-pool region in a dynamic study (T, Z, Y, X); raises InputError when there is none."""
    early = np.flatnonzero(frame_mid_min <= EARLY_WINDOW_MIN)
    if early.size == 0:
        raise InputError(f"no frame in the first {EARLY_WINDOW_MIN:g} min after injection: the bolus is not "
                         "imaged, so no image-derived input function can be found; give --input-function CSV",
                         tag="(0054,1300) FrameReferenceTime")
    late = np.flatnonzero(frame_mid_min >= 0.7 * frame_mid_min[-1])
    sigma = [1.5, 1.5, 1.5]  # detection only: suppress noise before thresholding
    peak = ndimage.gaussian_filter(activity[early[0]], sigma)
    for f in early[1:]:  # running maximum: one smoothed frame at a time, not all early frames at once
        np.maximum(peak, ndimage.gaussian_filter(activity[f], sigma), out=peak)
    late_img = ndimage.gaussian_filter(mean_of_frames(activity, late), sigma)
    top = np.percentile(peak, 99.95)
    if not np.isfinite(top) or top <= 0:
        raise InputError("the early frames hold no activity: no blood pool can be detected",
                         tag="(7FE0,0010) PixelData")
    spacing = np.asarray(spacing_mm, float)

    def blood(fraction: float, cleared: float = CLEARED_FRACTION) -> np.ndarray:
        return ndimage.binary_erosion((peak > fraction * top) & (late_img < cleared * peak),
                                      structure=ndimage.generate_binary_structure(3, 1))

    kind = "aorta"
    for fraction in PEAK_FRACTIONS:
        region = _aorta(blood(fraction), spacing)
        if region is not None:
            break
    if region is None:
        region, kind = _largest_cavity(blood(PEAK_FRACTIONS[0], CAVITY_CLEARED_FRACTION), spacing), "left ventricle"
    if region is None or not region.any():
        raise InputError(f"no blood pool detected in the early frames: no aorta, and no early-peaking region at "
                         f"least {2 * MIN_CAVITY_RADIUS_MM:g} mm across that clears like blood, such as the "
                         "left-ventricle cavity (smaller vessels read too low through partial volume, organs such "
                         "as the liver keep their activity); give the input function as "
                         "--input-function CSV or --idif-mask", tag="(7FE0,0010) PixelData")
    region = _hot_core(region, peak)
    volume = float(region.sum() * spacing.prod() / 1000.0)
    log.info("blood pool: %s, %.1f mL", kind, volume)
    return BloodPool(region, kind, volume)


def _aorta(blood: np.ndarray, spacing: np.ndarray) -> np.ndarray | None:
    """Axial sections of aortic size and roundness, chained vertically over >= MIN_AORTA_LENGTH_MM."""
    pixel_area = spacing[1] * spacing[2]
    a_min, a_max = (np.pi * r ** 2 / pixel_area for r in AORTA_RADIUS_MM)
    sections = np.zeros_like(blood)
    for z in range(blood.shape[0]):
        lab, n = ndimage.label(blood[z])
        if n == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        for k, size in enumerate(sizes, start=1):
            if a_min <= size <= a_max and _roundness(lab == k) > 0.6:
                sections[z][lab == k] = True
    lab, n = ndimage.label(sections)
    if n == 0:
        return None
    best, best_len = None, 0.0
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        length = (sl[0].stop - sl[0].start) * spacing[0]
        if length >= MIN_AORTA_LENGTH_MM and length > best_len:
            best, best_len = k, length
    return None if best is None else lab == best


def _roundness(section: np.ndarray) -> float:
    """Area over the area of the bounding circle through the farthest pixel from the centroid (disc: ~1)."""
    pts = np.argwhere(section)
    r = np.sqrt(((pts - pts.mean(axis=0)) ** 2).sum(axis=1)).max() + 0.5
    return float(len(pts) / (np.pi * r ** 2))


def _largest_cavity(blood: np.ndarray, spacing: np.ndarray) -> np.ndarray | None:
    """The largest connected region that holds a ball of MIN_CAVITY_RADIUS_MM (``blood`` was eroded by one voxel,
    which is added back to its depth)."""
    lab, n = ndimage.label(blood)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    depth = ndimage.distance_transform_edt(blood, sampling=spacing)
    radius = ndimage.maximum(depth, lab, index=np.arange(1, n + 1)) + spacing.min()
    for k in np.argsort(-sizes, kind="stable"):
        if radius[k] >= MIN_CAVITY_RADIUS_MM:
            return lab == k + 1
    return None


def _hot_core(region: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Per slice, the region's voxels whose early peak is at least CORE_FRACTION of that slice's maximum."""
    core = np.zeros_like(region)
    for z in np.flatnonzero(region.any(axis=(1, 2))):
        values = np.where(region[z], peak[z], 0.0)
        core[z] = region[z] & (values >= CORE_FRACTION * values.max())
    return core

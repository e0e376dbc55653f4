"""Plasma input function on the study's frames: representation, CSV exchange, image-derived extraction.

Representation: the frame-averaged plasma activity on each frame. Between frame boundaries Cp is taken as
piecewise constant at its frame mean, which conserves the area under the curve frame by frame; so the
running integral at every frame end is exact for frame-averaged data, however sharp the early peak is
between samples. Time before the first frame (a scan started after injection) is assumed to hold no
activity; that is only true when the scan starts at injection, as Patlak studies do.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

CSV_COLUMNS = ("frame_start_s", "frame_end_s", "cp_bq_per_ml")


@dataclass
class InputFunction:
    """Frame-averaged plasma activity (Bq/mL, decay-corrected to injection) on contiguous frames."""

    frame_start_min: np.ndarray
    frame_end_min: np.ndarray
    cp_frame_mean: np.ndarray

    def cumulative_at_end(self) -> np.ndarray:
        """int_0^{t_end,f} Cp dt for every frame f, in Bq/mL x min (gaps between frames count as Cp = 0)."""
        return np.cumsum(self.cp_frame_mean * (self.frame_end_min - self.frame_start_min))

    def integral_frame_mean(self) -> np.ndarray:
        """Frame mean of the running integral int_0^t Cp, for the frame-averaged Patlak regressor."""
        dur = self.frame_end_min - self.frame_start_min
        at_start = self.cumulative_at_end() - self.cp_frame_mean * dur
        return at_start + 0.5 * self.cp_frame_mean * dur

    def area_under_curve(self) -> float:
        """int Cp over the whole study, Bq/mL x min."""
        return float(self.cumulative_at_end()[-1])

    def write_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(CSV_COLUMNS)
            for s, e, c in zip(self.frame_start_min * 60, self.frame_end_min * 60, self.cp_frame_mean):
                out.writerow([f"{s:.3f}", f"{e:.3f}", f"{c:.6g}"])


def read_input_function_csv(path: str | Path, frame_start_min: np.ndarray,
                            frame_end_min: np.ndarray) -> InputFunction:
    """Read a CSV input function and put it on the study's frames.

    The CSV has columns ``frame_start_s, frame_end_s, cp_bq_per_ml`` (seconds from injection, Bq/mL
    decay-corrected to injection), as this product writes it, or ``time_s, cp_bq_per_ml`` samples (e.g. an
    arterial blood curve), which are interpolated linearly and averaged over each frame.
    """
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the input-function CSV: {exc}", path=path) from exc
    if not rows:
        raise InputError("the input-function CSV has no rows", path=path)
    cols = set(rows[0])
    try:
        if {"frame_start_s", "frame_end_s", "cp_bq_per_ml"} <= cols:
            start = np.array([float(r["frame_start_s"]) for r in rows]) / 60
            end = np.array([float(r["frame_end_s"]) for r in rows]) / 60
            value = np.array([float(r["cp_bq_per_ml"]) for r in rows])
            if start.size == frame_start_min.size and np.allclose(start, frame_start_min, atol=1 / 60) \
                    and np.allclose(end, frame_end_min, atol=1 / 60):
                return InputFunction(frame_start_min, frame_end_min, value)
            t, c = 0.5 * (start + end), value
        elif {"time_s", "cp_bq_per_ml"} <= cols:
            t = np.array([float(r["time_s"]) for r in rows]) / 60
            c = np.array([float(r["cp_bq_per_ml"]) for r in rows])
        else:
            raise InputError(f"the input-function CSV needs columns {', '.join(CSV_COLUMNS)} or "
                             f"time_s, cp_bq_per_ml; found {', '.join(sorted(cols))}", path=path)
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(f"non-numeric value in the input-function CSV: {exc}", path=path) from exc
    if not np.all(np.isfinite(c)) or np.any(np.diff(t) <= 0):
        raise InputError("the input-function CSV needs finite values at strictly increasing times", path=path)
    if t[-1] < frame_end_min[-1] - 0.5 * (frame_end_min[-1] - frame_start_min[-1]):
        raise InputError(f"the input-function CSV ends at {t[-1]:.1f} min, before the study's last frame",
                         path=path)
    return InputFunction(frame_start_min, frame_end_min, frame_average_of_samples(t, c, frame_start_min,
                                                                                  frame_end_min))


def frame_average_of_samples(t_min: np.ndarray, c: np.ndarray, frame_start_min: np.ndarray,
                             frame_end_min: np.ndarray, points_per_frame: int = 64) -> np.ndarray:
    """Average of a sampled curve (linear interpolation, zero before the first sample) over each frame."""
    t_full = np.concatenate([[0.0], t_min]) if t_min[0] > 0 else t_min
    c_full = np.concatenate([[0.0], c]) if t_min[0] > 0 else c
    frac = (np.arange(points_per_frame) + 0.5) / points_per_frame
    grid = frame_start_min[:, None] + frac[None, :] * (frame_end_min - frame_start_min)[:, None]
    return np.interp(grid, t_full, c_full).mean(axis=1)


def image_derived_input_function(activity: np.ndarray, region: np.ndarray, frame_start_min: np.ndarray,
                                 frame_end_min: np.ndarray) -> InputFunction:
    """Mean activity of the blood-pool ``region`` in every frame, taken as the plasma curve.

    Whole blood equals plasma for FDG within a few per cent (plasma-to-blood ratio ~1.1 at late times is
    not corrected here; a site with a population ratio can scale the CSV).
    """
    if not region.any():
        raise InputError("the blood-pool region is empty")
    cp = np.array([float(frame[region].mean()) for frame in activity])
    return InputFunction(frame_start_min, frame_end_min, cp)


@dataclass
class InputFunctionResult:
    """The input function used, where it came from, and what a physicist should check."""

    input_function: InputFunction
    source: str  # "aorta", "left ventricle", "mask", "csv"
    mask: np.ndarray | None  # the blood-pool region (Z, Y, X) when image-derived
    volume_ml: float
    quality_flags: list

    def summary(self) -> dict:
        inp = self.input_function
        k = int(np.argmax(inp.cp_frame_mean))
        return {"source": self.source, "region_volume_ml": round(self.volume_ml, 2),
                "peak_bq_per_ml": float(inp.cp_frame_mean[k]),
                "peak_frame_mid_min": float(0.5 * (inp.frame_start_min[k] + inp.frame_end_min[k])),
                "auc_bq_min_per_ml": inp.area_under_curve(), "quality_flags": list(self.quality_flags)}


def quality_flags(inp: InputFunction, source: str, volume_ml: float) -> list[str]:
    """Plausibility checks of a blood curve; an empty list means nothing to report."""
    flags = []
    mid = 0.5 * (inp.frame_start_min + inp.frame_end_min)
    k = int(np.argmax(inp.cp_frame_mean))
    if mid[k] > 3.0:
        flags.append(f"peak at {mid[k]:.1f} min, later than a bolus peak (3 min): check the injection time")
    tail = inp.cp_frame_mean[-1]
    if tail <= 0 or inp.cp_frame_mean[k] / max(tail, 1e-12) < 2.0:
        flags.append("peak-to-tail ratio below 2: the region may not be blood")
    if source == "left ventricle":
        flags.append("left-ventricle cavity used (no aorta found): myocardial spill-in may raise the tail")
    if source in ("aorta", "left ventricle", "mask") and volume_ml < 1.0:
        flags.append(f"blood-pool region of {volume_ml:.2f} mL: noisy input function")
    return flags


def input_function_for_study(study, csv_path: str | Path | None = None,
                             mask_path: str | Path | None = None) -> InputFunctionResult:
    """The study's input function: from a CSV, from a user mask (NIfTI), or detected automatically."""
    from .blood_pool import detect_blood_pool
    start, end = study.frame_start_min, study.frame_end_min
    if csv_path:
        inp = read_input_function_csv(csv_path, start, end)
        return InputFunctionResult(inp, "csv", None, 0.0, quality_flags(inp, "csv", 0.0))
    voxel_ml = float(np.prod(study.spacing_mm)) / 1000.0
    if mask_path:
        mask = read_mask(mask_path, study)
        source = "mask"
    else:
        pool = detect_blood_pool(study.activity, study.frame_mid_min, study.spacing_mm)
        mask, source = pool.mask, pool.kind
    inp = image_derived_input_function(study.activity, mask, start, end)
    volume = float(mask.sum()) * voxel_ml
    return InputFunctionResult(inp, source, mask, volume, quality_flags(inp, source, volume))


def read_mask(path: str | Path, study) -> np.ndarray:
    """A blood-pool mask (NIfTI, non-zero = inside) that must lie on the study's voxel grid."""
    from .parametric_dicom import read_nifti
    try:
        values, affine = read_nifti(Path(path))
    except Exception as exc:  # SimpleITK raises RuntimeError for anything it cannot read
        raise InputError(f"cannot read the blood-pool mask as NIfTI: {exc}", path=path) from exc
    if values.shape != study.activity.shape[1:] or not np.allclose(affine, study.affine, atol=1e-2):
        raise InputError(f"the blood-pool mask's grid {values.shape} does not match the study's "
                         f"{study.activity.shape[1:]} (shape and affine must agree)", path=path)
    mask = values > 0
    if not mask.any():
        raise InputError("the blood-pool mask is empty", path=path)
    return mask

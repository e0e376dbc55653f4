"""Plasma input function on the study's frames: representation, CSV exchange, image-derived extraction.

Representation: the frame-averaged plasma activity on each frame. Within a frame Cp is taken as constant at
its frame mean, which conserves the area under the curve frame by frame; so the running integral at every
frame end is exact for frame-averaged data, however sharp the early peak is between samples.

Time no frame covers also holds plasma activity, and Patlak's integral needs it. A curve sampled in time (a
blood-sample CSV) gives that area exactly. Frame means alone (an image-derived curve) give it by linear
interpolation: between two frames, the trapezoid of their means; before the first frame, a ramp from zero at
the injection to the first frame's mean. The ramp is only good for a short lead-in: when Cp is first measured
more than ``MAX_LEAD_IN_MIN`` after the injection the bolus peak is missed, and the study is refused unless a
sampled curve covers it.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputError

CSV_COLUMNS = ("frame_start_s", "frame_end_s", "cp_bq_per_ml")
# Units a CSV column name may end in, with the factor to minutes and to Bq/mL.
CSV_TIME_UNITS = {"s": 1 / 60, "sec": 1 / 60, "min": 1.0}
CSV_ACTIVITY_UNITS = {"bq_per_ml": 1.0, "kbq_per_ml": 1e3, "mbq_per_ml": 1e6, "bq_per_cc": 1.0, "kbq_per_cc": 1e3}
MAX_LEAD_IN_MIN = 3.0  # an FDG bolus peaks in the first 1-2 min; the peak check below uses 3 min too
FLAG_UNCOVERED_MIN = 0.5  # a lead-in or gap longer than this is reported when it had to be interpolated


@dataclass
class InputFunction:
    """Frame-averaged plasma activity (Bq/mL, decay-corrected to injection) on the study's frames.

    ``uncovered_area`` (Bq/mL x min) is int Cp over the time before each frame that no frame covers: from the
    injection to the first frame, from the end of frame f - 1 to the start of frame f. None: interpolated from
    the frame means (module docstring), and ``uncovered_interpolated`` says so.
    """

    frame_start_min: np.ndarray
    frame_end_min: np.ndarray
    cp_frame_mean: np.ndarray
    uncovered_area: np.ndarray | None = None
    uncovered_interpolated: bool = field(init=False)

    def __post_init__(self):
        self.uncovered_interpolated = self.uncovered_area is None
        if self.uncovered_area is None:
            gap = self.uncovered_min()
            previous = np.concatenate([[0.0], self.cp_frame_mean[:-1]])  # Cp = 0 at the injection
            self.uncovered_area = 0.5 * gap * (previous + self.cp_frame_mean)

    def uncovered_min(self) -> np.ndarray:
        """Length of the time no frame covers before each frame (0 where frames touch or overlap)."""
        previous_end = np.concatenate([[0.0], self.frame_end_min[:-1]])
        return np.maximum(self.frame_start_min - previous_end, 0.0)

    def cumulative_at_end(self) -> np.ndarray:
        """int_0^{t_end,f} Cp dt for every frame f, in Bq/mL x min."""
        return np.cumsum(self.uncovered_area + self.cp_frame_mean * (self.frame_end_min - self.frame_start_min))

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


def require_early_measurement(first_min: float, what: str, path: str | Path | None = None) -> None:
    """Refuse a plasma curve first measured more than ``MAX_LEAD_IN_MIN`` after the injection."""
    if first_min > MAX_LEAD_IN_MIN:
        raise InputError(
            f"{what} starts {first_min:.1f} min after the injection: Patlak needs the plasma integral from the "
            f"injection, and a ramp from zero cannot stand in for a bolus peak missed by more than "
            f"{MAX_LEAD_IN_MIN:g} min; give --input-function with blood samples from the injection (or check "
            "the injection time)", path=path, tag="(0018,1078) RadiopharmaceuticalStartDateTime")


def _csv_columns(names) -> dict[str, tuple[str, float]]:
    """The CSV's columns by quantity (``frame_start``, ``frame_end``, ``time``, ``cp``): (column name, factor to
    minutes or Bq/mL). A name is the quantity and its unit, matched without regard to case, spaces, brackets or
    '/' for 'per': ``time_s``, ``Time (min)``, ``cp_bq_per_ml``, ``Cp [kBq/mL]``."""
    found = {}
    for name in names:
        key = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("/", "_per_")).strip("_")
        for qty, units in (("frame_start", CSV_TIME_UNITS), ("frame_end", CSV_TIME_UNITS),
                           ("time", CSV_TIME_UNITS), ("cp", CSV_ACTIVITY_UNITS)):
            unit = key[len(qty) + 1:]
            if key.startswith(qty + "_") and unit in units:
                found.setdefault(qty, (name, units[unit]))
    return found


def read_input_function_csv(path: str | Path, frame_start_min: np.ndarray,
                            frame_end_min: np.ndarray) -> InputFunction:
    """Read a CSV input function and put it on the study's frames.

    The CSV has columns ``frame_start_s, frame_end_s, cp_bq_per_ml`` (seconds from injection, Bq/mL
    decay-corrected to injection), as this product writes it, or ``time_s, cp_bq_per_ml`` samples (e.g. an
    arterial blood curve), joined linearly. Each name may carry another unit (times in s or min, activity in
    Bq, kBq or MBq per mL) and be written as a spreadsheet would (``Time (min)``, ``Cp [kBq/mL]``); the file
    may start with a byte-order mark and use ';' or tabs between values. Frames other than the study's, and
    samples, are integrated over the study's frames and over the time they leave uncovered
    (:func:`on_frames`). Refused when the curve starts more than ``MAX_LEAD_IN_MIN`` after the injection or
    ends before the study's last frame.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
        try:
            dialect = csv.Sniffer().sniff(text.partition("\n")[0], delimiters=",;\t")
        except csv.Error:  # one column, or no delimiter the sniffer is sure of
            dialect = csv.excel
        reader = csv.DictReader(text.splitlines(), dialect=dialect)
        # rows of empty cells only (a spreadsheet's trailing ';;' lines) carry nothing
        rows = [r for r in reader if any(str(v or "").strip() for v in r.values())]
        names = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the input-function CSV: {exc}", path=path) from exc
    if not rows:
        raise InputError("the input-function CSV has no rows", path=path)
    cols = _csv_columns(names)
    framed = {"frame_start", "frame_end", "cp"} <= cols.keys()
    if not (framed or {"time", "cp"} <= cols.keys()):
        raise InputError(f"the input-function CSV needs columns {', '.join(CSV_COLUMNS)} or "
                         f"time_s, cp_bq_per_ml (or the same with units min, kBq_per_mL, MBq_per_mL); "
                         f"found {', '.join(names)}", path=path)

    def column(qty: str) -> np.ndarray:
        name, factor = cols[qty]
        return np.array([float(r[name]) for r in rows]) * factor

    try:
        if framed:
            start, end, c = column("frame_start"), column("frame_end"), column("cp")
            t, last = start, end[-1]
            valid = np.all(end > start)
        else:
            t, c = column("time"), column("cp")
            start, last, valid = None, t[-1], True
    except (ValueError, TypeError) as exc:
        raise InputError(f"non-numeric value in the input-function CSV: {exc}", path=path) from exc
    if not (valid and np.all(np.isfinite(c)) and np.all(np.isfinite(t))) or np.any(np.diff(t) <= 0):
        raise InputError("the input-function CSV needs finite values at strictly increasing times (and frames "
                         "that end after they start)", path=path)
    if last < frame_end_min[-1] - 0.5 * (frame_end_min[-1] - frame_start_min[-1]):
        raise InputError(f"the input-function CSV ends at {last:.1f} min, before the study's last frame",
                         path=path)
    require_early_measurement(max(float(t[0]), 0.0), "the input-function CSV", path)
    if start is None:
        return on_frames(sampled_integral(t, c), frame_start_min, frame_end_min)
    if start.size == frame_start_min.size and np.allclose(start, frame_start_min, atol=1 / 60) \
            and np.allclose(end, frame_end_min, atol=1 / 60):
        return InputFunction(frame_start_min, frame_end_min, c)
    return on_frames(frames_integral(InputFunction(start, end, c)), frame_start_min, frame_end_min)


def on_frames(integral: Callable[[np.ndarray], np.ndarray], frame_start_min: np.ndarray,
              frame_end_min: np.ndarray) -> InputFunction:
    """A curve given by its running integral, put on the study's frames: frame means and uncovered areas."""
    at_start, at_end = integral(frame_start_min), integral(frame_end_min)
    previous_end = np.concatenate([[0.0], frame_end_min[:-1]])
    uncovered = np.maximum(at_start - integral(np.minimum(previous_end, frame_start_min)), 0.0)
    return InputFunction(frame_start_min, frame_end_min, (at_end - at_start) / (frame_end_min - frame_start_min),
                         uncovered_area=uncovered)


def frames_integral(inp: InputFunction) -> Callable[[np.ndarray], np.ndarray]:
    """x -> int_0^x Cp of a frame-averaged curve: exact within its frames (Cp constant), linear across the time
    they do not cover (whose areas ``inp`` holds), the last frame's mean after it."""
    at_end = inp.cumulative_at_end()
    at_start = at_end - inp.cp_frame_mean * (inp.frame_end_min - inp.frame_start_min)
    knots = np.maximum.accumulate(np.column_stack([inp.frame_start_min, inp.frame_end_min]).ravel())
    values = np.column_stack([at_start, at_end]).ravel()
    knots, values = np.concatenate([[min(knots[0], 0.0)], knots]), np.concatenate([[0.0], values])

    def integral(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        after = values[-1] + inp.cp_frame_mean[-1] * (x - knots[-1])
        return np.where(x > knots[-1], after, np.interp(x, knots, values, left=0.0))

    return integral


def sampled_integral(t_min: np.ndarray, c: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """x -> int_0^x of the samples joined linearly: zero before the first sample (a ramp from zero at time 0
    when that sample is later), the last value after the last sample. Exact: quadratic between samples."""
    if t_min[0] > 0:
        t_min, c = np.concatenate([[0.0], t_min]), np.concatenate([[0.0], c])
    slope = np.concatenate([np.diff(c) / np.diff(t_min), [0.0]])  # held after the last sample
    at_knots = np.concatenate([[0.0], np.cumsum(0.5 * (c[1:] + c[:-1]) * np.diff(t_min))])

    def integral(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        i = np.clip(np.searchsorted(t_min, x, side="right") - 1, 0, t_min.size - 1)
        dx = np.maximum(x - t_min[i], 0.0)
        return np.where(x < t_min[0], 0.0, at_knots[i] + c[i] * dx + 0.5 * slope[i] * dx * dx)

    return integral


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
    # The peak checks need frames over the bolus: a late-only study (with a measured CSV) has none there.
    if inp.frame_start_min[0] <= MAX_LEAD_IN_MIN:
        if mid[k] > 3.0:
            flags.append(f"peak at {mid[k]:.1f} min, later than a bolus peak (3 min): check the injection time")
        tail = inp.cp_frame_mean[-1]
        if tail <= 0 or inp.cp_frame_mean[k] / max(tail, 1e-12) < 2.0:
            flags.append("peak-to-tail ratio below 2: " + ("the curve may not be plasma" if source == "csv"
                                                           else "the region may not be blood"))
    if source == "left ventricle":
        flags.append("no aorta of 5 cm in view: the largest blood cavity used (the left ventricle, or a short "
                     "stretch of aorta); spill-in from the myocardium, partial volume in a vessel, may bias the curve")
    if source in ("aorta", "left ventricle", "mask") and volume_ml < 1.0:
        flags.append(f"blood-pool region of {volume_ml:.2f} mL: noisy input function")
    if inp.uncovered_interpolated:
        uncovered = inp.uncovered_min()
        if uncovered[0] > FLAG_UNCOVERED_MIN:
            flags.append(f"the first frame starts {uncovered[0]:.1f} min after the injection: Cp before it is a "
                         "ramp from zero, which misses the area of a bolus peak that came earlier (Ki high)")
        gaps = uncovered[1:]
        if np.any(gaps > FLAG_UNCOVERED_MIN):
            flags.append(f"{int(np.sum(gaps > FLAG_UNCOVERED_MIN))} gap(s) between frames (longest "
                         f"{gaps.max():.1f} min): Cp interpolated linearly across them")
    return flags


def input_function_for_study(study, csv_path: str | Path | None = None,
                             mask_path: str | Path | None = None) -> InputFunctionResult:
    """The study's input function: from a CSV, from a user mask (NIfTI or DICOM SEG), or detected automatically."""
    from .blood_pool import detect_blood_pool
    from .blood_pool_mask import read_mask
    start, end = study.frame_start_min, study.frame_end_min
    if csv_path:
        inp = read_input_function_csv(csv_path, start, end)
        return InputFunctionResult(inp, "csv", None, 0.0, quality_flags(inp, "csv", 0.0))
    require_early_measurement(float(start[0]), "the first frame",
                              getattr(study.slice_datasets[0], "filename", None))
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

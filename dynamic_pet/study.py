"""The in-memory dynamic PET study that every stage after loading works on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pydicom


@dataclass
class DynamicStudy:
    """A sorted, validated dynamic PET study.

    Attributes
    ----------
    activity:
        float32 array (T, Z, Y, X) in Bq/mL, every frame decay-corrected to the injection time
        (the radiopharmaceutical start), which is the reference a plasma input function uses too.
        Z runs along the slice normal (increasing position), Y over rows, X over columns.
    frame_start_min, frame_end_min:
        float64 arrays (T,), minutes from injection.
    affine:
        4x4 float64 array mapping voxel index (x, y, z, 1) to patient coordinates in mm (DICOM LPS).
    spacing_mm:
        (dz, dy, dx) voxel size in mm.
    slice_datasets:
        One pydicom Dataset per Z slice (from the first frame, pixel data removed), in Z order; the
        source the parametric DICOM writer copies patient, study and geometry attributes from.
    multiframe_source, source_frames:
        For a series stored as a multi-frame instance (Legacy Converted Enhanced / Enhanced PET): that
        instance's header and the 1-based frame number of each ``slice_datasets`` entry in it (each entry is
        then that frame's classic-like view); None for classic single-frame instances.
    series_instance_uid, study_instance_uid:
        UIDs of the source series.
    half_life_s:
        Radionuclide half-life in seconds (from the radiopharmaceutical sequence).
    notes:
        Human-readable facts recorded while loading (fallbacks taken, conversions applied); no
        patient identifiers.
    timings_s:
        Wall time of each pipeline stage, filled in as the stages run.
    lossy_compression:
        (method, ratio) of each lossy compression the source images went through (PS3.3 C.7.6.1.1.5), the
        largest ratio per method; empty when none. Images derived from them must say so.
    """

    activity: np.ndarray
    frame_start_min: np.ndarray
    frame_end_min: np.ndarray
    affine: np.ndarray
    spacing_mm: tuple[float, float, float]
    slice_datasets: list[pydicom.Dataset]
    series_instance_uid: str
    study_instance_uid: str
    half_life_s: float
    notes: list[str] = field(default_factory=list)
    multiframe_source: pydicom.Dataset | None = None
    source_frames: list[int] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    lossy_compression: list[tuple[str, float]] = field(default_factory=list)

    @property
    def frame_mid_min(self) -> np.ndarray:
        return 0.5 * (self.frame_start_min + self.frame_end_min)

    @property
    def frame_duration_min(self) -> np.ndarray:
        return self.frame_end_min - self.frame_start_min

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.activity.shape)  # type: ignore[return-value]

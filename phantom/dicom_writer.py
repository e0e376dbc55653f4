"""Write a simulated dynamic PET study as one classic PET Image Storage DICOM series.

One instance (PET Image Storage, 1.2.840.10008.5.1.4.1.1.128) per frame and slice, every frame in one
series (SeriesType ``DYNAMIC\\IMAGE``), as clinical scanners export dynamic studies. Conventions:

- Geometry: axial slices, ImageOrientationPatient ``1\\0\\0\\0\\1\\0`` (LPS), so the slice normal points
  to the head; array slice ``z = 0`` is the most inferior (foot) slice and ImagePositionPatient z grows
  with ``z``. The volume is centred on the patient-coordinate origin.
- Timing: SeriesDate/SeriesTime = injection + ``series_start_after_injection_s`` is the series reference
  time and the DecayCorrection ``START`` reference. AcquisitionDate/Time = frame start.
  FrameReferenceTime = offset of the frame start from the series reference plus the decay-weighted mean
  time of the frame (PS3.3 C.8.9.4.1.5, example 2), in ms. ActualFrameDuration in whole ms.
- Pixels: activity decay-corrected to the series reference, int16 with a per-instance RescaleSlope
  (largest magnitude of the slice maps to 32767), RescaleIntercept 0, Units ``BQML``;
  DecayFactor = exp(lambda * FrameReferenceTime), the factor from frame-averaged measured activity to
  the series reference.
- Identity: synthetic patient ``PHANTOM^SEED<n>``; UIDs, dates and file names derive from ``seed`` (and
  the series description), so one seed gives byte-identical files. File names are a hash of the SOP
  Instance UID and say nothing about frame or slice order.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from dynamic_pet.dicom_series import PET_IMAGE_STORAGE, decay_weighted_offset_s

F18_HALF_LIFE_S = 6586.2
_INT16_MAX = 32767


def _uid(seed: int, *parts: object) -> str:
    # generate_uid concatenates its entropy sources: join with a separator so (1, 10) != (11, 0)
    return str(generate_uid(entropy_srcs=["|".join(["dynamic_pet.phantom", str(seed), *map(str, parts)])]))


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS)."""
    return format_number_as_ds(float(value))


def _dicom_date_time(when: dt.datetime) -> tuple[str, str]:
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")


def _injection_datetime(seed: int) -> dt.datetime:
    """A fixed synthetic injection time derived from the seed (always a morning, never near midnight)."""
    return dt.datetime(2024, 1, 1, 8, 0, 0) + dt.timedelta(days=seed % 365, minutes=(seed * 7) % 180)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _series_template(seed: int, series_uid: str, shape: tuple[int, int, int, int], voxel_size_mm, *,
                     injection: dt.datetime, series_start: dt.datetime, injected_dose_bq: float,
                     half_life_s: float, patient_weight_kg: float, series_description: str) -> Dataset:
    """Every attribute shared by all instances of the series."""
    n_frames, n_slices, rows, cols = shape
    dz, dy, dx = (float(v) for v in voxel_size_mm)
    ds = Dataset()
    ds.SOPClassUID = PET_IMAGE_STORAGE
    study_date, study_time = _dicom_date_time(series_start)
    ds.StudyDate, ds.StudyTime = study_date, study_time
    ds.SeriesDate, ds.SeriesTime = _dicom_date_time(series_start)
    ds.AccessionNumber = ""
    ds.Modality = "PT"
    ds.Manufacturer = "dynamic_pet phantom"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    ds.PatientName = f"PHANTOM^SEED{seed}"
    ds.PatientID = f"PHANTOM{seed:06d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientWeight = _ds(patient_weight_kg)
    ds.SliceThickness = _ds(dz)
    ds.CollimatorType = "NONE"
    ds.StudyInstanceUID = _uid(seed, "study")
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"PH{seed}"[:16]
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "WHOLEBODY"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = _uid(seed, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = [_ds(dy), _ds(dx)]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept = "0"
    ds.CorrectedImage = ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([_radiopharmaceutical(
        injection, injected_dose_bq, half_life_s)])
    ds.NumberOfSlices = n_slices
    ds.NumberOfTimeSlices = n_frames
    ds.PatientOrientationCodeSequence = DicomSequence()
    ds.PatientGantryRelationshipCodeSequence = DicomSequence()
    ds.SeriesType = ["DYNAMIC", "IMAGE"]
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.DecayCorrection = "START"
    ds.AcquisitionContextSequence = DicomSequence()
    return ds


def _radiopharmaceutical(injection: dt.datetime, dose_bq: float, half_life_s: float) -> Dataset:
    item = Dataset()
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    item.RadiopharmaceuticalStartTime = _dicom_date_time(injection)[1]
    item.RadionuclideTotalDose = _ds(dose_bq)
    item.RadionuclideHalfLife = _ds(half_life_s)
    item.RadionuclidePositronFraction = "0.9673"
    item.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S.%f")
    item.RadionuclideCodeSequence = DicomSequence([_code("77004003", "SCT", "^18^Fluorine")])
    item.RadiopharmaceuticalCodeSequence = DicomSequence([_code("35321007", "SCT", "Fluorodeoxyglucose F^18^")])
    return item


def _quantise(values: np.ndarray) -> tuple[np.ndarray, str]:
    """int16 pixels and the DS slope that maps them back to ``values``."""
    peak = float(np.max(np.abs(values)))
    slope = _ds(peak / _INT16_MAX) if peak > 0 else "1"
    stored = np.clip(np.rint(values / float(slope)), -_INT16_MAX - 1, _INT16_MAX).astype(np.int16)
    return stored, slope


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PET_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def write_dynamic_pet_series(out_dir: str | Path, activity: np.ndarray, frame_start_s: Sequence[float],
                             frame_duration_s: Sequence[float], voxel_size_mm: Sequence[float], *,
                             injected_dose_bq: float, half_life_s: float = F18_HALF_LIFE_S, seed: int = 0,
                             series_start_after_injection_s: float = 0.0, patient_weight_kg: float = 75.0,
                             series_description: str = "PHANTOM dynamic FDG PET (synthetic, research)",
                             rng_file_names: bool = True) -> list[Path]:
    """Write a dynamic PET study as classic PET Image Storage instances, one per frame and slice.

    Parameters
    ----------
    out_dir:
        Folder to write into (created if needed).
    activity:
        (T, Z, Y, X) activity concentration in Bq/mL, decay-corrected to the injection time.
    frame_start_s, frame_duration_s:
        (T,) frame start and duration in seconds from injection; durations are stored in whole ms.
    voxel_size_mm:
        (dz, dy, dx): slice spacing, row spacing, column spacing.
    injected_dose_bq:
        RadionuclideTotalDose.
    half_life_s:
        Radionuclide half-life (default F-18).
    seed:
        Source of every UID, the synthetic patient identity and the dates.
    series_start_after_injection_s:
        Series reference time (SeriesDate/Time, decay-correction reference) relative to injection; must
        not be after the first frame start.
    patient_weight_kg, series_description:
        Written as PatientWeight and SeriesDescription; the description also enters the series UIDs, so
        two series of one seed need different descriptions.
    rng_file_names:
        True: file names are a hash of the SOP Instance UID; False: ``IM<InstanceNumber>.dcm``.

    Returns
    -------
    list of Path
        The written files, frame-major, slices foot to head.
    """
    activity = np.asarray(activity, dtype=np.float64)
    starts = np.asarray(frame_start_s, dtype=np.float64)
    durations_ms = np.rint(np.asarray(frame_duration_s, dtype=np.float64) * 1000.0).astype(np.int64)
    if activity.ndim != 4 or starts.shape != (activity.shape[0],) or durations_ms.shape != starts.shape:
        raise ValueError(f"activity must be (T,Z,Y,X) with T frame starts and durations; got {activity.shape}, "
                         f"{starts.shape}, {durations_ms.shape}")
    if np.any(durations_ms <= 0) or starts.min() < series_start_after_injection_s:
        raise ValueError("frame durations must be positive and no frame may start before the series start")
    if not np.all(np.isfinite(activity)):
        raise ValueError("activity must be finite")
    n_frames, n_slices, rows, cols = activity.shape
    dz, dy, dx = (float(v) for v in voxel_size_mm)
    decay_constant = np.log(2.0) / half_life_s
    injection = _injection_datetime(seed)
    series_start = injection + dt.timedelta(seconds=float(series_start_after_injection_s))
    series_uid = _uid(seed, "series", series_description)
    template = _series_template(seed, series_uid, activity.shape, (dz, dy, dx), injection=injection,
                                series_start=series_start, injected_dose_bq=injected_dose_bq,
                                half_life_s=half_life_s, patient_weight_kg=patient_weight_kg,
                                series_description=series_description)
    to_series_reference = np.exp(-decay_constant * series_start_after_injection_s)
    origin = np.array([-(cols - 1) / 2 * dx, -(rows - 1) / 2 * dy, -(n_slices - 1) / 2 * dz])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for frame in range(n_frames):
        frame_start = injection + dt.timedelta(seconds=float(starts[frame]))
        duration_s = durations_ms[frame] / 1000.0
        reference_s = starts[frame] - series_start_after_injection_s + decay_weighted_offset_s(
            duration_s, half_life_s)
        for z in range(n_slices):
            ds = copy.deepcopy(template)
            index = frame * n_slices + z + 1
            ds.SOPInstanceUID = _uid(seed, "sop", series_description, frame, z)
            ds.AcquisitionDate, ds.AcquisitionTime = _dicom_date_time(frame_start)
            ds.ContentDate, ds.ContentTime = ds.AcquisitionDate, ds.AcquisitionTime
            ds.ActualFrameDuration = int(durations_ms[frame])
            ds.InstanceNumber = index
            position = origin + [0.0, 0.0, z * dz]
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.SliceLocation = _ds(position[2])
            stored, slope = _quantise(activity[frame, z] * to_series_reference)
            ds.RescaleSlope = slope
            ds.FrameReferenceTime = _ds(reference_s * 1000.0)
            ds.ImageIndex = index
            ds.DecayFactor = _ds(np.exp(decay_constant * reference_s))
            ds.PixelData = stored.tobytes()
            ds.file_meta = _file_meta(ds.SOPInstanceUID)
            name = (hashlib.sha1(ds.SOPInstanceUID.encode()).hexdigest()[:20] if rng_file_names
                    else f"IM{index:05d}")
            path = out_dir / f"{name}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths

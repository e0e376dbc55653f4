"""A user's blood-pool region for the image-derived input function: NIfTI, or DICOM Segmentation from PACS.

NIfTI holds a binary mask (0 and one other value, 1 or 255 alike) or fractions in [0, 1] (a probability map,
or a mask resampled linearly: a voxel counts from 0.5, as in a fractional Segmentation); a label map with
several structures is refused, as which label is blood cannot be told from a NIfTI file (a DICOM
Segmentation's segment names can). It is placed by its affine in the patient's coordinates: on the study's
grid as it is, on another grid or orientation (a viewer's export, a CT's grid) resampled as a Segmentation is.
A DICOM Segmentation (binary or fractional) is placed by its geometry, not by the images it references: it may
have been drawn on any time frame of the dynamic series, on a subset of slices, or on another grid of the same
frame of reference (a CT of the same PET/CT), and highdicom assembles its frames into a volume that SimpleITK
resamples onto the study's grid (linear, then >= 0.5: a voxel counts when at least half of it is inside).
Which segment: the only one, else the one whose label or property type names the aorta, else blood, a
ventricle, an artery (the first of these that names exactly one segment; an organ atlas with one aorta among a
hundred structures works as it is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .parametric_dicom import read_nifti, with_geometry

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
BLOOD_WORDS = ("aort", "blood", "ventric", "arter")  # in order of preference: the aorta is the usual IDIF region


def read_mask(path: str | Path, study) -> np.ndarray:
    """The blood-pool mask (bool, Z, Y, X on the study's grid) from a NIfTI file or a DICOM Segmentation."""
    path = Path(path)
    mask = _segmentation_mask(path, study) if _is_dicom(path) else _nifti_mask(path, study)
    if not mask.any():
        raise InputError("the blood-pool mask is empty on the study's grid", path=path)
    return mask


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError as exc:
        raise InputError(f"cannot read the blood-pool mask: {exc}", path=path) from exc


def _nifti_mask(path: Path, study) -> np.ndarray:
    try:
        values, affine = read_nifti(path)
    except Exception as exc:  # SimpleITK raises RuntimeError for anything it cannot read
        raise InputError(f"cannot read the blood-pool mask as NIfTI: {exc}", path=path) from exc
    mask = _binary(values, path)
    if values.shape == study.activity.shape[1:] and np.allclose(affine, study.affine, atol=1e-2):
        return mask
    # another grid or orientation of the same patient space (a viewer's or another tool's export): resampled
    # as a Segmentation is (linear, then >= 0.5)
    return _on_study_grid(with_geometry(sitk.GetImageFromArray(mask.astype(np.float32)), affine), study)


def _binary(values: np.ndarray, path: Path) -> np.ndarray:
    """The mask from a NIfTI's values: binary as it is, fractions from 0.5, several labels refused."""
    if not np.all(np.isfinite(values)) or values.min() < 0:
        raise InputError("the blood-pool mask holds negative or non-finite values", path=path)
    nonzero = np.unique(values[values > 0])
    if nonzero.size <= 1:
        return values > 0
    if nonzero.max() <= 1.0:
        return values >= 0.5
    shown = ", ".join(f"{v:g}" for v in nonzero[:8]) + (", ..." if nonzero.size > 8 else "")
    raise InputError(f"the blood-pool mask holds {nonzero.size} different values ({shown}), a label map rather "
                     "than one region: give a mask of the blood pool alone (0 and 1), or a DICOM Segmentation "
                     "whose segment names the aorta", path=path)


def _segmentation_mask(path: Path, study) -> np.ndarray:
    import highdicom as hd
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True)
    if header.get("SOPClassUID") != SEGMENTATION_STORAGE:
        raise InputError(f"a DICOM blood-pool mask must be a Segmentation (SOP class {SEGMENTATION_STORAGE}), "
                         f"not {header.get('SOPClassUID')}", path=path, tag="(0008,0016) SOPClassUID")
    study_for = study.slice_datasets[0].get("FrameOfReferenceUID")
    if header.get("FrameOfReferenceUID") != study_for:
        raise InputError("the Segmentation's frame of reference is not the study's: it was drawn on other "
                         "images", path=path, tag="(0020,0052) FrameOfReferenceUID")
    number = _blood_segment(header, path)
    try:
        volume = hd.seg.segread(path).get_volume(segment_numbers=[number], combine_segments=True, dtype=np.float32)
    except Exception as exc:  # highdicom raises ValueError/RuntimeError for frames that form no volume
        raise InputError(f"the Segmentation's frames do not form a volume: {exc}", path=path,
                         tag="(5200,9230) PerFrameFunctionalGroupsSequence") from exc
    return _on_study_grid(volume.to_simpleitk(), study)


def _blood_segment(header, path: Path) -> int:
    """The only segment, else the one named after the first of ``BLOOD_WORDS`` that names exactly one."""
    segments = list(header.get("SegmentSequence", []))
    if not segments:
        raise InputError("the Segmentation has no segments", path=path, tag="(0062,0002) SegmentSequence")
    if len(segments) == 1:
        return int(segments[0].SegmentNumber)

    def names(item) -> str:
        codes = item.get("SegmentedPropertyTypeCodeSequence", [])
        return " ".join([str(item.get("SegmentLabel", ""))] + [str(c.get("CodeMeaning", "")) for c in codes]).lower()

    def listed(items) -> str:
        return ", ".join(f"{int(s.SegmentNumber)} {s.get('SegmentLabel', '')!r}" for s in items)

    for word in BLOOD_WORDS:
        named = [item for item in segments if word in names(item)]
        if len(named) == 1:
            return int(named[0].SegmentNumber)
        if named:
            raise InputError(f"{len(named)} of the Segmentation's segments name {word!r} ({listed(named)}): keep the "
                             "blood-pool one only", path=path, tag="(0062,0002) SegmentSequence")
    raise InputError(f"none of the Segmentation's {len(segments)} segments ({listed(segments)}) names blood "
                     f"({', '.join(BLOOD_WORDS)}...): keep the blood-pool one only", path=path,
                     tag="(0062,0002) SegmentSequence")


def _on_study_grid(image: sitk.Image, study) -> np.ndarray:
    """A mask image placed in patient space, resampled onto the study's grid: linear, then >= 0.5 (a voxel counts
    when at least half of it is inside)."""
    resampled = sitk.Resample(image, _study_grid(study), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled) >= 0.5


def _study_grid(study) -> sitk.Image:
    """An empty image on the study's voxel grid."""
    return with_geometry(sitk.Image([int(n) for n in study.activity.shape[:0:-1]], sitk.sitkUInt8), study.affine)

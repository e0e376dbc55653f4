"""Parametric outputs as DICOM (same study as the source) and NIfTI.

For every map (``ki``, ``v``, ``ki_sd``) :func:`write_parametric_outputs` writes two series into the
source study, each with a new SeriesInstanceUID, the source's FrameOfReferenceUID and patient/study
attributes, and a SeriesDescription ending in "RESEARCH USE ONLY":

``out_dir/dicom/<map>_pmap/000001.dcm``
    One multi-frame Parametric Map (highdicom), float32 values exactly as estimated, with a UCUM
    real-world value mapping and a coded quantity. Series number ``base + offset``.
``out_dir/dicom/<map>_pet/000001.dcm ...``
    A derived classic PET Image Storage series (one instance per slice, int16 with a per-slice
    RescaleSlope, Units ``MLMINML`` / ``MLML``) that PACS viewers and Orthanc's ``/rendered`` display.
    Series number ``base + offset + 1``.

Offsets are fixed per map (ki 0, v 2, ki_sd 4) so a series number always means the same map. File
names are instance numbers, never DICOM strings, so no patient data reaches a path.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PositronEmissionTomographyImageStorage
from pydicom.valuerep import format_number_as_ds

from dynamic_pet import __version__
from dynamic_pet.dicom_series import corrected_image_terms
from dynamic_pet.study import DynamicStudy

MANUFACTURER = "dynamic_pet"
MODEL_NAME = "dynamic_pet Patlak"
SOFTWARE_VERSION = f"dynamic_pet {__version__}"

# DICOM has no standard concept for Patlak Ki or V (CID 7180 / 4107 cover MR perfusion models), so the
# quantities use a private coding scheme ("99" prefix, PS3.3 8.2), declared in each instance.
CODING_SCHEME = "99DYNPET"


@dataclass(frozen=True)
class MapKind:
    """How one parametric map is labelled and coded in DICOM."""

    label: str
    units_text: str
    pet_units: str
    unit: Code
    quantity: Code
    series_offset: int


_ML_MIN_ML = Code("ml/min/ml", "UCUM", "milliliter per minute per milliliter")
MAP_KINDS: dict[str, MapKind] = {
    "ki": MapKind("Patlak Ki", "mL/min/mL", "MLMINML", _ML_MIN_ML,
                  Code("PATLAK_KI", CODING_SCHEME, "Patlak net influx rate constant Ki"), 0),
    "v": MapKind("Patlak V", "mL/mL", "MLML", Code("ml/ml", "UCUM", "milliliter per milliliter"),
                 Code("PATLAK_V", CODING_SCHEME, "Patlak intercept V"), 2),
    "ki_sd": MapKind("Patlak Ki SD", "mL/min/mL", "MLMINML", _ML_MIN_ML,
                     Code("PATLAK_KI_SD", CODING_SCHEME, "Standard deviation of Patlak Ki"), 4),
}

# A native Enhanced PET source's Enhanced PET Corrections flags -> the defined terms of the classic PET Series'
# CorrectedImage (0028,0051), where a derived classic PET image records them
_CORRECTION_TERMS = {"AttenuationCorrected": "ATTN", "ScatterCorrected": "SCAT", "DeadTimeCorrected": "DTIM",
                     "GantryMotionCorrected": "MOTN", "PatientMotionCorrected": "PMOT",
                     "CountLossNormalizationCorrected": "CLN", "RandomsCorrected": "RAN",
                     "NonUniformRadialSamplingCorrected": "RADL", "SensitivityCalibrated": "DCAL",
                     "DetectorNormalizationCorrection": "NORM"}
# Attributes of a dynamic source frame that are false for a static derived image.
_DROP_FROM_PET = (
    "PixelData", "NumberOfTimeSlices", "DecayFactor", "FrameTime", "TriggerTime",
    "DoseCalibrationFactor", "DeadTimeFactor", "ScatterFractionFactor", "PrimaryPromptsCountsAccumulated",
    "SliceSensitivityFactor", "SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue",
    "WindowCenterWidthExplanation", "VOILUTSequence", "ReferencedImageSequence", "ImageComments",
    "TemporalPositionIndex", "LossyImageCompressionMethod", "LossyImageCompressionRatio",  # see lossy_attributes
    # a native Enhanced PET source's frame: its mapping describes the source's values, not the map's, and its
    # Enhanced PET Corrections module belongs to no classic PET module (the flags go into CorrectedImage)
    "RealWorldValueMappingSequence", "DecayCorrected", "DecayCorrectionDateTime", "AttenuationCorrectionSource",
    "AttenuationCorrectionTemporalRelationship", *_CORRECTION_TERMS,
)
# PET Series / NM-PET Patient Orientation type 2 attributes a native Enhanced PET source lacks: empty if absent
_PET_TYPE2 = {"CollimatorType": "", "PatientOrientationCodeSequence": [],
              "PatientGantryRelationshipCodeSequence": []}


def write_parametric_outputs(study: DynamicStudy, maps: dict[str, np.ndarray], out_dir: Path, *,
                             method_description: str,
                             series_number_base: int = 900) -> dict[str, list[Path]]:
    """Write each map as a Parametric Map and as a derived classic PET series in the source study.

    Parameters
    ----------
    study:
        The loaded source study; its ``slice_datasets`` give patient, study and geometry attributes.
    maps:
        Keys among ``"ki"`` (mL/min/mL), ``"v"`` (mL/mL), ``"ki_sd"`` (mL/min/mL); finite float
        arrays (Z, Y, X) in the study's geometry.
    out_dir:
        Output root; files go under ``out_dir/dicom/<map>_pmap`` and ``out_dir/dicom/<map>_pet``
        (earlier ``.dcm`` files in those folders are replaced).
    method_description:
        How the maps were made (e.g. "Patlak WLS, t* 20 min, aorta IDIF"); stored as the derivation
        description (first 64 characters also as the Parametric Map's ContentDescription).
    series_number_base:
        Series number of the Ki Parametric Map; see the module docstring for the others.

    Returns
    -------
    dict
        ``"<map>_pmap"`` and ``"<map>_pet"`` to the files written, in slice order.
    """
    written: dict[str, list[Path]] = {}
    for name, image in maps.items():
        kind = _check_map(study, name, image)
        number = series_number_base + kind.series_offset
        pm = parametric_map(study, image, kind, method_description, number)
        written[f"{name}_pmap"] = _save([pm], out_dir / "dicom" / f"{name}_pmap")
        pet = derived_pet_series(study, image, kind, method_description, number + 1)
        written[f"{name}_pet"] = _save(pet, out_dir / "dicom" / f"{name}_pet")
    return written


def _check_map(study: DynamicStudy, name: str, image: np.ndarray) -> MapKind:
    if name not in MAP_KINDS:
        raise ValueError(f"unknown map {name!r}; expected one of {sorted(MAP_KINDS)}")
    if image.shape != study.shape[1:]:
        raise ValueError(f"map {name!r} has shape {image.shape}, the study's geometry is {study.shape[1:]}")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"map {name!r} has {int(np.sum(~np.isfinite(image)))} non-finite values")
    return MAP_KINDS[name]


def display_window(image: np.ndarray) -> tuple[float, float]:
    """Window (center, width) showing 0 to the 99.5th percentile of ``image``, in its own units."""
    top = float(np.percentile(image, 99.5))
    if top <= 0:
        top = float(np.max(np.abs(image))) or 1.0
    return top / 2, top


def _description(kind: MapKind, what: str) -> str:
    return f"{kind.label} [{kind.units_text}] {what} RESEARCH USE ONLY"


def lossy_attributes(study: DynamicStudy) -> dict[str, object]:
    """Lossy Image Compression attributes of an image derived from the study: once lossy compressed, images
    derived from it keep 01, the methods and the ratios (PS3.3 C.7.6.1.1.5)."""
    if not study.lossy_compression:
        return {"LossyImageCompression": "00"}
    return {"LossyImageCompression": "01",
            "LossyImageCompressionMethod": [method for method, _ in study.lossy_compression],
            "LossyImageCompressionRatio": [format_number_as_ds(ratio) for _, ratio in study.lossy_compression]}


def _coding_scheme_item() -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.CodingSchemeDesignator = CODING_SCHEME
    item.CodingSchemeName = "dynamic_pet local codes"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def parametric_map(study: DynamicStudy, image: np.ndarray, kind: MapKind, method_description: str,
                   series_number: int) -> hd.pm.ParametricMap:
    """Build the float32 Parametric Map of one map, one frame per source slice (Z order)."""
    values = np.ascontiguousarray(image, dtype=np.float32)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=kind.quantity.value, lut_explanation=f"{kind.label} [{kind.units_text}]",
        unit=kind.unit, value_range=(float(values.min()), float(values.max())),
        slope=1.0, intercept=0.0, quantity_definition=kind.quantity)
    center, width = display_window(values)
    window = hd.VOILUTTransformation(window_center=center, window_width=width,
                                     window_explanation=kind.label,
                                     voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT)
    pm = hd.pm.ParametricMap(
        **_source_geometry(study), pixel_array=values,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
        instance_number=1, specific_character_set=None, manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION, device_serial_number=__version__,
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[window], content_label=kind.quantity.value,
        content_description=method_description[:64] or None,
        series_description=_description(kind, "parametric map"))
    # The source's Specific Character Set as it is, set after highdicom, whose check refuses valid values: an
    # empty first value, as Japanese and Korean studies write it (PS3.5 Annex H), and ISO 2022 IR 149
    if study.slice_datasets[0].get("SpecificCharacterSet"):
        pm.SpecificCharacterSet = study.slice_datasets[0].SpecificCharacterSet
    # General Series Laterality (type 2C): the source's, else empty ("unknown"), as dciodvfy requires
    pm.Laterality = study.slice_datasets[0].get("Laterality", "")
    pm.CodingSchemeIdentificationSequence = [_coding_scheme_item()]
    for keyword in ("LossyImageCompressionMethod", "LossyImageCompressionRatio"):  # highdicom copies the first
        pm.pop(keyword, None)  # source's; the study's account covers every frame read
    for keyword, value in lossy_attributes(study).items():
        setattr(pm, keyword, value)
    for frame in pm.PerFrameFunctionalGroupsSequence:
        for derivation in frame.get("DerivationImageSequence", []):
            derivation.DerivationDescription = method_description
    return pm


def _source_geometry(study: DynamicStudy) -> dict:
    """highdicom's source arguments: the slices, or for a multi-frame source that one instance (highdicom
    takes one) with the map's planes given explicitly (its frames are all time frames, not the map's)."""
    if study.multiframe_source is None:
        return {"source_images": study.slice_datasets}
    first, patient = study.slice_datasets[0], hd.CoordinateSystemNames.PATIENT
    return {"source_images": [study.multiframe_source],
            "plane_positions": [hd.PlanePositionSequence(patient, ds.ImagePositionPatient)
                                for ds in study.slice_datasets],
            "plane_orientation": hd.PlaneOrientationSequence(patient, first.ImageOrientationPatient),
            "pixel_measures": hd.PixelMeasuresSequence(first.PixelSpacing,
                                                       first.get("SliceThickness") or study.spacing_mm[0],
                                                       spacing_between_slices=study.spacing_mm[0])}


def _int16_slice(values: np.ndarray) -> tuple[np.ndarray, str]:
    """Signed int16 pixels and the RescaleSlope (as written) that restores ``values``."""
    slope = format_number_as_ds(float(np.max(np.abs(values))) / 32000 or 1.0)
    stored = np.clip(np.rint(values.astype(np.float64) / float(slope)), -32767, 32767).astype(np.int16)
    return stored, slope


def _source_reference(source: pydicom.Dataset, frame: int | None) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:  # the slice is one frame of a multi-frame source instance
        item.ReferencedFrameNumber = frame
    item.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)]
    return item


def derived_pet_series(study: DynamicStudy, image: np.ndarray, kind: MapKind, method_description: str,
                       series_number: int) -> list[pydicom.Dataset]:
    """Build a derived static PET Image Storage series of one map, one instance per slice (Z order)."""
    now = datetime.datetime.now()
    center, width = display_window(image)
    series = {  # PET Series / Image modules for a static derived image (PS3.3 C.8.9.1, C.8.9.4)
        "SOPClassUID": PositronEmissionTomographyImageStorage, "SeriesInstanceUID": hd.UID(),
        "SeriesNumber": series_number, "SeriesDescription": _description(kind, "derived PET"),
        "ImageType": ["DERIVED", "PRIMARY"],  # the PET Image module allows only PRIMARY as value 2
        "DerivationDescription": method_description,
        "Manufacturer": MANUFACTURER, "ManufacturerModelName": MODEL_NAME,
        "SoftwareVersions": SOFTWARE_VERSION, "DeviceSerialNumber": __version__,
        "ContentDate": now.strftime("%Y%m%d"), "ContentTime": now.strftime("%H%M%S.%f"),
        "SeriesType": ["STATIC", "IMAGE"], "Units": kind.pet_units, "DecayCorrection": "NONE",
        "NumberOfSlices": len(study.slice_datasets),
        "FrameReferenceTime": 0,  # type 1; the map summarises all frames, so no frame time applies
        "ActualFrameDuration": None,  # type 2, empty for the same reason
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15, "PixelRepresentation": 1, "RescaleIntercept": 0,
        "WindowCenter": format_number_as_ds(center), "WindowWidth": format_number_as_ds(width),
        "VOILUTFunction": "LINEAR_EXACT",  # widths below 1 (Ki) are legal only with LINEAR_EXACT
        **lossy_attributes(study),
    }
    frames = study.source_frames or [None] * len(study.slice_datasets)
    return [_derived_pet_slice(source, image[z], z, series, frames[z])
            for z, source in enumerate(study.slice_datasets)]


def _derived_pet_slice(source: pydicom.Dataset, values: np.ndarray, z: int, series: dict[str, object],
                       source_frame: int | None) -> pydicom.Dataset:
    ds = copy.deepcopy(source)
    for keyword in _DROP_FROM_PET:
        ds.pop(keyword, None)
    if "PatientOrientationCodeSequence" in ds:
        ds.pop("PatientPosition", None)  # General Series: not allowed beside the code sequence
    for keyword, value in series.items():
        ds.pop(keyword, None)  # a source element may carry a wrong VR (e.g. LO): set it afresh
        setattr(ds, keyword, value)
    for keyword, empty in _PET_TYPE2.items():
        if keyword not in ds:
            setattr(ds, keyword, empty)
    if "Laterality" not in ds and "BodyPartExamined" not in ds:  # type 2C on a paired body part: unknown here
        ds.Laterality = ""
    ds.SOPInstanceUID = hd.UID()
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.InstanceNumber = ds.ImageIndex = z + 1
    ds.SourceImageSequence = [_source_reference(source, source_frame)]
    ds.ContributingEquipmentSequence = [hd.ContributingEquipment.for_image_acquisition(source)]
    ds.CorrectedImage = _corrected_image(source)
    stored, ds.RescaleSlope = _int16_slice(values)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def _save(datasets: list[pydicom.Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.dcm"):
        stale.unlink()
    paths = [folder / f"{i + 1:06d}.dcm" for i in range(len(datasets))]
    for ds, path in zip(datasets, paths):
        ds.save_as(path, enforce_file_format=True)
    return paths


def _corrected_image(source: pydicom.Dataset) -> list[str]:
    """The source's CorrectedImage terms but DECY (it needs a DecayFactor), plus those of a native Enhanced PET
    source's correction flags that are YES."""
    terms = [term for term in corrected_image_terms(source) if term != "DECY"]
    return terms + [term for keyword, term in _CORRECTION_TERMS.items()
                    if source.get(keyword) == "YES" and term not in terms]


def write_nifti(image: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write a (Z, Y, X) image to NIfTI with the geometry of ``affine`` (voxel (x, y, z) -> LPS mm).

    SimpleITK works in LPS and converts to the NIfTI RAS convention on writing.
    """
    itk = with_geometry(sitk.GetImageFromArray(np.ascontiguousarray(image)), affine)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(itk, str(path))
    return Path(path)


def with_geometry(itk: sitk.Image, affine: np.ndarray) -> sitk.Image:
    """``itk`` placed by ``affine`` (voxel (x, y, z) -> LPS mm; SimpleITK works in LPS too)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    itk.SetSpacing(spacing.tolist())
    itk.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
    itk.SetOrigin(affine[:3, 3].tolist())
    return itk


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI image as a (Z, Y, X) array and its voxel (x, y, z) -> LPS mm affine."""
    itk = sitk.ReadImage(str(path))
    affine = np.eye(4)
    affine[:3, :3] = np.reshape(itk.GetDirection(), (3, 3)) * np.asarray(itk.GetSpacing())
    affine[:3, 3] = itk.GetOrigin()
    return sitk.GetArrayFromImage(itk), affine

"""Load a dynamic PET study from a folder of DICOM files: the product's front door.

The rules below follow DICOM PS3.3 (PET Series C.8.9.1, PET Isotope C.8.9.2, PET Image C.8.9.4), not
the habits of one writer.

Series selection
    Every file under the folder is read (header only); files that are not DICOM Part 10 (no ``DICM``
    preamble: README, JSON, ...) are ignored, unreadable DICOM files are skipped with a warning.
    Instances are grouped by SeriesInstanceUID. A candidate is a Modality ``PT`` classic PET Image
    Storage series, not ``GATED``, with more than one time frame (some ImagePositionPatient occurs in
    more than one instance). Several candidates: the one with most frames, then most instances; a tie
    is an :class:`InputError` listing the candidates. ``series_instance_uid`` overrides the choice.

Multi-frame PET (Legacy Converted Enhanced PET, Enhanced PET)
    Each frame of a multi-frame instance is read as one classic instance would be (PS3.3 C.7.6.16): the
    top-level attributes, then the shared functional groups, then the frame's own (which win): Plane
    Position and Orientation, Pixel Measures, Pixel Value Transformation (rescale) and the Unassigned
    Shared / Per-Frame Converted Attributes (where a legacy conversion keeps FrameReferenceTime,
    ImageIndex, DecayFactor, Units, DecayCorrection, ...). Frame Content's FrameAcquisitionDateTime is the
    frame's acquisition date-time and FrameAcquisitionDuration its duration where ActualFrameDuration is
    absent. A native Enhanced PET frame (no Units) takes its units and rescale from its Real World Value
    Mapping (the frame's own, else the shared one; CID 84 ``Bq/ml`` as BQML, ``g/ml{SUVbw}`` as GML, with
    RealWorldValueSlope / Intercept, which win over the Pixel Value Transformation; other units and LUT
    mappings are refused), its decay correction from the Enhanced PET Corrections module (DecayCorrected NO
    as NONE, YES as corrected to DecayCorrectionDateTime) and its dose in MBq (Enhanced PET Isotope module).
    Every rule below then applies unchanged; a value the PET modules require and the instance lacks is
    refused naming its tag.

Frames and slices
    Frames are grouped by ImageIndex // NumberOfSlices when every instance has both, the indices are
    unique and the timing attributes agree within each group; otherwise by (FrameReferenceTime,
    ActualFrameDuration), then by (acquisition date-time, ActualFrameDuration). Slices are ordered by
    the projection of ImagePositionPatient on the slice normal (row x column direction cosines), never
    by file name or InstanceNumber. Every frame must hold the same slice positions; time groups that share no
    slice position (a multi-bed whole-body pass, whose beds have their own frame times) are refused.

Timing (minutes from injection = RadiopharmaceuticalStartDateTime, else RadiopharmaceuticalStartTime on
SeriesDate, AcquisitionDate or StudyDate, a day earlier if that would fall after the series start)
    Frame start = the per-frame acquisition date-time when it is uniform within each frame and
    different for every frame: it is the frame start by definition, whereas FrameReferenceTime is
    implementation dependent (PS3.3 C.8.9.4.1.5 gives the frame mid-point and the decay-weighted mean
    time as examples) and relative to a SeriesTime that some systems rewrite on reprocessing. Otherwise
    start = SeriesDate/Time + FrameReferenceTime - T_ave, with T_ave the decay-weighted mean time of the
    frame (PS3.3 C.8.9.4.1.5 example 2); a writer using the mid-point instead shifts the start by
    about lambda * T^2 / 12 (0.8 s for a 5-min F-18 frame). Some writers put FrameReferenceTime at the frame
    start: where all instances share one acquisition date-time (the scan start) and the mean-time reading
    would start the first frame before it while the start reading starts it there, FrameReferenceTime is
    read as the start (noted); unconfirmed, such a series makes unequal frames overlap and is refused naming
    FrameReferenceTime. End = start + ActualFrameDuration.

Decay correction: every frame is brought to the injection time
    ``ADMIN``: unchanged. ``START``: multiplied by exp(lambda * (SeriesDate/Time - injection)); when
    SeriesDate/Time lies after the first frame start (a reprocessed series), the first frame start is
    the reference instead (as the QIBA SUV guidance does). ``NONE``: multiplied by
    lambda*D/(1-exp(-lambda*D)) * exp(lambda*t_start). Enhanced PET's DecayCorrected YES: multiplied by
    exp(lambda * (DecayCorrectionDateTime - injection)). DecayFactor is computed for each frame's own
    reference time: SeriesDate/Time + FrameReferenceTime where that lies inside the frame in every frame,
    else the decay-weighted mean time; it is compared with the expected value (a note when it differs by
    more than 1 %).

Units
    ``BQML`` as is. ``GML`` (body-weight SUV): Bq/mL = SUV * dose / weight, the dose decayed to the
    image's decay reference (injection for ADMIN, series start for START), i.e. the SUV definition
    inverted; refused with ``NONE``. ``CNTS`` with the Philips "Activity Concentration Scale Factor"
    (7053,1009): multiplied by it. Anything else is refused.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from pydicom.uid import HTJ2K, JPEG2000, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless
from pydicom.valuerep import DA, DT, TM

from dynamic_pet.errors import InputError
from dynamic_pet.study import DynamicStudy

logger = logging.getLogger(__name__)

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_PET_STORAGE = "1.2.840.10008.5.1.4.1.1.130"
MULTIFRAME_PET_STORAGE = {ENHANCED_PET_STORAGE: "Enhanced PET Image Storage",
                          "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage"}
PET_IMAGE_CLASSES = {PET_IMAGE_STORAGE, *MULTIFRAME_PET_STORAGE}
# Functional-group macros whose contents are classic PET attributes (PS3.3 C.7.6.16.2)
_CLASSIC_MACROS = ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence",
                   "PixelValueTransformationSequence", "UnassignedSharedConvertedAttributesSequence",
                   "UnassignedPerFrameConvertedAttributesSequence")
_MULTIFRAME_ONLY = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "NumberOfFrames",
                    "DimensionOrganizationSequence", "DimensionIndexSequence", "DimensionOrganizationType",
                    "PixelPresentation", "VolumetricProperties", "VolumeBasedCalculationTechnique",
                    "ContentQualification", "PixelData", "FloatPixelData", "DoubleFloatPixelData")
# CID 84 "PET Units" (UCUM) codes of a Real World Value Mapping -> the PET Series' Units they stand for
_REAL_WORLD_UNITS = {"Bq/ml": "BQML", "g/ml{SUVbw}": "GML"}
_PHILIPS_CREATOR = "Philips PET Private Group"
_OVERLAP_TOLERANCE_S = 1.0  # acquisition times truncated to whole seconds can overlap by up to 1 s
_DECAY_FACTOR_TOLERANCE = 0.01
# DecayFactors agreeing on a decay reference to within this much decay (0.1 %; 9.5 s for F-18) fix the reference
_REFERENCE_AGREEMENT = 0.001
# Transfer syntaxes that are lossy whatever the header says, and the method term (PS3.3 C.7.6.1.1.5.1) of every
# syntax that can be lossy; JPEG 2000, JPEG-LS near-lossless and HTJ2K are lossy when LossyImageCompression is 01
_ALWAYS_LOSSY = {JPEGBaseline8Bit, JPEGExtended12Bit}
_LOSSY_METHODS = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1", JPEG2000: "ISO_15444_1",
                  JPEGLSNearLossless: "ISO_14495_1", HTJ2K: "ISO_15444_15"}
_SAME_POSITION_MM = 0.01  # two instances of one frame closer than this along the normal are one slice


def decay_weighted_offset_s(duration_s: float | np.ndarray, half_life_s: float) -> float | np.ndarray:
    """Time after the frame start at which a decaying source has its frame-average activity.

    PS3.3 C.8.9.4.1.5 example 2: ``T_ave = ln(lambda*T / (1 - exp(-lambda*T))) / lambda``.

    Parameters
    ----------
    duration_s:
        Frame duration(s) T in seconds.
    half_life_s:
        Radionuclide half-life in seconds.

    Returns
    -------
    float or ndarray
        T_ave in seconds (slightly less than T / 2).
    """
    lam = math.log(2.0) / half_life_s
    x = lam * np.asarray(duration_s, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_ave = np.where(x > 0, np.log(x / -np.expm1(-x)) / lam, 0.0)
    return float(t_ave) if t_ave.ndim == 0 else t_ave


# --------------------------------------------------------------------------------------------- reading

def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}" if tag is not None else keyword


def _raw(ds: pydicom.Dataset, keyword: str):
    """The element's value, or None when absent or empty."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None or value == "" or (isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                                        and len(value) == 0):
        return None
    return value


def _single(value):
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if len(value) != 1:
            raise ValueError(f"expected one value, found {len(value)}")
        return value[0]
    return value


def _float(ds: pydicom.Dataset, keyword: str) -> float | None:
    value = _raw(ds, keyword)
    if value is None:
        return None
    result = float(_single(value))
    if not math.isfinite(result):
        raise ValueError(f"value is {result}")
    return result


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    value = _float(ds, keyword)
    if value is not None and value != int(value):
        raise ValueError(f"{value} is not an integer")
    return None if value is None else int(value)


def _floats(ds: pydicom.Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    value = _raw(ds, keyword)
    if value is None:
        return None
    values = tuple(float(v) for v in (value if isinstance(value, Iterable) and not isinstance(value, str)
                                      else [value]))
    if len(values) != n or not all(map(math.isfinite, values)):
        raise ValueError(f"expected {n} finite numbers, found {len(values)}")
    return values


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = _raw(ds, keyword)
    if value is None:
        return None
    first = value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value
    return str(first).strip().upper() or None


def _date(ds: pydicom.Dataset, keyword: str) -> dt.date | None:
    value = _raw(ds, keyword)
    if value is None:
        return None
    text = str(value).strip()
    if len(text) == 10 and text[4] in ".-":  # ACR-NEMA style YYYY.MM.DD
        text = text[:4] + text[5:7] + text[8:]
    return dt.date(*DA(text).timetuple()[:3])


def _time(ds: pydicom.Dataset, keyword: str) -> dt.time | None:
    value = _raw(ds, keyword)
    if value is None:
        return None
    parsed = TM(str(value).strip().replace(":", ""))
    return dt.time(parsed.hour, parsed.minute, parsed.second, parsed.microsecond)


def _local_zone(ds: pydicom.Dataset) -> dt.timezone | None:
    """TimezoneOffsetFromUTC (0008,0201), the zone of the instance's DA / TM values, as a timezone."""
    text = _text(ds, "TimezoneOffsetFromUTC")
    if text is None:
        return None
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        raise ValueError(f"{text!r} is not &HHMM")
    minutes = int(text[1:3]) * 60 + int(text[3:])
    return dt.timezone(dt.timedelta(minutes=minutes if text[0] == "+" else -minutes))


def _datetime(ds: pydicom.Dataset, keyword: str, top: pydicom.Dataset | None = None) -> dt.datetime | None:
    """A DT value as a naive date-time in the instance's local time: a value with its own UTC offset is
    converted to TimezoneOffsetFromUTC of ``top`` (the instance; default ``ds``) when that is given, as DA
    and TM values are in that zone (SOP Common module); without it the offset is dropped."""
    value = _raw(ds, keyword)
    if value is None:
        return None
    parsed = DT(str(value).strip())
    zone = _local_zone(top if top is not None else ds) if parsed.tzinfo is not None else None
    if zone is not None:
        parsed = parsed.astimezone(zone)
    return dt.datetime(parsed.year, parsed.month, parsed.day, parsed.hour, parsed.minute, parsed.second,
                       parsed.microsecond)


def _nearest_day(when: dt.datetime, anchor: dt.datetime) -> dt.datetime:
    """``when`` moved by whole days to within 12 h of ``anchor``: a time of day given without its date and
    combined with the series date belongs to the day before or after when the study crosses midnight."""
    return when + dt.timedelta(days=round((anchor - when) / dt.timedelta(days=1)))


def _radiopharmaceutical(ds: pydicom.Dataset) -> pydicom.Dataset:
    sequence = _raw(ds, "RadiopharmaceuticalInformationSequence")
    return sequence[0] if sequence else pydicom.Dataset()


# Physical half-lives (s) of PET radionuclides (NNDC), by mass number and element symbol, for a series whose
# RadionuclideHalfLife (type 3) is absent but whose RadionuclideCodeSequence (CID 4020) names the nuclide
NUCLIDE_HALF_LIFE_S = {"18F": 6586.2, "11C": 1221.8, "13N": 597.9, "15O": 122.24, "68Ga": 4062.6, "82Rb": 75.45,
                       "64Cu": 45721.0, "89Zr": 282276.0, "124I": 360806.0}
_ELEMENTS = {"fluorine": "F", "carbon": "C", "nitrogen": "N", "oxygen": "O", "gallium": "Ga", "rubidium": "Rb",
             "copper": "Cu", "zirconium": "Zr", "iodine": "I"}


def _nuclide(item: pydicom.Dataset) -> str | None:
    """The radionuclide as mass number and symbol (``18F``) from the code meaning of RadionuclideCodeSequence:
    ``^18^Fluorine`` (CID 4020), ``F-18``, ``18F`` or ``Fluorine-18``; None when absent or not recognised."""
    code = (_raw(item, "RadionuclideCodeSequence") or [pydicom.Dataset()])[0]
    meaning = str(code.get("CodeMeaning", "") or "")
    mass = re.search(r"\d+", meaning)
    word = re.search(r"[A-Za-z]+", meaning)
    if mass is None or word is None:
        return None
    name = word.group().lower()
    symbol = _ELEMENTS.get(name) or next((v for v in _ELEMENTS.values() if v.lower() == name), None)
    return None if symbol is None else mass.group() + symbol


def corrected_image_terms(ds: pydicom.Dataset) -> list[str]:
    """The terms of CorrectedImage (0028,0051) (pydicom gives a single value as a str, not a list)."""
    value = _raw(ds, "CorrectedImage") or []
    return [str(term).strip() for term in ([value] if isinstance(value, str) else value)]


def _attenuation_corrected(ds: pydicom.Dataset) -> bool:
    """CorrectedImage holds ATTN (PET Series), or AttenuationCorrected is YES (Enhanced PET Corrections)."""
    return "ATTN" in (t.upper() for t in corrected_image_terms(ds)) or _text(ds, "AttenuationCorrected") == "YES"


def _decay_mode(ds: pydicom.Dataset) -> str | None:
    """The PET Series' DecayCorrection, else the Enhanced PET Corrections module's DecayCorrected: NO is
    ``NONE``, YES is ``DATETIME`` (corrected to DecayCorrectionDateTime)."""
    mode = _text(ds, "DecayCorrection")
    if mode is not None:
        return mode
    corrected = _text(ds, "DecayCorrected")
    return {"NO": "NONE", "YES": "DATETIME"}.get(corrected, corrected)


def _real_world_mapping(ds: pydicom.Dataset) -> tuple[str, pydicom.Dataset] | None:
    """(Units, item) of the frame's Real World Value Mapping in Bq/mL (else body-weight SUV), or None without
    a mapping; ValueError for a mapping in other units only."""
    coded = {}
    for item in _raw(ds, "RealWorldValueMappingSequence") or []:
        unit = (_raw(item, "MeasurementUnitsCodeSequence") or [pydicom.Dataset()])[0]
        coded.setdefault(str(unit.get("CodeValue", "") or "").strip(), item)
    for code, units in _REAL_WORLD_UNITS.items():
        if code in coded:
            return units, coded[code]
    if coded:
        raise ValueError(f"Real World Value Mapping in {', '.join(map(repr, sorted(coded)))}, not an activity "
                         f"concentration ({' or '.join(_REAL_WORLD_UNITS)}, CID 84)")
    return None


def _units(ds: pydicom.Dataset) -> str | None:
    """The PET Series' Units, else those of a native Enhanced PET frame's Real World Value Mapping."""
    units = _text(ds, "Units")
    if units is not None:
        return units
    mapping = _real_world_mapping(ds)
    return None if mapping is None else mapping[0]


def _rescale(ds: pydicom.Dataset, keyword: str) -> float | None:
    """RescaleSlope / RescaleIntercept; for a native Enhanced PET frame (no Units) the Real World Value
    Mapping's slope / intercept, the standard's mapping of stored values to its units."""
    try:
        mapping = _real_world_mapping(ds) if _text(ds, "Units") is None else None
    except ValueError:  # a mapping in other units: refused against Units
        mapping = None
    if mapping is None:
        return _float(ds, keyword)
    real_world = keyword.replace("Rescale", "RealWorldValue")
    value = _float(mapping[1], real_world)
    if value is None:
        raise ValueError(f"the Real World Value Mapping in {mapping[0]} has no {_tag(real_world)} "
                         "(a LUT mapping is not supported)")
    return value


def _dose_bq(ds: pydicom.Dataset) -> float | None:
    """RadionuclideTotalDose in Bq: the PET Isotope module states Bq, the Enhanced PET Isotope module MBq."""
    dose = _float(_radiopharmaceutical(ds), "RadionuclideTotalDose")
    enhanced = str(_raw(ds, "SOPClassUID") or "") == ENHANCED_PET_STORAGE
    return dose * 1e6 if dose is not None and enhanced else dose


def _philips_scale(ds: pydicom.Dataset) -> float | None:
    try:
        block = ds.private_block(0x7053, _PHILIPS_CREATOR)
    except KeyError:
        return None
    if 0x09 not in block:
        return None
    value = block[0x09].value
    if isinstance(value, bytes):  # implicit VR files without a private dictionary entry
        value = value.decode("ascii", "replace").strip("\0 ")
    return float(_single(value))


def _transfer_syntax(ds: pydicom.Dataset) -> pydicom.uid.UID | None:
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def _is_deflated(ds: pydicom.Dataset) -> bool:
    """Deflated transfer syntax: the dataset after the file meta is one zlib stream."""
    syntax = _transfer_syntax(ds)
    return syntax is not None and syntax.is_deflated


def _read_whole(ds: pydicom.Dataset) -> bool:
    """Whether pixels must be decoded from the dataset read whole rather than from the file: pydicom's reader by
    path handles neither a Deflated file nor one without a Part 10 header."""
    return _is_deflated(ds) or getattr(ds, "preamble", b"") is None


def _read(path: Path, **kwargs) -> pydicom.Dataset | None:
    """The file read as DICOM, also without a Part 10 header (no preamble or file meta, as older systems and
    raw dumps write): such a file counts when it holds SOP class and instance UIDs, a modality and pixel data,
    and gets the transfer syntax its encoding shows; None for a file that is not DICOM."""
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(path, force=True, **kwargs)
        if not all(keyword in ds for keyword in ("SOPClassUID", "SOPInstanceUID", "Modality")) or \
                (not kwargs.get("stop_before_pixels") and 0x7FE00010 not in ds):
            return None
        str(ds.SOPClassUID), str(ds.Modality)  # garbage read as DICOM fails here
    except Exception:  # noqa: BLE001 - not DICOM at all
        return None
    if _transfer_syntax(ds) is None:
        implicit, little = ds.original_encoding[:2]
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                                          pydicom.uid.ExplicitVRLittleEndian if little else
                                          pydicom.uid.ExplicitVRBigEndian)
    ds.preamble = None
    return ds


def _lossy_compression(ds: pydicom.Dataset, path: Path) -> tuple[str, float] | None:
    """(method, ratio) when the pixel data have been lossy compressed, by LossyImageCompression 01 or a transfer
    syntax that is always lossy; None otherwise. The ratio is the header's (the largest of several steps) or,
    when absent, estimated as the native pixel data size over the stored one (the file from the pixel data on)."""
    syntax = _transfer_syntax(ds)
    if _text(ds, "LossyImageCompression") != "01" and syntax not in _ALWAYS_LOSSY:
        return None
    methods = _raw(ds, "LossyImageCompressionMethod")
    method = str(_single(methods)) if methods else _LOSSY_METHODS.get(syntax, "unknown")
    ratios = _raw(ds, "LossyImageCompressionRatio")
    if ratios:
        ratio = max(float(r) for r in (ratios if isinstance(ratios, (list, tuple)) else [ratios]))
    else:
        native = (_int(ds, "Rows") or 0) * (_int(ds, "Columns") or 0) * (_int(ds, "BitsAllocated") or 16) / 8
        offset = getattr(ds.get_item(0x7FE00010, keep_deferred=True), "value_tell", None) \
            if 0x7FE00010 in ds else None
        stored = path.stat().st_size - (offset or 0)
        ratio = native * (_int(ds, "NumberOfFrames") or 1) / max(stored, 1)
    return method, round(ratio, 1)


def _native_pixel_bytes(ds: pydicom.Dataset) -> int | None:
    """Length in bytes of native (uncompressed) PixelData; None when encapsulated or absent."""
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if 0x7FE00010 not in ds or (syntax is not None and syntax.is_encapsulated):
        return None
    element = ds.get_item(0x7FE00010, keep_deferred=True)
    length = getattr(element, "length", None)  # a deferred (raw) element: its header's length
    if length is None and isinstance(element.value, bytes):
        length = len(element.value)
    return None if length in (None, 0xFFFFFFFF) else int(length)


# name -> (tag named in errors, extractor); every value is parsed once, at scan time
_FIELDS: dict[str, tuple[str, Callable[[pydicom.Dataset], object]]] = {
    "study_uid": ("StudyInstanceUID", lambda ds: str(_raw(ds, "StudyInstanceUID") or "")),
    "series_type": ("SeriesType", lambda ds: _text(ds, "SeriesType")),
    "n_time_slices": ("NumberOfTimeSlices", lambda ds: _int(ds, "NumberOfTimeSlices")),
    "n_slices": ("NumberOfSlices", lambda ds: _int(ds, "NumberOfSlices")),
    "image_index": ("ImageIndex", lambda ds: _int(ds, "ImageIndex")),
    "n_frames_in_file": ("NumberOfFrames", lambda ds: _int(ds, "NumberOfFrames")),
    "frt_ms": ("FrameReferenceTime", lambda ds: _float(ds, "FrameReferenceTime")),
    "duration_ms": ("ActualFrameDuration", lambda ds: _float(ds, "ActualFrameDuration")),
    "units": ("Units", _units),
    "decay_correction": ("DecayCorrection", _decay_mode),
    "decay_dt": ("DecayCorrectionDateTime", lambda ds: _datetime(ds, "DecayCorrectionDateTime")),
    "decay_factor": ("DecayFactor", lambda ds: _float(ds, "DecayFactor")),
    "half_life_s": ("RadionuclideHalfLife", lambda ds: _float(_radiopharmaceutical(ds), "RadionuclideHalfLife")),
    "nuclide": ("RadionuclideCodeSequence", lambda ds: _nuclide(_radiopharmaceutical(ds))),
    "attenuation_corrected": ("CorrectedImage", _attenuation_corrected),
    "series_label": ("SeriesDescription", lambda ds: f"series {_int(ds, 'SeriesNumber') or '?'} "
                                                      f"'{str(_raw(ds, 'SeriesDescription') or '').strip()}'"),
    "dose_bq": ("RadionuclideTotalDose", _dose_bq),
    "weight_kg": ("PatientWeight", lambda ds: _float(ds, "PatientWeight")),
    "position": ("ImagePositionPatient", lambda ds: _floats(ds, "ImagePositionPatient", 3)),
    "orientation": ("ImageOrientationPatient", lambda ds: _floats(ds, "ImageOrientationPatient", 6)),
    "pixel_spacing": ("PixelSpacing", lambda ds: _floats(ds, "PixelSpacing", 2)),
    "slice_thickness": ("SliceThickness", lambda ds: _float(ds, "SliceThickness")),
    "rows": ("Rows", lambda ds: _int(ds, "Rows")),
    "columns": ("Columns", lambda ds: _int(ds, "Columns")),
    "pixel_bytes": ("PixelData", _native_pixel_bytes),
    "slope": ("RescaleSlope", lambda ds: _rescale(ds, "RescaleSlope")),
    "intercept": ("RescaleIntercept", lambda ds: _rescale(ds, "RescaleIntercept")),
    "philips_scale": ("Philips (7053,1009) activity concentration scale factor", _philips_scale),
    "series_dt": ("SeriesTime", lambda ds: _combine(_date(ds, "SeriesDate"), _time(ds, "SeriesTime"))),
    "acquisition_dt": ("AcquisitionTime", lambda ds: _acquisition_datetime(ds)),
}
# consistency across all instances of the series is required for these
_SERIES_LEVEL = ("sop_class", "study_uid", "n_time_slices", "n_slices", "units", "decay_correction",
                 "decay_dt", "half_life_s", "orientation", "pixel_spacing", "rows", "columns", "series_dt",
                 "injection")
_DATE_FIELDS = {"series_dt", "injection", "acquisition_dt", "decay_dt"}
_INJECTION_TAGS = "(0018,1078) RadiopharmaceuticalStartDateTime / (0018,1072) RadiopharmaceuticalStartTime"


def _combine(date: dt.date | None, time: dt.time | None) -> dt.datetime | None:
    return None if date is None or time is None else dt.datetime.combine(date, time)


def _acquisition_datetime(ds: pydicom.Dataset) -> dt.datetime | None:
    """AcquisitionDateTime, else AcquisitionDate and Time; an empty AcquisitionDate (type 2) borrows the
    series date, on the day that puts the time within 12 h of the series start."""
    combined = _datetime(ds, "AcquisitionDateTime")
    if combined is not None:
        return combined
    own = _date(ds, "AcquisitionDate")
    acquired = _combine(own or _date(ds, "SeriesDate"), _time(ds, "AcquisitionTime"))
    series = _combine(_date(ds, "SeriesDate"), _time(ds, "SeriesTime"))
    return acquired if own is not None or acquired is None or series is None else _nearest_day(acquired, series)


def _injection(ds: pydicom.Dataset, path: Path, series_dt: object) -> tuple[dt.datetime, str] | None:
    """Injection date-time and the attribute it came from."""
    item = _radiopharmaceutical(ds)
    try:
        full = _datetime(item, "RadiopharmaceuticalStartDateTime", top=ds)
    except ValueError as exc:
        raise InputError(f"cannot be read ({exc})", path, _tag("RadiopharmaceuticalStartDateTime")) from exc
    if full is not None:
        return full, "RadiopharmaceuticalStartDateTime"
    try:
        time = _time(item, "RadiopharmaceuticalStartTime")
        date = _date(ds, "SeriesDate") or _date(ds, "AcquisitionDate") or _date(ds, "StudyDate")
    except ValueError as exc:
        raise InputError(f"cannot be read ({exc})", path, _tag("RadiopharmaceuticalStartTime")) from exc
    if time is None or date is None:
        return None
    injection = dt.datetime.combine(date, time)
    if isinstance(series_dt, dt.datetime):  # a scan may start shortly before the injection, or after midnight
        moved = _nearest_day(injection, series_dt)
        if moved != injection:
            return moved, f"RadiopharmaceuticalStartTime ({'previous' if moved < injection else 'next'} day)"
    return injection, "RadiopharmaceuticalStartTime with the series date"


class _Record:
    """What the loader needs from one instance, parsed at scan time (compact: no Dataset is kept)."""

    __slots__ = ("path", "sop_uid", "series_uid", "modality", "sop_class", "values", "copies", "frame")

    def __init__(self, path: Path, ds: pydicom.Dataset, frame: int | None = None):
        self.path = path
        self.frame = frame  # 0-based frame of a multi-frame instance (``ds`` is then its view), else None
        self.sop_uid = str(ds.get("SOPInstanceUID", "") or "") + ("" if frame is None else f"#{frame + 1}")
        self.series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        self.modality = str(ds.get("Modality", "") or "").strip().upper()
        self.sop_class = str(ds.get("SOPClassUID", "") or "")
        self.copies: list[_Record] = []  # other files with the same SOPInstanceUID
        self.values: dict[str, object] = {"sop_class": self.sop_class}
        if self.modality != "PT":
            return
        for name, (keyword, extract) in _FIELDS.items():
            try:
                self.values[name] = extract(ds)
            except Exception as exc:  # noqa: BLE001 - any unparsable value is kept against its tag
                self.values[name] = InputError(f"value cannot be read ({exc})", path, _tag(keyword))
        try:
            self.values["injection"] = _injection(ds, path, self.values.get("series_dt"))
        except InputError as exc:
            self.values["injection"] = exc
        except Exception as exc:  # noqa: BLE001 - e.g. a date at the edge of the calendar
            self.values["injection"] = InputError(f"value cannot be read ({exc})", path, _INJECTION_TAGS)

    def get(self, name: str, required: bool = False):
        """The parsed value; raises the stored InputError, or one for a missing required value."""
        value = self.values.get(name)
        if isinstance(value, InputError):
            raise value
        if value is None and required:
            tag = _tag(_FIELDS[name][0]) if name in _FIELDS else _INJECTION_TAGS
            raise InputError("required value is missing", self.path, tag)
        return value

    def peek(self, name: str):
        """The parsed value, or None when absent or unreadable (for lenient decisions)."""
        value = self.values.get(name)
        return None if isinstance(value, InputError) else value


def _scan(root: Path) -> tuple[dict[str, list[_Record]], list[Path]]:
    """Header records of every DICOM file under ``root`` grouped by series, and the unreadable files."""
    by_series: dict[str, list[_Record]] = defaultdict(list)
    unreadable: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = _read(path, defer_size=256)  # pixel data located, not loaded
            if ds is None:
                logger.debug("ignored, not a DICOM file: %s", path)
                continue
            record = _Record(path, ds)
            if record.modality == "PT" and record.sop_class in PET_IMAGE_CLASSES:
                _check_complete(ds, path)
                record.values.update(_encoding(ds, path))
                if record.sop_class in MULTIFRAME_PET_STORAGE:
                    for frame in _multiframe_records(path, ds):
                        by_series[frame.series_uid].append(frame)
                    continue
        except InputError:  # a readable multi-frame PET instance whose frames cannot be made out
            raise
        except Exception as exc:  # noqa: BLE001 - truncated / corrupt files are reported, not fatal here
            logger.warning("skipped unreadable DICOM file %s (%s)", path, type(exc).__name__)
            unreadable.append(path)
            continue
        if record.series_uid and record.sop_uid:
            by_series[record.series_uid].append(record)
        else:
            logger.debug("ignored, no SeriesInstanceUID/SOPInstanceUID: %s", path)
    return by_series, unreadable


def frame_views(ds: pydicom.Dataset, path: Path) -> list[pydicom.Dataset]:
    """One classic-like dataset per frame of a multi-frame PET instance (rule in the module docstring)."""
    n_frames = _int(ds, "NumberOfFrames") or 0
    per_frame = _raw(ds, "PerFrameFunctionalGroupsSequence") or []
    if n_frames < 1 or len(per_frame) != n_frames:
        raise InputError(f"NumberOfFrames is {n_frames} but there are {len(per_frame)} per-frame functional "
                         "groups", path, _tag("PerFrameFunctionalGroupsSequence"))
    top = [element for element in ds if element.keyword not in _MULTIFRAME_ONLY]
    shared = (_raw(ds, "SharedFunctionalGroupsSequence") or [pydicom.Dataset()])[0]
    views = []
    for groups in per_frame:
        view = pydicom.Dataset()  # (copy.copy of a Dataset would share one element dict between the views)
        for element in top:
            view.add(element)
        for group in (shared, groups):
            for macro in _CLASSIC_MACROS:
                for element in (_raw(group, macro) or [pydicom.Dataset()])[0]:
                    view.add(element)
            content = (_raw(group, "FrameContentSequence") or [pydicom.Dataset()])[0]
            # new elements, never assignments: the views share the top level's element objects
            if _raw(content, "FrameAcquisitionDateTime") is not None:
                view.add_new("AcquisitionDateTime", "DT", content.FrameAcquisitionDateTime)
            if _raw(content, "FrameAcquisitionDuration") is not None and _raw(view, "ActualFrameDuration") is None:
                view.add_new("ActualFrameDuration", "IS", round(float(content.FrameAcquisitionDuration)))  # ms
        mapping = _raw(groups, "RealWorldValueMappingSequence") or _raw(shared, "RealWorldValueMappingSequence")
        if mapping is not None:
            view.add_new("RealWorldValueMappingSequence", "SQ", mapping)
        view.pop("RescaleType", None)  # Pixel Value Transformation only, not a PET Image attribute
        try:
            acquired = _datetime(view, "AcquisitionDateTime")
        except ValueError:  # reported against its tag when the record reads it
            acquired = None
        if acquired is not None and _raw(view, "AcquisitionTime") is None:  # PET Image module, type 2
            view.add_new("AcquisitionDate", "DA", acquired.strftime("%Y%m%d"))
            view.add_new("AcquisitionTime", "TM", acquired.strftime("%H%M%S.%f"))
        views.append(view)
    return views


def _multiframe_records(path: Path, ds: pydicom.Dataset) -> list[_Record]:
    """A record per frame of a multi-frame PET instance, its pixel-data length shared out over the frames and
    the instance's encoding (which its frame views, without file meta, do not show) recorded for each."""
    records = [_Record(path, view, frame) for frame, view in enumerate(frame_views(ds, path))]
    stored, encoding = _native_pixel_bytes(ds), _encoding(ds, path)
    for record in records:
        record.values["pixel_bytes"] = None if stored is None else stored // len(records)  # drops the pad byte
        record.values.update(encoding)
    return records


def _encoding(ds: pydicom.Dataset, path: Path) -> dict[str, object]:
    """An instance's pixel encoding, for its record(s): whether it must be read whole to decode (``read_whole``)
    and its lossy compression (``lossy``; an InputError against LossyImageCompression when unreadable)."""
    try:
        lossy = _lossy_compression(ds, path)
    except Exception as exc:  # noqa: BLE001 - a malformed ratio or method
        lossy = InputError(f"value cannot be read ({exc})", path, _tag("LossyImageCompression"))
    return {"read_whole": _read_whole(ds), "lossy": lossy}


def _check_complete(ds: pydicom.Dataset, path: Path) -> None:
    """pydicom returns a partial dataset for a truncated file: require the pixel data element, whole.

    A Deflated file's offsets count in the inflated stream (a truncated one fails to inflate when read)."""
    deflated = _is_deflated(ds)
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):  # PixelData, FloatPixelData, DoubleFloatPixelData
        if tag in ds:
            element = ds.get_item(tag, keep_deferred=True)
            length, offset = getattr(element, "length", None), getattr(element, "value_tell", None)
            if deflated or None in (length, offset) or length == 0xFFFFFFFF \
                    or offset + length <= path.stat().st_size:
                return
            raise EOFError("pixel data extends past the end of the file (truncated)")
    raise EOFError("no pixel data (truncated file?)")


def _unreadable_hint(unreadable: list[Path]) -> str:
    if not unreadable:
        return ""
    return f" ({len(unreadable)} DICOM file(s) could not be read, e.g. {unreadable[0]})"


# ------------------------------------------------------------------------------------------- selection

def _frame_count_estimate(records: list[_Record]) -> int:
    """Largest number of distinct instances sharing one slice position (1 for a static series)."""
    per_position: dict[tuple, set[str]] = defaultdict(set)
    for record in records:
        position = record.peek("position")
        if position is not None:
            per_position[tuple(np.round(position, 2))].add(record.sop_uid)
    if per_position:
        return max(len(uids) for uids in per_position.values())
    return max((record.peek("n_time_slices") or 1 for record in records), default=1)


def _select_series(by_series: dict[str, list[_Record]], root: Path, wanted: str | None,
                   unreadable: list[Path], notes: list[str]) -> list[_Record]:
    hint = _unreadable_hint(unreadable)
    if not by_series:
        raise InputError(f"no DICOM instances found{hint}", root)
    if wanted is not None:
        if wanted not in by_series:
            raise InputError(f"the requested series is not in the input; series present: "
                             f"{', '.join(sorted(by_series))}", root, _tag("SeriesInstanceUID"))
        return _require_dynamic_pet(by_series[wanted])
    pet = {uid: [r for r in records if r.modality == "PT"] for uid, records in by_series.items()}
    pet = {uid: records for uid, records in pet.items() if records}
    if not pet:
        raise InputError(f"no PET series (Modality PT) among the {len(by_series)} DICOM series found{hint}",
                         root, _tag("Modality"))
    candidates = {uid: (bool(records[0].peek("attenuation_corrected")), _frame_count_estimate(records),
                        len(records)) for uid, records in pet.items()
                  if _is_pet_image(records) and records[0].peek("series_type") != "GATED"}
    candidates = {uid: key for uid, key in candidates.items() if key[1] > 1}
    if not candidates:
        several = (" and single-frame series are not combined into one dynamic study (passes of a multi-pass "
                   "whole-body protocol are not supported)") if len(pet) > 1 else ""
        raise InputError(f"no dynamic PET series: each of the {len(pet)} PET series has a single time frame"
                         f"{several}{hint}", pet[next(iter(pet))][0].path, _tag("NumberOfTimeSlices"))
    best = max(candidates.values())
    top = sorted(uid for uid, key in candidates.items() if key == best)
    if len(top) > 1:
        listed = "; ".join(f"{pet[uid][0].peek('series_label')} {uid}" for uid in top)
        raise InputError(f"{len(top)} dynamic PET series qualify equally ({best[1]} frames, {best[2]} "
                         f"instances each): {listed}; choose one with --series-uid (PATLAK_SERIES_UID)",
                         root, _tag("SeriesInstanceUID"))
    if len(candidates) > 1:
        notes.append(f"{len(candidates)} dynamic PET series found; chose {pet[top[0]][0].peek('series_label')}: "
                     "attenuation-corrected first, then the most frames, then the most instances")
    return pet[top[0]]


def _is_pet_image(records: list[_Record]) -> bool:
    """Classic or multi-frame PET image storage (a mix of SOP classes is refused by the series checks)."""
    return any(r.sop_class in PET_IMAGE_CLASSES for r in records)


def _require_dynamic_pet(records: list[_Record]) -> list[_Record]:
    odd = next((r for r in records if r.modality != "PT"), None)
    if odd is not None:
        raise InputError(f"the requested series is not PET (Modality {odd.modality or 'missing'})",
                         odd.path, _tag("Modality"))
    if _frame_count_estimate(records) < 2:
        raise InputError("the requested series has a single time frame", records[0].path,
                         _tag("NumberOfTimeSlices"))
    return records


# ------------------------------------------------------------------------------------------ validation

def _merge_duplicates(records: list[_Record]) -> list[_Record]:
    """One record per SOPInstanceUID; other files of the same instance are kept as ``copies``."""
    first: dict[str, _Record] = {}
    for record in records:
        original = first.setdefault(record.sop_uid, record)
        if original is record:
            continue
        differing = [name for name in ("position", "image_index", "frt_ms", "duration_ms", "acquisition_dt",
                                       "slope", "intercept") if original.peek(name) != record.peek(name)]
        if differing:
            keyword = _FIELDS[differing[0]][0]
            raise InputError(f"two files carry the same SOPInstanceUID with different {keyword} "
                             f"(other file: {original.path})", record.path, _tag(keyword))
        original.copies.append(record)
    return list(first.values())


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    return a == b


def _check_series_level(records: list[_Record]) -> None:
    """Attributes that must agree between all instances of the series (geometry, units, timing refs)."""
    for name in _SERIES_LEVEL:
        shown = [repr(record.peek(name)) for record in records]
        values = Counter(shown)
        if len(values) == 1:
            continue  # unreadable values are raised where they are used
        majority = records[shown.index(values.most_common(1)[0][0])].peek(name)
        odd = next((r for r in records if not _same(r.peek(name), majority)), None)
        if odd is None:
            continue
        odd.get(name)  # a value that could not be parsed is the more specific error
        tag = {"sop_class": _tag("SOPClassUID"), "injection": _INJECTION_TAGS}.get(name) or _tag(_FIELDS[name][0])
        shown = "" if name in _DATE_FIELDS else f" ({odd.peek(name)!r} here, {majority!r} in most instances)"
        raise InputError(f"differs between instances of the series{shown}", odd.path, tag)


def _timing_key(record: _Record) -> tuple:
    return record.peek("frt_ms"), record.peek("duration_ms"), record.peek("acquisition_dt")


def _groups_by_image_index(records: list[_Record], notes: list[str]) -> dict[int, list[_Record]] | None:
    """Frames from ImageIndex and NumberOfSlices, or None when they are absent or inconsistent."""
    indices = [r.peek("image_index") for r in records]
    n_slices = records[0].peek("n_slices")
    if None in indices or not n_slices or n_slices < 1:
        return None
    groups: dict[int, list[_Record]] = defaultdict(list)
    for record, index in zip(records, indices):
        groups[(index - 1) // n_slices].append(record)
    limit = max(records[0].peek("n_time_slices") or 0, len(groups) + 1)
    consistent = (min(indices) >= 1 and len(set(indices)) == len(indices) and max(groups) < limit
                  and all(len({_timing_key(r) for r in group}) == 1 for group in groups.values()))
    if not consistent:
        notes.append("ImageIndex is not consistent with the frame timing; frames grouped by timing instead")
        logger.warning("ImageIndex inconsistent with frame timing; grouping frames by timing")
        return None
    return groups


def _groups_by_time(records: list[_Record], notes: list[str]) -> list[list[_Record]]:
    for name, label in (("frt_ms", "FrameReferenceTime"), ("acquisition_dt", "acquisition date-time")):
        if all(r.peek(name) is not None and r.peek("duration_ms") is not None for r in records):
            groups: dict[tuple, list[_Record]] = defaultdict(list)
            for record in records:
                value = record.peek(name)
                key = round(value, 3) if isinstance(value, float) else value
                groups[(key, record.peek("duration_ms"))].append(record)
            notes.append(f"frames grouped by {label} and ActualFrameDuration")
            return [groups[key] for key in sorted(groups)]
    for record in records:
        record.get("duration_ms", required=True)
    missing = next(r for r in records if r.peek("frt_ms") is None)
    missing.get("frt_ms")
    raise InputError("time frames cannot be told apart: FrameReferenceTime is missing and the acquisition "
                     "date/time is missing in some instance", missing.path, _tag("FrameReferenceTime"))


def _group_frames(records: list[_Record], root: Path, notes: list[str], unreadable: list[Path],
                  normal: np.ndarray) -> list[list[_Record]]:
    """Instances per time frame (frame order as declared; checked against times later)."""
    hint = _unreadable_hint(unreadable)
    by_index = _groups_by_image_index(records, notes)
    declared = records[0].peek("n_time_slices")
    if by_index is not None:
        n_slices = records[0].peek("n_slices")
        expected = range(max(declared or 0, max(by_index) + 1))
        f = next((f for f in expected if f not in by_index), None)
        if f is not None:
            raise InputError(f"time frame {f + 1} is missing: no instance with ImageIndex "
                             f"{f * n_slices + 1}-{(f + 1) * n_slices}{hint}", root, _tag("ImageIndex"))
        frames = [by_index[f] for f in expected]
    else:
        frames = _groups_by_time(records, notes)
        _refuse_bed_dependent_timing(frames, normal)
    if declared is not None and declared != len(frames):
        raise InputError(f"NumberOfTimeSlices is {declared} but {len(frames)} time frames were found{hint}",
                         frames[0][0].path, _tag("NumberOfTimeSlices"))
    return frames


def _refuse_bed_dependent_timing(frames: list[list[_Record]], normal: np.ndarray) -> None:
    """A multi-bed (whole-body) pass gives each bed position its own frame times, so grouping by time splits one
    pass into frames that cover different slice ranges. In a dynamic series every frame covers the same slices
    (or, with slices missing, a subset), so two time frames without a slice position in common mean bed-dependent
    timing, which the Patlak fit (one frame time for the whole volume) cannot use: refused by name."""
    depths = [np.sort(_depths(frame, normal)) for frame in frames]
    gaps = np.diff(np.sort(np.concatenate(depths)))
    gaps = gaps[gaps > 0.1]  # closer positions are one slice written with rounding jitter
    half_slice = 0.5 * float(np.median(gaps)) if gaps.size else 0.5
    for f, depth in enumerate(depths[1:], 1):
        nearest = np.abs(depth[:, None] - depths[0][None, :]).min(axis=1)
        if np.all(nearest > half_slice):
            raise InputError(
                f"time frames 1 and {f + 1} (grouped by acquisition time) hold no slice position in common "
                f"(other file: {frames[0][0].path}): a multi-bed whole-body acquisition, whose bed positions "
                "have their own frame times, is not supported; every time frame must cover the whole volume",
                frames[f][0].path, _tag("FrameReferenceTime"))


def _slice_normal(records: list[_Record]) -> np.ndarray:
    orientation = np.array(records[0].get("orientation", required=True))
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError("direction cosines are not two orthonormal vectors", records[0].path,
                         _tag("ImageOrientationPatient"))
    return np.cross(row, col)


def _depths(frame: list[_Record], normal: np.ndarray) -> np.ndarray:
    """Each instance's position along the slice normal (mm)."""
    return np.array([np.dot(r.get("position", required=True), normal) for r in frame])


def _sort_slices(frames: list[list[_Record]], normal: np.ndarray, hint: str) -> list[list[_Record]]:
    """Each frame's instances ordered along the slice normal; every frame must hold the same positions."""
    ordered = []
    for f, frame in enumerate(frames):
        depth = _depths(frame, normal)
        order = np.argsort(depth, kind="stable")
        frame = [frame[i] for i in order]
        same = np.flatnonzero(np.diff(depth[order]) < _SAME_POSITION_MM)
        if same.size:
            raise InputError(f"time frame {f + 1} holds two different instances at one slice position (other "
                             f"file: {frame[same[0]].path})", frame[same[0] + 1].path, _tag("ImagePositionPatient"))
        ordered.append(frame)
    size = max(len(frame) for frame in ordered)
    reference = next(frame for frame in ordered if len(frame) == size)
    ref_positions = np.array([r.get("position") for r in reference])
    spacing = np.diff(ref_positions @ normal)
    tolerance = 1e-3 + 0.01 * (float(np.median(spacing)) if len(spacing) else 1.0)
    for f, frame in enumerate(ordered):
        if len(frame) != size:
            raise InputError(f"time frame {f + 1} has {len(frame)} slices where another frame has {size}{hint}",
                             frame[0].path, _tag("ImagePositionPatient"))
        positions = np.array([r.get("position") for r in frame])
        distance = np.linalg.norm(positions - ref_positions, axis=1)
        if np.any(distance > tolerance):
            raise InputError(f"slice positions of time frame {f + 1} differ from those of other frames by up to "
                             f"{distance.max():.3g} mm", frame[int(np.argmax(distance))].path,
                             _tag("ImagePositionPatient"))
    declared = reference[0].peek("n_slices")
    if declared is not None and declared != size:
        raise InputError(f"NumberOfSlices is {declared} but each frame has {size} slices", reference[0].path,
                         _tag("NumberOfSlices"))
    return ordered


def _geometry(first_frame: list[_Record], normal: np.ndarray, notes: list[str]
              ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Affine voxel (x, y, z) -> LPS mm and spacing (dz, dy, dx) from the sorted first frame."""
    positions = np.array([r.get("position") for r in first_frame])
    dy, dx = first_frame[0].get("pixel_spacing", required=True)
    if dy <= 0 or dx <= 0:
        raise InputError("pixel spacing must be positive", first_frame[0].path, _tag("PixelSpacing"))
    if len(first_frame) > 1:
        steps = np.diff(positions @ normal)
        dz = float(np.mean(steps))
        if dz <= 0 or np.ptp(steps) > 0.02 * dz + 1e-3:
            raise InputError("slice positions are not equally spaced", first_frame[0].path,
                             _tag("ImagePositionPatient"))
        in_plane = positions - np.outer(positions @ normal, normal)
        if np.max(np.linalg.norm(in_plane - in_plane[0], axis=1)) > 0.01 * dz + 1e-3:
            raise InputError("slices are not stacked along the slice normal (gantry tilt or sheared series)",
                             first_frame[-1].path, _tag("ImagePositionPatient"))
    else:
        dz = first_frame[0].peek("slice_thickness") or 1.0
        notes.append(f"single slice: slice spacing taken from SliceThickness ({dz} mm)")
    orientation = np.array(first_frame[0].get("orientation"))
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * dx
    affine[:3, 1] = orientation[3:] * dy
    affine[:3, 2] = normal * dz
    affine[:3, 3] = positions[0]
    return affine, (dz, float(dy), float(dx))


# ---------------------------------------------------------------------------------------------- timing

def _frame_value(frame: list[_Record], name: str, keyword: str):
    """The value shared by every instance of a frame (InputError naming the odd file otherwise)."""
    first = frame[0].get(name, required=True)
    for record in frame[1:]:
        if not _same(record.get(name, required=True), first):
            raise InputError("differs between instances of one time frame", record.path, _tag(keyword))
    return first


def _frame_times(frames: list[list[_Record]], half_life_s: float, notes: list[str]
                 ) -> tuple[np.ndarray, np.ndarray, dt.datetime, bool]:
    """Frame start and end in seconds from injection, the injection time, and whether starts came from
    the acquisition date-times."""
    injection, source = frames[0][0].get("injection", required=True)
    if source != "RadiopharmaceuticalStartDateTime":
        notes.append(f"injection time from {source}")
    durations = np.array([_frame_value(f, "duration_ms", "ActualFrameDuration") for f in frames]) / 1000.0
    bad = np.flatnonzero(durations <= 0)
    if bad.size:
        raise InputError("frame duration must be positive", frames[bad[0]][0].path, _tag("ActualFrameDuration"))
    acquisition = [{r.peek("acquisition_dt") for r in frame} for frame in frames]
    from_acquisition = (all(len(a) == 1 and None not in a for a in acquisition)
                        and len({next(iter(a)) for a in acquisition}) == len(frames))
    if from_acquisition:
        starts = np.array([(next(iter(a)) - injection).total_seconds() for a in acquisition])
        notes.append("frame starts from the per-frame acquisition date/time")
        keyword, weighted = "AcquisitionTime", False
    else:
        series = frames[0][0].get("series_dt")
        if series is None:
            raise InputError("SeriesDate/SeriesTime needed as the FrameReferenceTime origin is missing",
                             frames[0][0].path, _tag("SeriesTime"))
        reference_ms = np.array([_frame_value(f, "frt_ms", "FrameReferenceTime") for f in frames])
        stated = (series - injection).total_seconds() + reference_ms / 1000.0
        starts = stated - decay_weighted_offset_s(durations, half_life_s)
        keyword, weighted = "FrameReferenceTime", True
        scan_start = _shared_acquisition_start(acquisition, injection)
        if scan_start is not None and _frame_start_convention(starts[0], stated[0], scan_start, durations[0]):
            early = scan_start - starts[0]
            starts, weighted = stated, False
            notes.append("FrameReferenceTime read as the frame start: read as each frame's decay-weighted mean "
                         f"time (PS3.3 C.8.9.4.1.5) it puts the first frame {early:.1f} s before the acquisition "
                         "start that every instance's acquisition date/time gives; read as the start, it starts there")
            logger.warning("FrameReferenceTime is the frame start in this series, not the decay-weighted mean time")
        else:
            notes.append("acquisition date/time does not vary per frame: frame starts from FrameReferenceTime "
                         "(decay-weighted mean time, PS3.3 C.8.9.4.1.5)")
    ends = starts + durations
    for f in range(1, len(frames)):
        if starts[f] <= starts[f - 1]:
            raise InputError(f"time frame {f + 1} does not start after frame {f} (frames out of order or "
                             "repeated)", frames[f][0].path, _tag(keyword))
        if ends[f - 1] - starts[f] > _OVERLAP_TOLERANCE_S:
            how = (" (frame starts from FrameReferenceTime taken as each frame's decay-weighted mean time; one "
                   "that is the frame start, which the acquisition date/time could not confirm here, gives such "
                   "overlaps)") if weighted else ""
            raise InputError(f"time frames {f} and {f + 1} overlap by {ends[f - 1] - starts[f]:.3f} s{how}",
                             frames[f][0].path, _tag("FrameReferenceTime" if weighted else "ActualFrameDuration"))
    if starts[0] < 0:
        notes.append(f"the first frame starts {-starts[0]:.1f} s before the injection")
    return starts, ends, injection, from_acquisition


def _shared_acquisition_start(acquisition: list[set], injection: dt.datetime) -> float | None:
    """Seconds from injection of the acquisition date-time that every instance states alike, else None."""
    values = set().union(*acquisition)
    return (next(iter(values)) - injection).total_seconds() if len(values) == 1 and None not in values else None


def _frame_start_convention(weighted_start: float, stated: float, scan_start: float, duration: float) -> bool:
    """Whether the first frame's FrameReferenceTime is its start rather than its decay-weighted mean time: read
    as the mean time it puts the frame's start before the acquisition start that all instances share, read as
    the start it puts it there (both within a quarter of the frame, at least the timing tolerance)."""
    tolerance = max(_OVERLAP_TOLERANCE_S, 0.25 * duration)
    return scan_start - weighted_start > tolerance and abs(stated - scan_start) <= tolerance


# ------------------------------------------------------------------------------------- decay and units

def _half_life(record: _Record, notes: list[str]) -> float:
    """RadionuclideHalfLife, else the half-life of the nuclide its code sequence names."""
    stated, nuclide = record.get("half_life_s"), record.get("nuclide")
    if stated is not None:
        return stated
    if nuclide in NUCLIDE_HALF_LIFE_S:
        notes.append(f"RadionuclideHalfLife absent: {NUCLIDE_HALF_LIFE_S[nuclide]:g} s, the half-life of {nuclide} "
                     "named by the RadionuclideCodeSequence")
        return NUCLIDE_HALF_LIFE_S[nuclide]
    raise InputError("the radionuclide's half-life is needed and neither RadionuclideHalfLife nor a known "
                     f"RadionuclideCodeSequence ({', '.join(NUCLIDE_HALF_LIFE_S)}) gives it", record.path,
                     _tag("RadionuclideHalfLife"))


def _decay_to_injection(frames: list[list[_Record]], starts: np.ndarray, durations: np.ndarray,
                        injection: dt.datetime, half_life_s: float, from_acquisition: bool,
                        notes: list[str]) -> tuple[np.ndarray, float]:
    """Per-frame factors taking the stored values to the injection time, and the decay reference
    (seconds from injection) that the stored values refer to (for SUV conversion)."""
    record = frames[0][0]
    lam = math.log(2.0) / half_life_s
    mode = record.get("decay_correction", required=True)
    times = _frame_reference_times(frames, starts, durations, injection, half_life_s)
    if mode == "ADMIN":
        reference = 0.0
        factors = np.ones(len(frames))
        notes.append("DecayCorrection ADMIN: values already refer to the injection time")
    elif mode == "START":
        series = record.get("series_dt")
        if series is None:
            raise InputError("SeriesDate/SeriesTime (the START decay reference) is missing", record.path,
                             _tag("SeriesTime"))
        reference = (series - injection).total_seconds()
        implied = _reference_from_decay_factors(frames, times, half_life_s)
        if implied is not None and abs(implied - reference) > _REFERENCE_AGREEMENT / lam:
            notes.append(f"the DecayFactors of all frames refer to {implied:.1f} s after injection, not to "
                         f"SeriesDate/Time ({reference:.1f} s): START decay reference taken from them")
            logger.warning("DecayFactor gives the START decay reference %.1f s from the series time",
                           implied - reference)
            reference = implied
        elif from_acquisition and reference > starts[0] + _OVERLAP_TOLERANCE_S:
            notes.append("SeriesDate/Time is after the first frame start (reprocessed series?): START "
                         "decay reference taken as the first frame start")
            logger.warning("SeriesTime after the first frame start; START reference = first frame start")
            reference = float(starts[0])
        with np.errstate(over="ignore"):
            factors = np.full(len(frames), np.exp(lam * reference))
        notes.append(f"DecayCorrection START: decay-corrected from the START reference ({reference:.1f} s after "
                     "injection) to the injection time")
    elif mode == "DATETIME":
        reference = (record.get("decay_dt", required=True) - injection).total_seconds()
        with np.errstate(over="ignore"):
            factors = np.full(len(frames), np.exp(lam * reference))
        notes.append(f"DecayCorrected YES: decay-corrected from DecayCorrectionDateTime ({reference:.1f} s after "
                     "injection) to the injection time")
    elif mode == "NONE":
        reference = float("nan")
        factors = np.exp(lam * (starts + decay_weighted_offset_s(durations, half_life_s)))
        notes.append("DecayCorrection NONE: each frame decay-corrected over the frame and to the injection time")
    else:
        raise InputError(f"unknown decay correction {mode!r} (expected START, ADMIN or NONE, or DecayCorrected "
                         "YES / NO)", record.path, _tag("DecayCorrection"))
    if mode != "NONE":
        _check_decay_factors(frames, lam * (times - reference), notes)
    return factors, reference


def _frame_reference_times(frames: list[list[_Record]], starts: np.ndarray, durations: np.ndarray,
                           injection: dt.datetime, half_life_s: float) -> np.ndarray:
    """Each frame's reference time, the time its DecayFactor was computed for (s from injection): SeriesDate/Time
    + FrameReferenceTime when every frame states one inside the frame (PS3.3 C.8.9.4.1.5; writers differ on where
    in the frame), else the decay-weighted mean time of the frame (a SeriesTime rewritten after the scan moves
    the stated times out of their frames)."""
    weighted = starts + decay_weighted_offset_s(durations, half_life_s)
    series = frames[0][0].get("series_dt")
    stated_ms = np.array([frame[0].peek("frt_ms") for frame in frames], dtype=np.float64)
    if series is None or not np.all(np.isfinite(stated_ms)):
        return weighted
    stated = (series - injection).total_seconds() + stated_ms / 1000.0
    inside = (stated >= starts - _OVERLAP_TOLERANCE_S) & (stated <= starts + durations + _OVERLAP_TOLERANCE_S)
    return stated if np.all(inside) else weighted


def _reference_from_decay_factors(frames: list[list[_Record]], times: np.ndarray, half_life_s: float) -> float | None:
    """The decay reference (s from injection) the frames' DecayFactors were computed for, when every frame
    states one and they agree: DecayFactor = exp(lam (frame reference time - decay reference)) (PS3.3
    C.8.9.4.1.5), with the frame reference ``times`` of :func:`_frame_reference_times`; None otherwise."""
    stated = _decay_factors(frames)
    if len(frames) < 2 or not np.all(np.isfinite(stated) & (stated > 0)):
        return None
    lam = math.log(2.0) / half_life_s
    implied = times - np.log(stated) / lam
    return float(np.median(implied)) if np.ptp(implied) <= _REFERENCE_AGREEMENT / lam else None


def _decay_factors(frames: list[list[_Record]]) -> np.ndarray:
    """Each frame's DecayFactor (NaN where absent)."""
    return np.array([frame[0].peek("decay_factor") or np.nan for frame in frames], dtype=np.float64)


def _check_decay_factors(frames: list[list[_Record]], expected_log: np.ndarray, notes: list[str]) -> None:
    stated = _decay_factors(frames)
    with np.errstate(invalid="ignore", divide="ignore"):
        mismatch = np.abs(np.log(stated) - expected_log) > _DECAY_FACTOR_TOLERANCE
    if np.any(mismatch):
        notes.append(f"DecayFactor differs by more than 1 % from the value expected from the timing in "
                     f"{int(mismatch.sum())} frame(s); timing attributes were trusted")
        logger.warning("DecayFactor inconsistent with the frame timing in %d frame(s)", int(mismatch.sum()))


def _unit_scale(record: _Record, decay_reference_s: float, half_life_s: float) -> float:
    """Factor from rescaled pixel values to Bq/mL (at the image's own decay reference)."""
    units = record.get("units", required=True)
    if units == "BQML":
        return 1.0
    if units == "GML":
        if not math.isfinite(decay_reference_s):
            raise InputError("SUV (Units GML) without decay correction cannot be converted to Bq/mL",
                             record.path, _tag("DecayCorrection"))
        weight = record.get("weight_kg", required=True)
        dose = record.get("dose_bq", required=True)
        if weight <= 0 or dose <= 0:
            raise InputError("patient weight and injected dose must be positive to convert SUV to Bq/mL",
                             record.path, _tag("PatientWeight" if weight <= 0 else "RadionuclideTotalDose"))
        return dose * np.exp(-math.log(2.0) / half_life_s * decay_reference_s) / (weight * 1000.0)
    if units == "CNTS":
        scale = record.get("philips_scale")
        if scale is None or scale <= 0:
            raise InputError("Units CNTS without a Philips activity concentration scale factor (7053,1009) "
                             "cannot be converted to Bq/mL", record.path, _tag("Units"))
        return scale
    raise InputError(f"units {units!r} cannot be converted to Bq/mL (expected BQML, GML or Philips CNTS)",
                     record.path, _tag("Units"))


# ---------------------------------------------------------------------------------------------- pixels

def _decode(record: _Record, shape: tuple[int, int]) -> np.ndarray:
    """Rescaled float64 pixel values of one file."""
    path = record.path
    try:
        source = _whole(path) if record.get("read_whole") else path  # by path pydicom reads only the frame
        pixels = pixel_array(source, index=record.frame)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is an input problem of this file
        raise InputError(f"pixel data cannot be read ({type(exc).__name__}: {exc})", path,
                         _tag("PixelData")) from exc
    if pixels.shape != shape:
        raise InputError(f"pixel array has shape {pixels.shape}, Rows/Columns say {shape}", path, _tag("Rows"))
    stored, needed = record.get("pixel_bytes"), pixels.size * pixels.dtype.itemsize
    if stored is not None and stored not in (needed, needed + 1):  # + 1: the even-length padding byte
        raise InputError(f"pixel data holds {stored} bytes but Rows x Columns x BitsAllocated make {needed}: "
                         "the image size in the header is wrong", path, _tag("PixelData"))
    slope = record.get("slope")
    if slope is None and np.issubdtype(pixels.dtype, np.integer):
        raise InputError("integer PET pixel data needs a rescale slope", path, _tag("RescaleSlope"))
    values = pixels.astype(np.float64) * (1.0 if slope is None else slope) + (record.get("intercept") or 0.0)
    if not np.all(np.isfinite(values)):
        raise InputError("pixel values are not finite (NaN or infinity)", path, _tag("PixelData"))
    return values


@functools.lru_cache(maxsize=1)
def _whole(path: Path) -> pydicom.Dataset:
    """A file that must be read whole, kept until another is asked for: the frames of such a multi-frame
    instance are decoded from one reading, not one each (cleared when the series is loaded)."""
    return _read(path)


def _read_instance(record: _Record, shape: tuple[int, int]) -> np.ndarray:
    """Pixel values of an instance; duplicate files of it are used as fallback and must agree."""
    decoded, errors = [], []
    for candidate in [record, *record.copies]:
        try:
            decoded.append((candidate, _decode(candidate, shape)))
        except InputError as exc:
            errors.append(exc)
    if not decoded:
        raise errors[0]
    for error in errors:
        logger.warning("skipped a damaged copy of an instance: %s", error.path)
    reference_record, values = decoded[0]
    for other, other_values in decoded[1:]:
        if not np.array_equal(values, other_values):
            raise InputError(f"two files carry the same SOPInstanceUID with different pixel data (other file: "
                             f"{reference_record.path})", other.path, _tag("SOPInstanceUID"))
        logger.warning("skipped a duplicate file of an instance: %s", other.path)
    return values


def _header(path: Path) -> pydicom.Dataset:
    """An instance's header without pixel data, every value decoded and each (nested) dataset marked little
    endian, so the output writer can copy it into Explicit VR Little Endian files whatever the source's
    encoding (pydicom refuses to re-encode a big-endian dataset as little endian)."""
    ds = _read(path, stop_before_pixels=True)
    for _ in ds.iterall():  # decodes every raw element with the encoding it was read in
        pass
    pending = [ds]
    while pending:
        current = pending.pop()
        current.set_original_encoding(current.original_encoding[0], True, current.original_character_set)
        pending += [item for element in current if element.VR == "SQ" for item in element.value]
    return ds


def _source_headers(first_frame: list[_Record]) -> tuple[list[pydicom.Dataset], pydicom.Dataset | None,
                                                          list[int] | None]:
    """The output writer's sources, the first time frame's slices: each instance's header; for a multi-frame
    instance its frames' views, with the instance's header and the 1-based frame numbers."""
    if first_frame[0].frame is None:
        return [_header(r.path) for r in first_frame], None, None
    header = _header(first_frame[0].path)
    views = frame_views(header, first_frame[0].path)
    return [views[r.frame] for r in first_frame], header, [r.frame + 1 for r in first_frame]


# ----------------------------------------------------------------------------------------------- entry

# Rb-82 (76 s) to I-124 (4.2 d), with margin: anything outside is a header error, not a radionuclide.
PLAUSIBLE_HALF_LIFE_S = (10.0, 1.0e7)


@dataclass
class DynamicSeries:
    """The instances of the chosen dynamic PET series, found but not yet sorted or decoded."""

    root: Path
    records: list
    unreadable: list
    notes: list = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)


def find_dynamic_series(input_dir: str | Path, series_instance_uid: str | None = None) -> DynamicSeries:
    """Scan ``input_dir`` recursively and select the dynamic PET series (rule in the module docstring).

    Raises
    ------
    InputError
        No folder, no DICOM, no dynamic PET series, or an ambiguous choice.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise InputError("input folder does not exist or is not a folder", root)
    notes: list[str] = []
    by_series, unreadable = _scan(root)
    records = _merge_duplicates(_select_series(by_series, root, series_instance_uid, unreadable, notes))
    n_duplicates = sum(len(r.copies) for r in records)
    if n_duplicates:
        notes.append(f"{n_duplicates} duplicate file(s) of the same instance ignored")
    return DynamicSeries(root, records, unreadable, notes)


def load_dynamic_study(input_dir: str | Path, series_instance_uid: str | None = None) -> DynamicStudy:
    """Load, validate and normalise the dynamic PET series found under ``input_dir``.

    Parameters
    ----------
    input_dir:
        Folder searched recursively for DICOM files.
    series_instance_uid:
        Load this series instead of choosing one (see the module docstring for the rule).

    Returns
    -------
    DynamicStudy
        Activity in Bq/mL decay-corrected to the injection, frames in time order, slices along the
        slice normal; ``notes`` records the fallbacks and conversions applied.

    Raises
    ------
    InputError
        For anything that prevents a correct result, naming the file and the DICOM tag concerned.
    """
    return sort_dynamic_series(find_dynamic_series(input_dir, series_instance_uid))


def sort_dynamic_series(series: DynamicSeries) -> DynamicStudy:
    """Group a found series into frames, sort slices, validate, and decode to Bq/mL at injection time."""
    root, records, unreadable, notes = series.root, series.records, series.unreadable, list(series.notes)
    _check_series_level(records)
    for record in records:
        if (record.get("n_frames_in_file") or 1) != 1:
            raise InputError("a classic PET instance must hold one frame", record.path, _tag("NumberOfFrames"))
    half_life_s = _half_life(records[0], notes)
    if not PLAUSIBLE_HALF_LIFE_S[0] <= half_life_s <= PLAUSIBLE_HALF_LIFE_S[1]:
        raise InputError(f"half-life {half_life_s:g} s is outside the range of PET radionuclides "
                         f"({PLAUSIBLE_HALF_LIFE_S[0]:g}-{PLAUSIBLE_HALF_LIFE_S[1]:g} s)", records[0].path,
                         _tag("RadionuclideHalfLife"))
    hint = _unreadable_hint(unreadable)
    normal = _slice_normal(records)
    frames = _sort_slices(_group_frames(records, root, notes, unreadable, normal), normal, hint)
    if frames[0][0].frame is not None and len({r.path for r in frames[0]}) > 1:
        raise InputError("the slices of the first time frame are spread over several multi-frame instances; "
                         "not supported", frames[0][-1].path, _tag("PerFrameFunctionalGroupsSequence"))
    affine, spacing = _geometry(frames[0], normal, notes)
    starts, ends, injection, from_acquisition = _frame_times(frames, half_life_s, notes)
    decay, reference = _decay_to_injection(frames, starts, ends - starts, injection, half_life_s,
                                           from_acquisition, notes)
    shape = (records[0].get("rows", required=True), records[0].get("columns", required=True))
    try:
        first = _read_instance(frames[0][0], shape)  # checks Rows/Columns against real pixel data before allocating
        activity = np.empty((len(frames), len(frames[0]), *shape), dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            for f, frame in enumerate(frames):
                for z, record in enumerate(frame):
                    scale = _unit_scale(record, reference, half_life_s) * decay[f]
                    activity[f, z] = (first if f == z == 0 else _read_instance(record, shape)) * scale
                    if not (np.isfinite(scale) and scale > 0 and np.all(np.isfinite(activity[f, z]))):
                        raise InputError("decay or unit conversion gives non-finite values: injection time, "
                                         "half-life or dose implausible", record.path, _INJECTION_TAGS)
    finally:
        _whole.cache_clear()  # a whole file read for decoding is not kept past the loading
    if records[0].get("units") != "BQML":
        notes.append(f"Units {records[0].get('units')} converted to Bq/mL")
    lossy = _lossy_summary(frames, notes)
    slice_datasets, multiframe_source, source_frames = _source_headers(frames[0])
    logger.info("loaded a dynamic PET series: %d frames of %d slices of %dx%d", *activity.shape)
    return DynamicStudy(activity=activity, frame_start_min=starts / 60.0, frame_end_min=ends / 60.0,
                        affine=affine, spacing_mm=spacing, slice_datasets=slice_datasets,
                        series_instance_uid=records[0].series_uid,
                        study_instance_uid=str(records[0].get("study_uid") or ""),
                        half_life_s=float(half_life_s), notes=notes,
                        multiframe_source=multiframe_source, source_frames=source_frames,
                        lossy_compression=lossy)


def _lossy_summary(frames: list[list[_Record]], notes: list[str]) -> list[tuple[str, float]]:
    """Each lossy compression method met in the series with its largest ratio; a warning when there is one:
    the activity values, and the maps made from them, carry the compression error."""
    worst: dict[str, float] = {}
    for record in (r for frame in frames for r in frame):
        found = record.get("lossy")
        if found is not None:
            worst[found[0]] = max(worst.get(found[0], 0.0), found[1])
    if worst:
        described = ", ".join(f"{method} (ratio {ratio:g}:1)" for method, ratio in worst.items())
        notes.append(f"source images were lossy compressed: {described}; quantitative values carry its error")
        logger.warning("the source images were lossy compressed (%s): the maps are marked lossy", described)
    return sorted(worst.items())

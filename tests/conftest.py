"""Shared pytest fixtures (each block is owned by the worker named in its header)."""

from __future__ import annotations

# ======== BEGIN dynamic PET DICOM fixtures (owner: DICOM writer/loader worker) ========
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest


@dataclass(frozen=True)
class SyntheticPetSeries:
    """A small dynamic PET series written by the phantom writer, with the truth it was written from."""

    folder: Path
    activity: np.ndarray  # (T, Z, Y, X) Bq/mL at injection
    start_s: np.ndarray
    duration_s: np.ndarray
    voxel_size_mm: tuple[float, float, float]
    series_start_s: float
    half_life_s: float
    dose_bq: float
    weight_kg: float
    seed: int


def synthetic_activity(n_frames: int = 6, shape: tuple[int, int, int] = (8, 16, 16)) -> np.ndarray:
    """Smooth FDG-like volumes: a blob whose uptake rises over the frames, slice-dependent amplitude
    (so every instance gets its own rescale slope) on a washing-out background."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    blob = np.exp(-((x - 0.2) ** 2 + (y + 0.1) ** 2) / 0.2 - z**2 / 0.5)
    frames = [(3000.0 * (1 - np.exp(-0.4 * (f + 1))) * blob * (1 + 0.3 * z)
               + 800.0 * np.exp(-0.3 * f) * (1.2 - x**2)) for f in range(n_frames)]
    return np.asarray(frames, dtype=np.float32)


FRAME_START_S = np.array([30.25, 90.25, 210.25, 600.0, 1800.0, 3000.5])  # gap between frames 3 and 4
FRAME_DURATION_S = np.array([60.0, 120.0, 300.0, 600.0, 1200.0, 600.0])


def write_synthetic_series(folder: Path, **overrides) -> SyntheticPetSeries:
    """Write the standard 6-frame, 8-slice, 16x16 test series (keyword overrides go to the writer)."""
    from phantom.dicom_writer import write_dynamic_pet_series

    args = dict(activity=synthetic_activity(), frame_start_s=FRAME_START_S, frame_duration_s=FRAME_DURATION_S,
                voxel_size_mm=(3.27, 2.0, 2.5), injected_dose_bq=2.5e8, seed=7, patient_weight_kg=68.0,
                series_start_after_injection_s=30.25, half_life_s=6586.2)
    args.update(overrides)
    write_dynamic_pet_series(folder, **args)
    return SyntheticPetSeries(folder, np.asarray(args["activity"]), np.asarray(args["frame_start_s"]),
                              np.asarray(args["frame_duration_s"]), tuple(args["voxel_size_mm"]),
                              args["series_start_after_injection_s"], args["half_life_s"],
                              args["injected_dose_bq"], args["patient_weight_kg"], args["seed"])


@pytest.fixture
def write_series() -> Callable[..., SyntheticPetSeries]:
    """``write_series(folder, **writer_overrides)``: write the standard series (or a variant)."""
    return write_synthetic_series


@pytest.fixture(scope="session")
def written_series(tmp_path_factory) -> SyntheticPetSeries:
    """The standard series, written once per session (do not modify: use ``series_copy``)."""
    return write_synthetic_series(tmp_path_factory.mktemp("pet_series") / "series")


@pytest.fixture
def series_copy(written_series, tmp_path) -> SyntheticPetSeries:
    """A private copy of the standard series that a test may mutate."""
    folder = tmp_path / "study"
    shutil.copytree(written_series.folder, folder)
    return SyntheticPetSeries(folder, *[getattr(written_series, f) for f in
                                        list(SyntheticPetSeries.__dataclass_fields__)[1:]])


def frame_and_slice(ds: pydicom.Dataset) -> tuple[int, int]:
    """0-based (frame, slice) of an instance written by the phantom writer (from its ImageIndex)."""
    index = int(ds.ImageIndex) - 1
    return divmod(index, int(ds.NumberOfSlices))


@pytest.fixture
def rewrite() -> Callable[..., list[Path]]:
    """``rewrite(folder, edit, where=None)``: apply ``edit(ds, frame, slice)`` to every instance (or those
    for which ``where(frame, slice)`` holds) and save it in place; returns the edited paths."""

    def apply(folder: Path, edit, where=None) -> list[Path]:
        edited = []
        for path in sorted(Path(folder).rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            frame, z = frame_and_slice(ds)
            if where is None or where(frame, z):
                edit(ds, frame, z)
                ds.save_as(path)
                edited.append(path)
        return edited

    return apply
# ======== END dynamic PET DICOM fixtures ========


# ======== BEGIN application-level fixtures (owner: application faults / privacy worker) ========
import subprocess
import sys


@dataclass(frozen=True)
class PhantomDicom:
    """The demo phantom's dynamic PET series and where each (frame, slice) instance lies."""

    folder: Path
    files: dict[tuple[int, int], str]  # (frame, slice), 0-based -> file name inside ``folder``
    n_frames: int
    n_slices: int


@pytest.fixture(scope="session")
def app_phantom(tmp_path_factory) -> PhantomDicom:
    """The demo phantom study (seed 1000) written once per session by ``python -m phantom``: ``folder`` is its
    ``dicom/``, beside ``truth/``. Do not modify.

    ``--noiseless`` (exact frame-averaged activity): noise changes none of the paths the application tests
    take, and the scanner simulation takes minutes on a shared 2-core machine.
    """
    out = tmp_path_factory.mktemp("app_phantom")
    subprocess.run([sys.executable, "-m", "phantom", "--out", str(out), "--preset", "demo", "--noiseless",
                    "--seed", "1000", "--quiet"], check=True, cwd=Path(__file__).resolve().parent.parent)
    return _phantom_dicom(out / "dicom")


@pytest.fixture(scope="session")
def app_small_phantom(app_phantom, tmp_path_factory) -> PhantomDicom:
    """Slices 0-23 of ``app_phantom`` as a 24-slice series: the automatic blood pool is still the aorta (it
    lies in slices 1-18) and every application run takes half the time. Do not modify: use ``app_study``."""
    keep = range(0, 24)
    folder = tmp_path_factory.mktemp("app_small_phantom") / "dicom"
    folder.mkdir()
    for (frame, z), name in app_phantom.files.items():
        if z in keep:
            ds = pydicom.dcmread(app_phantom.folder / name)
            ds.NumberOfSlices = len(keep)
            ds.ImageIndex = frame * len(keep) + z - keep.start + 1
            ds.save_as(folder / name)
    return _phantom_dicom(folder)


def _phantom_dicom(folder: Path) -> PhantomDicom:
    files = {frame_and_slice(pydicom.dcmread(p, stop_before_pixels=True)): p.name for p in folder.glob("*.dcm")}
    n_frames, n_slices = (max(k[i] for k in files) + 1 for i in (0, 1))
    return PhantomDicom(folder, files, n_frames, n_slices)


@pytest.fixture
def app_study(app_small_phantom, tmp_path) -> PhantomDicom:
    """A private copy of ``app_small_phantom`` that a test may edit."""
    folder = tmp_path / "study"
    shutil.copytree(app_small_phantom.folder, folder)
    return PhantomDicom(folder, app_small_phantom.files, app_small_phantom.n_frames, app_small_phantom.n_slices)
# ======== END application-level fixtures ========


# ======== BEGIN phantom study fixture (owner: MAP packaging / report worker) ========
@pytest.fixture(scope="session")
def phantom_demo_study(app_phantom) -> Path:
    """The demo phantom study folder (``dicom/`` and ``truth/``) of ``app_phantom`` above (seed 1000,
    noiseless: ~13 s here against ~160 s for the 25%-dose noisy study), shared so one session simulates
    it once. Do not modify it."""
    return app_phantom.folder.parent
# ======== END phantom study fixture ========


# ---------------------------------------------------------------- shared: header mutation for fault tests
RADIOPHARMACEUTICAL_KEYWORDS = {"RadionuclideHalfLife", "RadiopharmaceuticalStartDateTime",
                                "RadiopharmaceuticalStartTime", "RadionuclideTotalDose"}


def set_header_value(ds: pydicom.Dataset, keyword: str, value) -> None:
    """Set (or with None delete) ``keyword`` however malformed ``value`` is, in the radiopharmaceutical
    item for its attributes. Integers are clamped to the VR's range; anything else is stored as LO, which
    takes any text, so garbage reaches the loader unchanged."""
    target = ds.RadiopharmaceuticalInformationSequence[0] if keyword in RADIOPHARMACEUTICAL_KEYWORDS else ds
    if value is None:
        if keyword in target:
            delattr(target, keyword)
        return
    vr = pydicom.datadict.dictionary_VR(keyword)
    if vr in ("US", "SS", "UL", "SL"):
        value = int(value) if isinstance(value, int) or str(value).strip().lstrip("-").isdigit() else 0
        value = min(max(value, 0), 65535)
    else:
        vr, value = "LO", str(value)
    target[keyword] = pydicom.DataElement(pydicom.datadict.tag_for_keyword(keyword), vr, value)


# ---------------------------------------------------------------- shared: another DICOM writer's multi-frame PET
def legacy_converted(classic_folder: Path, out_folder: Path) -> Path:
    """Convert a classic PET series into one Legacy Converted Enhanced PET instance with highdicom's converter
    (per-frame rescale, positions and Frame Content timing in functional groups, classic PET attributes in
    the Unassigned Converted Attributes); returns the file written into ``out_folder``."""
    import highdicom as hd

    datasets = [pydicom.dcmread(p) for p in sorted(classic_folder.rglob("*.dcm"))]
    image = hd.legacy.LegacyConvertedEnhancedPETImage(
        legacy_datasets=datasets, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
        instance_number=1)
    out_folder.mkdir(parents=True, exist_ok=True)
    path = out_folder / "multiframe.dcm"
    image.save_as(path)
    return path


# The Enhanced PET Corrections flags (and attenuation details) of ``native_enhanced``'s instance
NATIVE_CORRECTIONS = {"AttenuationCorrected": "YES", "ScatterCorrected": "YES", "DeadTimeCorrected": "YES",
                      "GantryMotionCorrected": "NO", "PatientMotionCorrected": "NO",
                      "CountLossNormalizationCorrected": "NO", "RandomsCorrected": "YES",
                      "NonUniformRadialSamplingCorrected": "NO", "SensitivityCalibrated": "YES",
                      "DetectorNormalizationCorrection": "YES", "AttenuationCorrectionSource": "CT",
                      "AttenuationCorrectionTemporalRelationship": "CONCURRENT"}


def native_enhanced(classic_folder: Path, out_folder: Path, transformation_gain: float = 1.0) -> Path:
    """A native Enhanced PET instance made from a classic series: highdicom's legacy conversion with the
    classic PET attributes taken out (no Units, DecayCorrection, FrameReferenceTime, ImageIndex): units and
    rescale in a per-frame Real World Value Mapping (CID 84 ``Bq/ml``), decay correction and the other
    correction flags in the Enhanced PET Corrections module (DecayCorrected YES to the classic series' START
    time; ``NATIVE_CORRECTIONS``), the dose in MBq (Enhanced PET Isotope module). ``transformation_gain``
    scales the Pixel Value Transformation's slope away from the mapping's."""
    path = legacy_converted(classic_folder, out_folder)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.130"
    shared = ds.SharedFunctionalGroupsSequence[0]
    converted = shared.UnassignedSharedConvertedAttributesSequence[0]
    del shared.UnassignedSharedConvertedAttributesSequence
    assert converted.DecayCorrection == "START"
    ds.RadiopharmaceuticalInformationSequence = converted.RadiopharmaceuticalInformationSequence
    item = ds.RadiopharmaceuticalInformationSequence[0]
    item.RadionuclideTotalDose = pydicom.valuerep.format_number_as_ds(float(item.RadionuclideTotalDose) / 1e6)  # MBq
    ds.CountsSource, ds.DecayCorrected = "EMISSION", "YES"
    for keyword, value in NATIVE_CORRECTIONS.items():
        setattr(ds, keyword, value)
    ds.DecayCorrectionDateTime = f"{ds.SeriesDate}{ds.SeriesTime}"
    for groups in ds.PerFrameFunctionalGroupsSequence:
        del groups.UnassignedPerFrameConvertedAttributesSequence
        rescale = groups.PixelValueTransformationSequence[0]
        mapping = pydicom.Dataset()
        mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept = float(rescale.RescaleSlope), 0.0
        mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped = -32768, 32767
        mapping.LUTExplanation, mapping.LUTLabel = "activity concentration", "BQML"
        unit = pydicom.Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "Bq/ml", "UCUM", "Becquerels/milliliter"
        mapping.MeasurementUnitsCodeSequence = [unit]
        groups.RealWorldValueMappingSequence = [mapping]
        gained = float(rescale.RescaleSlope) * transformation_gain
        rescale.RescaleSlope = pydicom.valuerep.format_number_as_ds(gained)
    ds.save_as(path)
    return path


# ---------------------------------------------------------------- shared: other frame schedules
def drop_frames(study: PhantomDicom, frames: Iterable[int]) -> None:
    """Delete the instances of the given time frames from ``study``'s folder and renumber the rest (ImageIndex,
    NumberOfTimeSlices) as a scanner that never acquired those frames would have written them."""
    gone = set(frames)
    kept = [f for f in range(study.n_frames) if f not in gone]
    for (frame, z), name in study.files.items():
        path = study.folder / name
        if frame in gone:
            path.unlink()
            continue
        ds = pydicom.dcmread(path)
        ds.NumberOfTimeSlices = len(kept)
        ds.ImageIndex = kept.index(frame) * study.n_slices + z + 1
        ds.save_as(path)


# ------------------------------------------------------------- shared: a JPEG Lossless writer for loader tests
def jpeg_lossless_sv1(frame: np.ndarray) -> bytes:
    """A 16-bit single-component image as a JPEG Lossless, Non-Hierarchical, First-Order Prediction codestream
    (ITU-T T.81 Annex H, predictor 1, point transform 0; DICOM transfer syntax 1.2.840.10008.1.2.4.70), for
    tests only: no library here encodes it. Signed pixels are coded as their 16-bit patterns, as DICOM does.
    One Huffman table gives every difference category (0-16) a 5-bit code."""
    samples = frame.astype(np.int64) & 0xFFFF
    rows, cols = samples.shape
    predicted = np.empty_like(samples)
    predicted[0, 0] = 1 << 15
    predicted[0, 1:] = samples[0, :-1]  # first row: the left neighbour
    predicted[1:, 0] = samples[:-1, 0]  # first column: the sample above
    predicted[1:, 1:] = samples[1:, :-1]  # predictor 1: left
    bits = []
    for diff in (((samples - predicted + 32768) & 0xFFFF) - 32768).ravel():  # modulo 2^16, centred
        category = int(abs(diff)).bit_length()
        bits.append(format(category, "05b"))
        if 0 < category < 16:  # category 16 (difference 32768) has no extra bits
            bits.append(format(diff if diff > 0 else diff - 1 + (1 << category), f"0{category}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)  # pad with ones
    data = bytes(int(stream[i:i + 8], 2) for i in range(0, len(stream), 8)).replace(b"\xff", b"\xff\x00")

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    huffman = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))  # class 0, table 0
    frame_header = bytes([16]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    scan_header = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, predictor 1, Se 0, point transform 0
    return (b"\xff\xd8" + segment(0xC4, huffman) + segment(0xC3, frame_header) + segment(0xDA, scan_header)
            + data + b"\xff\xd9")

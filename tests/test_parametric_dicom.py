"""Parametric Map + derived PET series + NIfTI writers, checked against a scanner-like source series."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from dynamic_pet.parametric_dicom import (MAP_KINDS, derived_pet_series, read_nifti, write_nifti,
                                          write_parametric_outputs)
from dynamic_pet.study import DynamicStudy

ROWS, COLS, N_SLICES = 14, 16, 6
PIXEL_SPACING = (2.0, 2.5)  # (between rows, between columns) mm
SLICE_GAP = 3.27
# Scanner-style oblique-free axial geometry, slices listed head-first from a non-zero origin.
ORIGIN = np.array([-20.0, -15.0, -40.0])
ROW_COS, COL_COS = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
NORMAL = np.cross(ROW_COS, COL_COS)
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PAT-0042", "PatientBirthDate": "19600101",
           "PatientSex": "F"}


def _code(value: str, scheme: str, meaning: str) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _pet_slice(z: int, frame: int, uids: dict[str, str], rng: np.random.Generator) -> pydicom.Dataset:
    """One instance of a 2-frame dynamic FDG series, as a scanner writes it."""
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = PositronEmissionTomographyImageStorage, generate_uid()
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.PatientWeight, ds.PatientSize, ds.PatientAge = 71.5, 1.68, "064Y"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = uids["study"], "20250301", "101500"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "4711", "ACC0815", "Smith^John"
    ds.StudyDescription = "PET dynamic FDG"
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "PT", uids["series"], 3
    ds.SeriesDate, ds.SeriesTime, ds.SeriesDescription = "20250301", "103000", "Dynamic FDG 2 frames"
    ds.BodyPartExamined, ds.PatientPosition = "CHEST", "HFS"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids["for"], ""
    ds.Manufacturer, ds.ManufacturerModelName = "ACME Medical", "PETSCAN 9000"
    ds.DeviceSerialNumber, ds.SoftwareVersions, ds.InstitutionName = "SN123", "VG80", "General Hospital"
    ds.SeriesType, ds.Units, ds.CountsSource = ["DYNAMIC", "IMAGE"], "BQML", "EMISSION"
    ds.NumberOfSlices, ds.NumberOfTimeSlices = N_SLICES, 2
    ds.DecayCorrection, ds.CorrectedImage = "START", ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    ds.RandomsCorrectionMethod, ds.AttenuationCorrectionMethod = "DLYD", "CT-based"
    ds.ReconstructionMethod, ds.ScatterCorrectionMethod = "OSEM 3i21s", "Model-based"
    ds.CollimatorType, ds.AcquisitionStartCondition = "NONE", "MANU"
    ds.AxialAcceptance, ds.AxialMash = 40, [5, 6]
    drug = pydicom.Dataset()
    drug.Radiopharmaceutical, drug.RadiopharmaceuticalStartDateTime = "Fluorodeoxyglucose", "20250301103000"
    drug.RadiopharmaceuticalStartTime = "103000"
    drug.RadionuclideTotalDose, drug.RadionuclideHalfLife = 3.7e8, 6586.2
    drug.RadionuclidePositronFraction = 0.9673
    drug.RadionuclideCodeSequence = [_code("77004003", "SCT", "^18^Fluorine")]
    drug.RadiopharmaceuticalCodeSequence = [_code("35321007", "SCT", "Fluorodeoxyglucose F^18^")]
    ds.RadiopharmaceuticalInformationSequence = [drug]
    ds.PatientOrientationCodeSequence = [_code("102538003", "SCT", "recumbent")]
    ds.PatientGantryRelationshipCodeSequence = [_code("399520005", "SCT", "headfirst")]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = ds.ImageIndex = frame * N_SLICES + z + 1
    ds.AcquisitionDate, ds.AcquisitionTime = "20250301", f"10{30 + frame:02d}00"
    ds.ContentDate, ds.ContentTime = "20250301", "110000"
    ds.FrameReferenceTime, ds.ActualFrameDuration = 30000.0 + 60000.0 * frame, 60000
    ds.DecayFactor, ds.DoseCalibrationFactor = 1.0 + 0.005 * frame, 1.0
    ds.PrimaryPromptsCountsAccumulated = 1000000
    ds.ImagePositionPatient = [f"{v:.4f}" for v in ORIGIN + NORMAL * SLICE_GAP * z]
    ds.ImageOrientationPatient = [*ROW_COS, *COL_COS]
    ds.PixelSpacing, ds.SliceThickness = list(PIXEL_SPACING), SLICE_GAP
    ds.SliceLocation = ds.ImagePositionPatient[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, f"{0.37 + 0.01 * z:.4f}"
    ds.LossyImageCompression = "00"
    ds.PixelData = rng.integers(0, 30000, (ROWS, COLS), dtype=np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 0] = ROW_COS * PIXEL_SPACING[1]  # x = column index
    affine[:3, 1] = COL_COS * PIXEL_SPACING[0]  # y = row index
    affine[:3, 2] = NORMAL * SLICE_GAP
    affine[:3, 3] = ORIGIN
    return affine


@pytest.fixture(scope="module")
def study() -> DynamicStudy:
    rng = np.random.default_rng(7)
    uids = {"study": generate_uid(), "series": generate_uid(), "for": generate_uid()}
    first_frame = [_pet_slice(z, 0, uids, rng) for z in range(N_SLICES)]
    slices = []
    for ds in first_frame:
        header = copy.deepcopy(ds)
        del header.PixelData
        slices.append(header)
    return DynamicStudy(
        activity=np.zeros((2, N_SLICES, ROWS, COLS), np.float32),
        frame_start_min=np.array([0.0, 1.0]), frame_end_min=np.array([1.0, 2.0]), affine=_affine(),
        spacing_mm=(SLICE_GAP, *PIXEL_SPACING), slice_datasets=slices,
        series_instance_uid=uids["series"], study_instance_uid=uids["study"], half_life_s=6586.2)


@pytest.fixture(scope="module")
def maps() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in (N_SLICES, ROWS, COLS)), indexing="ij")
    ki = 0.002 + 0.06 * x * (1 + z) / 2 + rng.normal(0, 0.004, x.shape)  # a few small negative values
    v = 0.1 + 0.6 * y + rng.normal(0, 0.02, x.shape)
    ki_sd = 0.001 + 0.01 * rng.random(x.shape)
    return {k: a.astype(np.float32) for k, a in {"ki": ki, "v": v, "ki_sd": ki_sd}.items()}


@pytest.fixture(scope="module")
def outputs(study, maps, tmp_path_factory) -> tuple[Path, dict[str, list[Path]]]:
    out = tmp_path_factory.mktemp("out")
    return out, write_parametric_outputs(study, maps, out, method_description="Patlak WLS t*=20 min, test",
                                         series_number_base=900)


def test_layout_and_names_hold_no_patient_data(outputs, maps):
    out, written = outputs
    assert set(written) == {f"{m}_{kind}" for m in maps for kind in ("pmap", "pet")}
    for key, paths in written.items():
        assert len(paths) == (1 if key.endswith("pmap") else N_SLICES)
        assert all(p.parent == out / "dicom" / key and p.is_file() for p in paths)
    names = " ".join(str(p.relative_to(out)) for ps in written.values() for p in ps)
    assert not any(v.split("^")[0] in names or v in names for v in PATIENT.values())


def test_parametric_map_reads_back_exactly_in_slice_order(outputs, maps, study):
    _, written = outputs
    for name, expected in maps.items():
        pm = hd.imread(written[f"{name}_pmap"][0])
        assert pm.BitsAllocated == 32 and "FloatPixelData" in pm
        volume = pm.get_volume(dtype=np.float32)  # applies the (identity) real-world value mapping
        # highdicom's volume is indexed (slice, row, column); bring it to the study's slice order
        positions = [volume.affine @ np.array([k, 0, 0, 1]) for k in range(volume.shape[0])]
        order = np.argsort([p[:3] @ NORMAL for p in positions])
        np.testing.assert_array_equal(volume.array[order], expected)
        first = np.asarray(positions[order[0]][:3])
        np.testing.assert_allclose(first, study.affine[:3, 3], atol=1e-4)
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        kind = MAP_KINDS[name]
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == kind.unit.value
        assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
        assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == kind.quantity.value
        for frame in pm.PerFrameFunctionalGroupsSequence:  # each frame cites the source slice at its place
            position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
            z = int(round((position - study.affine[:3, 3]) @ NORMAL / SLICE_GAP))
            source = frame.DerivationImageSequence[0].SourceImageSequence[0]
            assert source.ReferencedSOPInstanceUID == study.slice_datasets[z].SOPInstanceUID
        voi = pm.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
        assert voi.VOILUTFunction == "LINEAR_EXACT" and 0 < float(voi.WindowWidth) <= expected.max()


def _read_pet(paths: list[Path]) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(p) for p in paths]
    return sorted(datasets, key=lambda d: np.dot(np.asarray(d.ImagePositionPatient, float), NORMAL))


def test_derived_pet_reads_back_within_int16_quantisation(outputs, maps, study):
    _, written = outputs
    for name, expected in maps.items():
        datasets = _read_pet(written[f"{name}_pet"])
        for z, ds in enumerate(datasets):
            slope = float(ds.RescaleSlope)
            assert ds.pixel_array.dtype == np.int16 and float(ds.RescaleIntercept) == 0
            values = ds.pixel_array * slope
            assert np.max(np.abs(values - expected[z])) <= slope / 2 + 1e-9
            assert slope < np.abs(expected[z]).max() / 30000  # the int16 range is used, not wasted
            assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == study.slice_datasets[z].SOPInstanceUID
            np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], study.affine[:3, :3] @ [0, 0, z]
                                       + study.affine[:3, 3], atol=1e-4)
        if name == "ki":
            assert (datasets[0].pixel_array < 0).any()  # negative estimates survive as negatives


def test_derived_pet_headers_describe_a_static_derived_image(outputs, maps):
    _, written = outputs
    for name in maps:
        for ds in _read_pet(written[f"{name}_pet"]):
            assert ds.SOPClassUID == PositronEmissionTomographyImageStorage
            assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]  # the PET IOD allows only PRIMARY
            assert ds.Units == MAP_KINDS[name].pet_units
            assert list(ds.SeriesType) == ["STATIC", "IMAGE"] and ds.DecayCorrection == "NONE"
            assert "NumberOfTimeSlices" not in ds and "DecayFactor" not in ds and not ds.ActualFrameDuration
            assert list(ds.CorrectedImage) == ["ATTN", "SCAT", "DTIM", "RAN", "NORM"]  # the source's, less DECY
            assert float(ds.WindowWidth) > 0 and "WindowCenter" in ds
            assert ds.NumberOfSlices == N_SLICES and ds.ImageIndex == ds.InstanceNumber


@pytest.mark.parametrize("source_terms, derived", [("ATTN", ["ATTN"]), ("DECY", []), (None, [])])
def test_derived_pet_keeps_a_single_corrected_image_term(study, maps, source_terms, derived):
    """CorrectedImage with one value (pydicom gives a str, not a list) or none at all."""
    slices = [copy.deepcopy(ds) for ds in study.slice_datasets]
    for ds in slices:
        if source_terms is None:
            del ds.CorrectedImage
        else:
            ds.CorrectedImage = source_terms
    one_term = copy.copy(study)
    one_term.slice_datasets = slices
    for ds in derived_pet_series(one_term, maps["ki"], MAP_KINDS["ki"], "test", 901):
        element = ds["CorrectedImage"]  # type 2: present, empty when no correction is left
        assert element.VM == len(derived) and (element.VM == 0 or element.value == derived[0])


@pytest.mark.parametrize("charset, name, written", [
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"]),
    (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동", ["", "ISO 2022 IR 149"]),
    ("", "Doe^Jane", None), ("ISO_IR 100", "Müller^Jörg", "ISO_IR 100")])
def test_source_character_sets_are_kept(study, maps, tmp_path, charset, name, written):
    """Japanese and Korean studies write Specific Character Set with an empty first value (PS3.5 Annex H, I),
    which highdicom's check refuses, as it does ISO 2022 IR 149; some writers leave it empty for the default
    repertoire. The maps carry the source's value and the same names."""
    slices = [copy.deepcopy(ds) for ds in study.slice_datasets]
    for ds in slices:
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
    encoded = copy.copy(study)
    encoded.slice_datasets = slices
    out = write_parametric_outputs(encoded, {"ki": maps["ki"]}, tmp_path, method_description="test")
    pmap = pydicom.dcmread(out["ki_pmap"][0], stop_before_pixels=True)
    assert pmap.get("SpecificCharacterSet") == written
    for path in out["ki_pmap"] + out["ki_pet"][:1]:
        assert str(pydicom.dcmread(path, stop_before_pixels=True).PatientName) == name


def test_series_linkage_uids_and_identity(outputs, study):
    _, written = outputs
    source = study.slice_datasets[0]
    series, sops = {}, set()
    for key, paths in written.items():
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.StudyInstanceUID == study.study_instance_uid
            assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
            assert all(ds.get(k) == v for k, v in PATIENT.items())
            assert ds.Manufacturer == "dynamic_pet" and "dynamic_pet" in str(ds.SoftwareVersions)
            assert "RESEARCH USE ONLY" in ds.SeriesDescription and ds.ContentDate
            series.setdefault(key, set()).add((ds.SeriesInstanceUID, int(ds.SeriesNumber)))
            sops.add(ds.SOPInstanceUID)
    assert all(len(v) == 1 for v in series.values())  # one series per key
    uids = {uid for (uid, _), in series.values()}
    assert len(uids) == len(series) and study.series_instance_uid not in uids
    assert {k: n for k, ((_, n),) in series.items()} == {
        "ki_pmap": 900, "ki_pet": 901, "v_pmap": 902, "v_pet": 903, "ki_sd_pmap": 904, "ki_sd_pet": 905}
    assert len(sops) == sum(len(p) for p in written.values())
    assert not sops & {d.SOPInstanceUID for d in study.slice_datasets}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_reports_no_errors(outputs):
    _, written = outputs
    for paths in written.values():
        for path in paths:
            run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=30)
            report = run.stdout + run.stderr
            assert ("ParametricMap" if "pmap" in path.parent.name else "PETImage") in report  # it did check
            errors = [line for line in report.splitlines() if line.startswith("Error")]
            assert not errors, f"{path.parent.name}/{path.name}: {errors}"


def test_rejects_maps_that_do_not_fit_the_study(study, maps, tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_parametric_outputs(study, {"ki": maps["ki"][:-1]}, tmp_path, method_description="x")
    with pytest.raises(ValueError, match="unknown map"):
        write_parametric_outputs(study, {"k3": maps["ki"]}, tmp_path, method_description="x")
    bad = maps["ki"].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_parametric_outputs(study, {"ki": bad}, tmp_path, method_description="x")


def _oblique(affine: np.ndarray) -> np.ndarray:
    """``affine`` turned 20 degrees about z and 10 about x: catches transposed direction matrices."""
    a, b = np.radians(20), np.radians(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    turned = affine.copy()
    turned[:3, :3] = rz @ rx @ affine[:3, :3]
    return turned


@pytest.mark.parametrize("oblique", [False, True])
def test_nifti_round_trip_keeps_values_and_lps_geometry(study, maps, tmp_path, oblique):
    import SimpleITK as sitk

    lps = _oblique(study.affine) if oblique else study.affine
    path = write_nifti(maps["ki"], lps, tmp_path / "nifti" / "ki.nii.gz")
    image, affine = read_nifti(path)
    np.testing.assert_array_equal(image, maps["ki"])
    np.testing.assert_allclose(affine, lps, atol=1e-5)
    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(itk.GetSpacing(), (PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_GAP), atol=1e-5)
    np.testing.assert_allclose(itk.GetOrigin(), ORIGIN, atol=1e-5)
    np.testing.assert_allclose(itk.TransformIndexToPhysicalPoint((3, 5, 2)), (lps @ [3, 5, 2, 1])[:3],
                               atol=1e-4)
    # The file itself must say RAS: x and y flip sign against LPS (independent reader).
    nib = pytest.importorskip("nibabel")
    np.testing.assert_allclose(nib.load(path).affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)

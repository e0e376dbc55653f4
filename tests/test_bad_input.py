"""Bad-input corpus for the dynamic PET loader: every refusal is an InputError naming file and tag."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import RADIOPHARMACEUTICAL_KEYWORDS, legacy_converted, native_enhanced, set_header_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamic_pet.dicom_series import load_dynamic_study
from dynamic_pet.errors import InputError


def _refused(folder: Path, tag: str, path: Path | None = None, match: str | None = None, **kwargs) -> InputError:
    """Load ``folder``, expect an InputError whose tag names ``tag`` (and whose file is ``path``)."""
    with pytest.raises(InputError, match=match) as caught:
        load_dynamic_study(folder, **kwargs)
    error = caught.value
    assert error.tag is not None and tag in error.tag, str(error)
    assert error.path is not None, str(error)
    if path is not None:
        assert error.path == str(path), str(error)
    return error


def _file_of(folder: Path, frame: int, z: int) -> Path:
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if int(ds.ImageIndex) == frame * int(ds.NumberOfSlices) + z + 1:
            return path
    raise LookupError((frame, z))


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist") as caught:
        load_dynamic_study(tmp_path / "nowhere")
    assert caught.value.path == str(tmp_path / "nowhere")


def test_empty_folder_and_non_dicom_files(tmp_path):
    with pytest.raises(InputError, match="no DICOM instances"):
        load_dynamic_study(tmp_path)
    (tmp_path / "README").write_text("hello")
    (tmp_path / "study.json").write_text('{"a": 1}')
    (tmp_path / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="no DICOM instances") as caught:
        load_dynamic_study(tmp_path)
    assert caught.value.path == str(tmp_path)


def test_static_pet_only(tmp_path, write_series, written_series):
    write_series(tmp_path / "static", activity=written_series.activity[:1], frame_start_s=[600.0],
                 frame_duration_s=[600.0])
    _refused(tmp_path, "NumberOfTimeSlices", match="single time frame")


def test_single_frame_passes_in_separate_series_are_not_combined(tmp_path, write_series, written_series):
    """Two whole-body passes exported as two single-frame series: refused, saying they are not combined."""
    for k, start in enumerate((1800.0, 3000.0)):
        write_series(tmp_path / f"pass{k}", activity=written_series.activity[-1:], frame_start_s=[start],
                     frame_duration_s=[600.0], seed=7 + k)  # the seed makes the series UID
    _refused(tmp_path, "NumberOfTimeSlices", match="each of the 2 PET series has a single time frame and "
             "single-frame series are not combined")


def test_ct_only(series_copy, rewrite):
    def to_ct(ds, frame, z):
        ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID

    rewrite(series_copy.folder, to_ct)
    _refused(series_copy.folder, "Modality", series_copy.folder, match="no PET series")


def test_multiframe_pet_without_functional_groups_is_refused(series_copy, rewrite):
    """Classic instances relabelled Enhanced PET: read as multi-frame, they have no frames to read."""
    rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.130"))
    _refused(series_copy.folder, "PerFrameFunctionalGroupsSequence", match="per-frame functional groups")


def test_multiframe_pet_with_a_wrong_image_size_is_refused(tmp_path, write_series):
    path = legacy_converted(write_series(tmp_path / "classic").folder, tmp_path / "lce")
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Rows - 1
    ds.save_as(path)
    _refused(path.parent, "PixelData", path, match="image size in the header is wrong")


def _edited_native_enhanced(tmp_path, write_series, edit) -> Path:
    path = native_enhanced(write_series(tmp_path / "classic").folder, tmp_path / "native")
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    return path


def _unit_code(ds, code):
    for groups in ds.PerFrameFunctionalGroupsSequence:
        groups.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0].CodeValue = code


@pytest.mark.parametrize("edit, tag, match", [
    (lambda ds: delattr(ds, "DecayCorrectionDateTime"), "DecayCorrectionDateTime", "required value is missing"),
    (lambda ds: delattr(ds, "DecayCorrected"), "DecayCorrection", "required value is missing"),
    (lambda ds: _unit_code(ds, "cm2/ml"), "Units", "in 'cm2/ml', not an activity concentration"),
    (lambda ds: [delattr(g, "RealWorldValueMappingSequence") for g in ds.PerFrameFunctionalGroupsSequence],
     "Units", "required value is missing"),
], ids=["decay-corrected-without-date-time", "no-decay-correction", "unit-not-activity", "no-units"])
def test_native_enhanced_pet_without_units_or_decay_reference_is_refused(tmp_path, write_series, edit, tag, match):
    path = _edited_native_enhanced(tmp_path, write_series, edit)
    _refused(path.parent, tag, path, match=match)


def test_native_enhanced_pet_with_a_lookup_table_mapping_is_refused(tmp_path, write_series):
    def lookup_table(ds):
        for groups in ds.PerFrameFunctionalGroupsSequence:
            del groups.RealWorldValueMappingSequence[0].RealWorldValueSlope

    path = _edited_native_enhanced(tmp_path, write_series, lookup_table)
    _refused(path.parent, "RescaleSlope", path, match=r"no \(0040,9225\) RealWorldValueSlope")


def test_two_equal_dynamic_series_are_ambiguous(tmp_path, write_series):
    write_series(tmp_path / "a")
    write_series(tmp_path / "b", series_description="second reconstruction")
    uids = {pydicom.dcmread(next((tmp_path / n).glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
            for n in ("a", "b")}
    error = _refused(tmp_path, "SeriesInstanceUID", tmp_path, match="qualify equally")
    assert all(uid in str(error) for uid in uids)
    assert "'second reconstruction'" in str(error) and "--series-uid" in str(error)
    study = load_dynamic_study(tmp_path, series_instance_uid=sorted(uids)[1])
    assert study.series_instance_uid == sorted(uids)[1]
    _refused(tmp_path, "SeriesInstanceUID", tmp_path, match="not in the input", series_instance_uid="1.2.3")


def test_missing_frame_reference_time_falls_back_or_is_refused(series_copy, rewrite):
    rewrite(series_copy.folder, lambda ds, f, z: delattr(ds, "FrameReferenceTime"))
    study = load_dynamic_study(series_copy.folder)  # per-frame AcquisitionTime gives the starts
    np.testing.assert_allclose(study.frame_start_min * 60, series_copy.start_s, atol=1e-3)

    def constant_acquisition(ds, frame, z):
        ds.AcquisitionTime = ds.SeriesTime

    rewrite(series_copy.folder, constant_acquisition)
    _refused(series_copy.folder, "FrameReferenceTime")


def test_missing_actual_frame_duration(series_copy, rewrite):
    [path] = rewrite(series_copy.folder, lambda ds, f, z: delattr(ds, "ActualFrameDuration"),
                     where=lambda f, z: (f, z) == (2, 5))
    _refused(series_copy.folder, "ActualFrameDuration", path, match="missing")


def test_missing_injection_time_falls_back_then_is_refused(series_copy, rewrite):
    def drop_datetime(ds, frame, z):
        del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime

    rewrite(series_copy.folder, drop_datetime)
    study = load_dynamic_study(series_copy.folder)
    np.testing.assert_allclose(study.frame_start_min * 60, series_copy.start_s, atol=1e-3)
    assert any("RadiopharmaceuticalStartTime" in note for note in study.notes)

    rewrite(series_copy.folder, lambda ds, f, z: delattr(ds.RadiopharmaceuticalInformationSequence[0],
                                                          "RadiopharmaceuticalStartTime"))
    _refused(series_copy.folder, "RadiopharmaceuticalStartTime", match="missing")


def test_unequal_slice_sets(series_copy):
    _file_of(series_copy.folder, 2, 3).unlink()
    error = _refused(series_copy.folder, "ImagePositionPatient", match="time frame 3 has 7 slices")
    assert Path(error.path).parent == series_copy.folder


def test_conflicting_instance_at_one_frame_and_slice(series_copy):
    source = _file_of(series_copy.folder, 1, 4)
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelData = (ds.pixel_array // 2).tobytes()
    rogue = series_copy.folder / "rogue.dcm"
    ds.save_as(rogue)
    error = _refused(series_copy.folder, "ImagePositionPatient", match="two different instances at one slice")
    assert error.path in (str(source), str(rogue)) and str(source) in str(error) and str(rogue) in str(error)


def test_same_sop_instance_uid_with_different_pixels(series_copy):
    source = _file_of(series_copy.folder, 3, 0)
    ds = pydicom.dcmread(source)
    ds.PixelData = (ds.pixel_array // 3).tobytes()
    ds.save_as(series_copy.folder / "zz_changed_copy.dcm")
    _refused(series_copy.folder, "SOPInstanceUID", series_copy.folder / "zz_changed_copy.dcm",
             match="different pixel data")


def test_overlapping_frames(series_copy, rewrite):
    rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, "ActualFrameDuration", 400_000),
            where=lambda f, z: f == 1)
    error = _refused(series_copy.folder, "ActualFrameDuration", match="time frames 2 and 3 overlap")
    assert error.path in {str(_file_of(series_copy.folder, 2, z)) for z in range(8)}


def test_frames_out_of_order(series_copy, rewrite):
    times = {}
    rewrite(series_copy.folder, lambda ds, f, z: times.setdefault(f, ds.AcquisitionTime))

    def swap(ds, frame, z):
        ds.AcquisitionTime = times[3 - frame]  # frames 2 and 3 (0-based 1 and 2) exchange their starts

    rewrite(series_copy.folder, swap, where=lambda f, z: f in (1, 2))
    _refused(series_copy.folder, "AcquisitionTime", match="frame 3 does not start after frame 2")


def test_missing_frame(series_copy, rewrite):
    for z in range(8):
        _file_of(series_copy.folder, 3, z).unlink()
    _refused(series_copy.folder, "ImageIndex", series_copy.folder, match="time frame 4 is missing")
    rewrite(series_copy.folder, lambda ds, f, z: delattr(ds, "ImageIndex") if f == 5 else None)
    _refused(series_copy.folder, "NumberOfTimeSlices", match="NumberOfTimeSlices is 6 but 5")


@pytest.mark.parametrize("units", ["CNTS", "PROPCPS", "NONE"])
def test_units_that_cannot_become_bq_per_ml(series_copy, rewrite, units):
    rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, "Units", units))
    _refused(series_copy.folder, "Units", match="Bq/mL")


def test_units_changing_between_instances(series_copy, rewrite):
    [path] = rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, "Units", "GML"),
                     where=lambda f, z: (f, z) == (4, 4))
    _refused(series_copy.folder, "Units", path, match="differs between instances")


def test_instance_from_another_study(series_copy, rewrite):
    [path] = rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, "StudyInstanceUID", "1.2.3.4"),
                     where=lambda f, z: (f, z) == (2, 3))
    _refused(series_copy.folder, "StudyInstanceUID", path, match="differs between instances")


def test_suv_without_weight_or_decay_correction(series_copy, rewrite):
    rewrite(series_copy.folder, lambda ds, f, z: (setattr(ds, "Units", "GML"), delattr(ds, "PatientWeight")))
    _refused(series_copy.folder, "PatientWeight", match="missing")
    rewrite(series_copy.folder, lambda ds, f, z: (setattr(ds, "PatientWeight", 70), setattr(ds, "DecayCorrection",
                                                                                           "NONE")))
    _refused(series_copy.folder, "DecayCorrection", match="without decay correction")


def test_unknown_decay_correction(series_copy, rewrite):
    rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, "DecayCorrection", "SCAN"))
    _refused(series_copy.folder, "DecayCorrection", match="unknown decay correction")


def test_nan_in_float_pixel_data(series_copy, rewrite):
    def float_pixels_with_nan(ds, frame, z):
        values = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope)
        values[3, 4] = np.nan
        del ds.PixelData
        ds.BitsAllocated, ds.RescaleSlope = 32, 1
        for keyword in ("BitsStored", "HighBit", "PixelRepresentation"):
            delattr(ds, keyword)
        ds.FloatPixelData = values.tobytes()

    [path] = rewrite(series_copy.folder, float_pixels_with_nan, where=lambda f, z: (f, z) == (5, 2))
    _refused(series_copy.folder, "PixelData", path, match="not finite")


def test_nan_rescale_slope(series_copy, rewrite):
    [path] = rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, "RescaleSlope", "nan"),
                     where=lambda f, z: (f, z) == (0, 7))
    _refused(series_copy.folder, "RescaleSlope", path)


def test_truncated_file(series_copy):
    path = _file_of(series_copy.folder, 4, 6)
    path.write_bytes(path.read_bytes()[:-200])
    error = _refused(series_copy.folder, "ImagePositionPatient", match="could not be read")
    assert str(path) in str(error)  # the unreadable file is named beside the incomplete frame


@pytest.mark.parametrize("keyword, value, tag", [
    ("PixelSpacing", ["2.0", "2.6"], "PixelSpacing"),
    ("ImageOrientationPatient", ["1", "0", "0", "0", "0.9950042", "0.0998334"], "ImageOrientationPatient"),
    ("Rows", 17, "Rows"),
])
def test_geometry_changing_between_frames(series_copy, rewrite, keyword, value, tag):
    edited = rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, keyword, value), where=lambda f, z: f == 4)
    error = _refused(series_copy.folder, tag, match="differs between instances")
    assert error.path in {str(p) for p in edited}


@pytest.mark.parametrize("keyword, value", [("Rows", 1), ("Columns", 8)])
def test_image_size_smaller_than_the_pixel_data_on_every_instance(series_copy, rewrite, keyword, value):
    """A consistent but wrong Rows or Columns (pydicom would decode the first rows and drop the rest) is
    refused against the stored pixel data length (found by the header-mutation property test below)."""
    rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, keyword, value))
    _refused(series_copy.folder, "PixelData", match="pixel data holds 512 bytes")


def test_positions_moving_between_frames(series_copy, rewrite):
    def move(ds, frame, z):
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 5.0, *ds.ImagePositionPatient[1:]]

    edited = rewrite(series_copy.folder, move, where=lambda f, z: f == 4)
    error = _refused(series_copy.folder, "ImagePositionPatient", match="differ from those of other frames")
    assert error.path in {str(p) for p in edited}


# -------------------------------------------------------------------------- property: never a crash

_MUTABLE = ["FrameReferenceTime", "ActualFrameDuration", "ImagePositionPatient", "ImageOrientationPatient",
            "PixelSpacing", "Rows", "Columns", "RescaleSlope", "RescaleIntercept", "ImageIndex", "NumberOfSlices",
            "NumberOfTimeSlices", "Units", "DecayCorrection", "DecayFactor", "AcquisitionTime", "AcquisitionDate",
            "SeriesTime", "SeriesDate", "SeriesInstanceUID", "Modality", "SOPClassUID", "BitsAllocated",
            "PixelRepresentation", "SeriesType", "RadionuclideHalfLife", "RadiopharmaceuticalStartDateTime",
            "RadiopharmaceuticalStartTime", "RadionuclideTotalDose", "PatientWeight"]
_IN_SEQUENCE = RADIOPHARMACEUTICAL_KEYWORDS
_CHANGES_VALUES = {"RescaleSlope", "RescaleIntercept"}  # a different valid value is undetectable
_TEXT = st.one_of(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True).map(str),
                  st.integers(-10**6, 10**6).map(str), st.sampled_from(["", "0", "-1", "1e308", "20240101",
                                                                        "120000", "BQML", "ADMIN", "PT", "\\"]))
_MUTATION = st.tuples(st.sampled_from(_MUTABLE), st.one_of(st.none(), _TEXT, st.integers(0, 70000)),
                      st.integers(0, 47), st.booleans())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=_MUTATION)
def test_random_header_mutation_loads_correctly_or_raises_input_error(written_series, tmp_path_factory, mutation):
    keyword, value, index, every_instance = mutation
    folder = tmp_path_factory.mktemp("mutated") / "study"
    shutil.copytree(written_series.folder, folder)
    paths = sorted(folder.glob("*.dcm"))
    for path in paths if every_instance else [paths[index]]:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            set_header_value(ds, keyword, value)
            try:
                ds.save_as(path)
            except Exception:  # noqa: BLE001 - pydicom cannot even write this value; nothing to test
                return
    try:
        study = load_dynamic_study(folder)
    except InputError as error:
        assert error.path is not None
        return
    finally:
        shutil.rmtree(folder.parent)
    assert study.activity.shape == written_series.activity.shape
    if not every_instance:  # one odd instance must be caught or be harmless
        np.testing.assert_allclose(study.frame_start_min * 60, written_series.start_s, atol=1e-3)
        np.testing.assert_allclose(study.frame_end_min * 60, written_series.start_s + written_series.duration_s,
                                   atol=1e-3)
        if keyword not in _CHANGES_VALUES:
            assert np.abs(study.activity - written_series.activity).max() <= 1e-4 * written_series.activity.max()

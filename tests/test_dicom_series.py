"""The product's dynamic PET DICOM loader on valid studies: round trip, vendor variants, decay and units."""

from __future__ import annotations

import datetime as dt
import logging
import random
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.valuerep import DT

from conftest import (jpeg_lossless_sv1, legacy_converted, native_enhanced, synthetic_activity,
                      write_synthetic_series)

from dynamic_pet.dicom_series import decay_weighted_offset_s, load_dynamic_study
from dynamic_pet.errors import InputError


def _lam(series) -> float:
    return np.log(2) / series.half_life_s


def _assert_matches_truth(study, series, rtol=1e-4):
    assert study.activity.dtype == np.float32
    assert study.activity.shape == series.activity.shape
    error = np.abs(study.activity - series.activity).max()
    assert error <= rtol * series.activity.max(), error
    np.testing.assert_allclose(study.frame_start_min * 60, series.start_s, atol=1e-3)
    np.testing.assert_allclose(study.frame_end_min * 60, series.start_s + series.duration_s, atol=1e-3)


def _requantise(ds: pydicom.Dataset, values: np.ndarray) -> None:
    slope = np.abs(values).max() / 32767
    ds.RescaleSlope = pydicom.valuerep.format_number_as_ds(float(slope))
    ds.PixelData = np.rint(values / float(ds.RescaleSlope)).astype(np.int16).tobytes()


def test_decay_weighted_offset_matches_numerical_mean():
    half_life, duration = 6586.2, 1800.0
    lam = np.log(2) / half_life
    t = np.linspace(0, duration, 100001)
    t_ave = -np.log(np.trapezoid(np.exp(-lam * t), t) / duration) / lam
    assert decay_weighted_offset_s(duration, half_life) == pytest.approx(t_ave, abs=1e-4)
    assert decay_weighted_offset_s(duration, half_life) < duration / 2
    np.testing.assert_allclose(decay_weighted_offset_s(np.array([1e-3, 10.0]), half_life), [5e-4, 5.0], rtol=1e-3)


def test_round_trip_with_shuffled_names_nested_folders_and_junk(series_copy):
    rng = random.Random(3)
    files = sorted(series_copy.folder.glob("*.dcm"))
    rng.shuffle(files)
    for i, path in enumerate(files):  # names and folders carry no order; InstanceNumber scrambled
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = rng.randint(1, 10000)
        target = series_copy.folder / f"sub{i % 3}" / f"x{rng.getrandbits(40):x}"
        target.parent.mkdir(exist_ok=True)
        ds.save_as(target)
        path.unlink()
    (series_copy.folder / "README").write_text("not DICOM")
    (series_copy.folder / "meta.json").write_text("{}")
    (series_copy.folder / "DICM.bin").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 50)  # DICOM-looking junk

    study = load_dynamic_study(series_copy.folder)

    _assert_matches_truth(study, series_copy)
    dz, dy, dx = series_copy.voxel_size_mm
    n_slices, rows, cols = series_copy.activity.shape[1:]
    expected = np.diag([dx, dy, dz, 1.0])
    expected[:3, 3] = [-(cols - 1) / 2 * dx, -(rows - 1) / 2 * dy, -(n_slices - 1) / 2 * dz]
    np.testing.assert_allclose(study.affine, expected, atol=1e-6)
    assert study.spacing_mm == pytest.approx((dz, dy, dx))
    assert study.half_life_s == pytest.approx(series_copy.half_life_s)
    assert len(study.slice_datasets) == n_slices
    z = [float(ds.ImagePositionPatient[2]) for ds in study.slice_datasets]
    assert z == sorted(z) and all(int(ds.ImageIndex) <= n_slices for ds in study.slice_datasets)
    assert all("PixelData" not in ds for ds in study.slice_datasets)
    assert study.series_instance_uid == study.slice_datasets[0].SeriesInstanceUID
    assert study.study_instance_uid == study.slice_datasets[0].StudyInstanceUID
    assert not any("DecayFactor" in note for note in study.notes)  # the writer's DecayFactor is consistent


def test_frame_reference_time_path_when_acquisition_time_is_constant(series_copy, rewrite):
    """Some systems write the series start as AcquisitionTime of every frame: FrameReferenceTime
    (decay-weighted, PS3.3 C.8.9.4.1.5) then gives the frame start."""
    def constant_acquisition(ds, frame, z):
        ds.AcquisitionDate, ds.AcquisitionTime = ds.SeriesDate, ds.SeriesTime

    rewrite(series_copy.folder, constant_acquisition)
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)
    assert any("FrameReferenceTime" in note for note in study.notes)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("acquisition", ["per frame", "constant"])
def test_frame_reference_time_at_the_frame_start(tmp_path, write_series, rewrite, uniform, acquisition):
    """Some writers put FrameReferenceTime at the frame start and compute DecayFactor for it (PS3.3 C.8.9.4.1.5
    leaves where in the frame to them). With per-frame acquisition times the DecayFactors then agree with
    SeriesTime as the START reference, even when equal frames make them agree with each other as mean times
    too; with one acquisition date-time for all (the scan start), read as mean times they would put the first
    frame before it, so FrameReferenceTime is read as the start."""
    starts = 30.25 + 300.0 * np.arange(6) if uniform else None
    kwargs = {"frame_start_s": starts, "frame_duration_s": np.full(6, 300.0)} if uniform else {}
    series = write_series(tmp_path / "study", **kwargs)
    lam = _lam(series)

    def frame_start_reference(ds, frame, z):
        offset = series.start_s[frame] - series.series_start_s
        ds.FrameReferenceTime = pydicom.valuerep.format_number_as_ds(offset * 1000.0)
        ds.DecayFactor = pydicom.valuerep.format_number_as_ds(float(np.exp(lam * offset)))
        if acquisition == "constant":
            ds.AcquisitionDate, ds.AcquisitionTime = ds.SeriesDate, ds.SeriesTime

    rewrite(series.folder, frame_start_reference)
    study = load_dynamic_study(series.folder)
    _assert_matches_truth(study, series)
    assert not any("DecayFactor" in note for note in study.notes)
    assert any("read as the frame start" in note for note in study.notes) == (acquisition == "constant")


def test_frame_reference_time_at_the_frame_start_unconfirmed_is_refused_by_name(series_copy, rewrite):
    """Without acquisition times to show it, a frame-start FrameReferenceTime read as the mean time makes
    unequal frames overlap: refused, naming FrameReferenceTime and the convention."""
    def frame_start_reference(ds, frame, z):
        ds.FrameReferenceTime = pydicom.valuerep.format_number_as_ds(
            (series_copy.start_s[frame] - series_copy.series_start_s) * 1000.0)
        del ds.AcquisitionTime

    rewrite(series_copy.folder, frame_start_reference)
    with pytest.raises(InputError, match="overlap.*frame start") as refused:
        load_dynamic_study(series_copy.folder)
    assert "FrameReferenceTime" in str(refused.value)


def test_grouping_by_time_without_image_index(series_copy, rewrite):
    rewrite(series_copy.folder, lambda ds, frame, z: delattr(ds, "ImageIndex"))
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)
    assert any("grouped by FrameReferenceTime" in note for note in study.notes)


def test_decay_correction_none_is_corrected_over_the_frame(series_copy, rewrite):
    lam = _lam(series_copy)

    def undo_decay_correction(ds, frame, z):
        start, duration = series_copy.start_s[frame], series_copy.duration_s[frame]
        frame_mean_decay = np.exp(-lam * start) * -np.expm1(-lam * duration) / (lam * duration)
        _requantise(ds, series_copy.activity[frame, z].astype(np.float64) * frame_mean_decay)
        ds.DecayCorrection = "NONE"
        del ds.DecayFactor

    rewrite(series_copy.folder, undo_decay_correction)
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)
    assert any("NONE" in note for note in study.notes)


def test_decay_correction_admin_is_taken_as_is(series_copy, rewrite):
    def admin(ds, frame, z):
        _requantise(ds, series_copy.activity[frame, z].astype(np.float64))
        ds.DecayCorrection = "ADMIN"
        ds.DecayFactor = float(ds.DecayFactor) * np.exp(_lam(series_copy) * series_copy.series_start_s)

    rewrite(series_copy.folder, admin)
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)
    assert not any("DecayFactor differs" in note for note in study.notes)


def test_inconsistent_decay_factor_is_noted(series_copy, rewrite):
    rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, "DecayFactor", 1.0), where=lambda f, z: f == 4)
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)
    assert any("DecayFactor differs" in note and "1 frame" in note for note in study.notes)


def test_suv_units_are_converted_back_to_activity(series_copy, rewrite):
    lam = _lam(series_copy)
    dose_at_series_start = series_copy.dose_bq * np.exp(-lam * series_copy.series_start_s)

    def to_suv(ds, frame, z):
        bqml = series_copy.activity[frame, z].astype(np.float64) * np.exp(-lam * series_copy.series_start_s)
        _requantise(ds, bqml * series_copy.weight_kg * 1000 / dose_at_series_start)
        ds.Units = "GML"

    rewrite(series_copy.folder, to_suv)
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)
    assert any("GML" in note for note in study.notes)


def test_philips_counts_with_activity_scale_factor(series_copy, rewrite):
    def to_counts(ds, frame, z):
        scale = 0.25 + 0.01 * z  # per-instance factor
        ds.Units = "CNTS"
        _requantise(ds, float(ds.RescaleSlope) * ds.pixel_array / scale)
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        block.add_new(0x09, "DS", pydicom.valuerep.format_number_as_ds(scale))

    rewrite(series_copy.folder, to_counts)
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy, rtol=2e-4)


@pytest.mark.parametrize("clock, acquisition_date", [("235950", True), ("235000", False)])
def test_injection_time_only_and_crossing_midnight(series_copy, rewrite, clock, acquisition_date):
    """Only RadiopharmaceuticalStartTime: injection at 23:59:50, the scan after midnight (the injection is the
    day before the series date); or injection at 23:50, the scan crossing midnight with AcquisitionDate empty
    (type 2), so that the frames after midnight take the series date and must be put on the next day."""
    first = pydicom.dcmread(next(series_copy.folder.glob("*.dcm")), stop_before_pixels=True)
    injection = dt.datetime.strptime(
        first.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime, "%Y%m%d%H%M%S.%f")
    shift = dt.datetime.strptime("20240309" + clock, "%Y%m%d%H%M%S") - injection

    def shifted(date, time):
        when = dt.datetime.strptime(date + time, "%Y%m%d%H%M%S.%f") + shift
        return when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")

    def move(ds, frame, z):
        for prefix in ("Study", "Series", "Acquisition", "Content"):
            date, time = shifted(ds[prefix + "Date"].value, ds[prefix + "Time"].value)
            ds[prefix + "Date"].value, ds[prefix + "Time"].value = date, time
        item = ds.RadiopharmaceuticalInformationSequence[0]
        item.RadiopharmaceuticalStartTime = clock
        del item.RadiopharmaceuticalStartDateTime
        if not acquisition_date:
            ds.AcquisitionDate = ""

    rewrite(series_copy.folder, move)
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)
    assert any("previous day" in note for note in study.notes) == acquisition_date


def test_identical_duplicate_file_is_skipped(series_copy, caplog):
    path = next(series_copy.folder.glob("*.dcm"))
    shutil.copy(path, series_copy.folder / "copy_of_one_instance")
    with caplog.at_level(logging.WARNING, logger="dynamic_pet.dicom_series"):
        study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)
    assert any("duplicate" in note for note in study.notes)
    assert any("duplicate" in record.getMessage() for record in caplog.records)


def test_truncated_copy_is_skipped_when_an_intact_copy_exists(series_copy):
    path = next(series_copy.folder.glob("*.dcm"))
    (series_copy.folder / "partial_copy").write_bytes(path.read_bytes()[: path.stat().st_size // 2 + 100])
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)


def test_picks_the_series_with_most_frames_and_honours_the_override(tmp_path, write_series):
    many = write_series(tmp_path / "many")
    few = write_series(tmp_path / "few", activity=many.activity[:4], frame_start_s=many.start_s[:4],
                       frame_duration_s=many.duration_s[:4], series_description="four frames")
    ct = tmp_path / "ct.dcm"
    ds = pydicom.dcmread(next(few.folder.glob("*.dcm")))
    ds.Modality, ds.SOPClassUID, ds.SeriesInstanceUID = "CT", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    ds.save_as(ct)
    study = load_dynamic_study(tmp_path)
    assert study.activity.shape[0] == 6
    assert any("2 dynamic PET series" in note for note in study.notes)
    few_uid = pydicom.dcmread(next(few.folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    chosen = load_dynamic_study(tmp_path, series_instance_uid=few_uid)
    assert chosen.activity.shape[0] == 4 and chosen.series_instance_uid == few_uid
    with pytest.raises(InputError, match="Modality") as error:
        load_dynamic_study(tmp_path, series_instance_uid="1.2.3.4")
    assert error.value.path == str(ct)


def test_logs_carry_no_patient_identifiers(series_copy, caplog, rewrite):
    rewrite(series_copy.folder, lambda ds, f, z: setattr(ds, "AcquisitionTime", ds.SeriesTime))
    with caplog.at_level(logging.DEBUG):
        study = load_dynamic_study(series_copy.folder)
    header = study.slice_datasets[0]
    text = " ".join(r.getMessage() for r in caplog.records) + " ".join(study.notes)
    assert caplog.records  # something was logged
    for identifier in (str(header.PatientName), header.PatientID, header.StudyInstanceUID,
                       header.SeriesDate, header.SeriesInstanceUID):
        assert identifier not in text


@pytest.mark.parametrize("decay_factors", [True, False])
@pytest.mark.parametrize("hours", [2, -0.15])
def test_series_time_apart_from_the_scan_start_gives_the_start_reference_from_elsewhere(series_copy, rewrite,
                                                                                        decay_factors, hours):
    """A reprocessed series may carry a SeriesTime after the acquisition (QIBA SUV guidance), another writer
    one 9 min before it: the START reference is where the DecayFactors of all frames agree it is, else (no
    DecayFactor) the first frame start when SeriesTime is after it."""
    def moved_series_time(ds, frame, z):
        ds.SeriesTime = (dt.datetime.strptime(ds.SeriesTime, "%H%M%S.%f") + dt.timedelta(hours=hours)).strftime(
            "%H%M%S.%f")
        if not decay_factors:
            del ds.DecayFactor

    rewrite(series_copy.folder, moved_series_time)
    study = load_dynamic_study(series_copy.folder)
    if decay_factors or hours > 0:
        _assert_matches_truth(study, series_copy)
    else:  # nothing says SeriesTime is not the reference, which the standard makes it: 9 min of decay (5.5 %)
        error = study.activity.max() / series_copy.activity.max() - 1
        assert error == pytest.approx(np.expm1(-_lam(series_copy) * 0.15 * 3600), rel=0.01)
    expected = "DecayFactors of all frames" if decay_factors else "reprocessed series"
    assert any(expected in note for note in study.notes) == (decay_factors or hours > 0)


def test_legacy_converted_enhanced_pet_reads_as_its_classic_source(written_series, tmp_path):
    """One multi-frame instance from highdicom's converter: the same activity, times and geometry as the
    classic series it was made from, each slice's source is that frame's view, and per-frame
    FrameAcquisitionDateTime gives the frame starts."""
    path = legacy_converted(written_series.folder, tmp_path / "lce")
    classic, multiframe = load_dynamic_study(written_series.folder), load_dynamic_study(path.parent)

    _assert_matches_truth(multiframe, written_series)
    np.testing.assert_array_equal(multiframe.activity, classic.activity)
    np.testing.assert_array_equal(multiframe.frame_start_min, classic.frame_start_min)
    np.testing.assert_array_equal(multiframe.affine, classic.affine)
    assert "frame starts from the per-frame acquisition date/time" in multiframe.notes
    source = pydicom.dcmread(path, stop_before_pixels=True)
    assert multiframe.multiframe_source.SOPInstanceUID == source.SOPInstanceUID
    positions = [source.PerFrameFunctionalGroupsSequence[f - 1].PlanePositionSequence[0].ImagePositionPatient
                 for f in multiframe.source_frames]
    assert [list(p) for p in positions] == [list(ds.ImagePositionPatient) for ds in multiframe.slice_datasets]
    assert [str(ds.AcquisitionTime) for ds in multiframe.slice_datasets] == \
        [str(ds.AcquisitionTime) for ds in classic.slice_datasets]
    assert all("PerFrameFunctionalGroupsSequence" not in ds and "RescaleType" not in ds
               for ds in multiframe.slice_datasets)


@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_native_enhanced_pet_reads_units_decay_and_dose_by_its_own_modules(written_series, tmp_path, gain):
    """Enhanced PET without the classic attributes: Bq/mL and the rescale from the Real World Value Mapping
    (which wins over a Pixel Value Transformation that disagrees), the decay reference from
    DecayCorrectionDateTime, the dose in MBq; the same activity and times as the classic source."""
    path = native_enhanced(written_series.folder, tmp_path / "native", transformation_gain=gain)
    classic, native = load_dynamic_study(written_series.folder), load_dynamic_study(path.parent)

    _assert_matches_truth(native, written_series)
    np.testing.assert_allclose(native.activity, classic.activity, rtol=1e-6, atol=1e-6 * classic.activity.max())
    np.testing.assert_allclose(native.frame_start_min, classic.frame_start_min, atol=1e-9)
    assert any(note.startswith("DecayCorrected YES") for note in native.notes)


def test_native_enhanced_pet_in_suv_is_converted_with_the_dose_in_mbq(written_series, tmp_path):
    """A mapping to body-weight SUV (CID 84 g/ml{SUVbw}) is inverted with the Enhanced PET Isotope module's dose,
    which is in MBq, decayed to DecayCorrectionDateTime."""
    path = native_enhanced(written_series.folder, tmp_path / "native")
    ds = pydicom.dcmread(path)
    item = ds.RadiopharmaceuticalInformationSequence[0]
    since_injection = (DT(ds.DecayCorrectionDateTime) - DT(item.RadiopharmaceuticalStartDateTime)).total_seconds()
    dose_bq = float(item.RadionuclideTotalDose) * 1e6 * np.exp(-_lam(written_series) * since_injection)
    suv_per_bqml = float(ds.PatientWeight) * 1000 / dose_bq
    for groups in ds.PerFrameFunctionalGroupsSequence:
        mapping = groups.RealWorldValueMappingSequence[0]
        mapping.RealWorldValueSlope *= suv_per_bqml
        mapping.MeasurementUnitsCodeSequence[0].CodeValue = "g/ml{SUVbw}"
    ds.save_as(path)
    _assert_matches_truth(load_dynamic_study(path.parent), written_series)


def test_native_enhanced_pet_uncorrected_frames_are_decay_corrected(written_series, tmp_path):
    """DecayCorrected NO is the classic NONE: each frame is corrected over the frame to the injection."""
    path = native_enhanced(written_series.folder, tmp_path / "native")
    ds = pydicom.dcmread(path)
    reference = DT(ds.DecayCorrectionDateTime)
    injection = DT(ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime)
    lam = _lam(written_series)
    for f, groups in enumerate(ds.PerFrameFunctionalGroupsSequence):  # undo the correction to the reference
        content = groups.FrameContentSequence[0]
        start = (DT(content.FrameAcquisitionDateTime) - reference).total_seconds()
        duration = float(content.FrameAcquisitionDuration) / 1000
        factor = np.exp(-lam * (start + decay_weighted_offset_s(duration, written_series.half_life_s)))
        groups.RealWorldValueMappingSequence[0].RealWorldValueSlope *= factor
    ds.DecayCorrected = "NO"
    del ds.DecayCorrectionDateTime
    ds.save_as(path)
    assert (reference - injection).total_seconds() > 0
    study = load_dynamic_study(path.parent)
    _assert_matches_truth(study, written_series)
    assert any(note.startswith("DecayCorrection NONE") for note in study.notes)


def _encode(folder, syntax, **header) -> None:
    """Re-encode every file of ``folder`` in ``syntax`` (compressed or deflated), then set ``header``."""
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        if syntax == pydicom.uid.JPEGLosslessSV1:  # no library here encodes it
            ds.PixelData = pydicom.encaps.encapsulate([jpeg_lossless_sv1(ds.pixel_array)])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = syntax
        elif syntax.is_compressed:
            ds.compress(syntax)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        for keyword, value in header.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def series_32(tmp_path_factory):
    """The standard series on 32x32 slices: OpenJPEG encodes no smaller image with its default levels."""
    return write_synthetic_series(tmp_path_factory.mktemp("series_32") / "series", activity=synthetic_activity(shape=(8, 32, 32)))


@pytest.mark.parametrize("syntax", [pydicom.uid.JPEGLosslessSV1, pydicom.uid.RLELossless, pydicom.uid.JPEGLSLossless,
                                    pydicom.uid.JPEG2000Lossless, pydicom.uid.DeflatedExplicitVRLittleEndian])
def test_lossless_transfer_syntaxes_give_the_same_values(series_32, tmp_path, syntax):
    """PACS store PET compressed losslessly or deflated: the same activity, to the bit, and nothing marked lossy."""
    folder = tmp_path / "encoded"
    shutil.copytree(series_32.folder, folder)
    _encode(folder, syntax)

    study = load_dynamic_study(folder)

    np.testing.assert_array_equal(study.activity, load_dynamic_study(series_32.folder).activity)
    assert study.lossy_compression == []


@pytest.mark.parametrize("syntax", [pydicom.uid.RLELossless, pydicom.uid.DeflatedExplicitVRLittleEndian])
def test_encoded_multiframe_pet_gives_the_same_values(written_series, tmp_path, syntax):
    """A Legacy Converted Enhanced PET instance, RLE-compressed or deflated: its frames decode as before."""
    path = legacy_converted(written_series.folder, tmp_path / "lce")
    plain = load_dynamic_study(path.parent).activity
    _encode(path.parent, syntax)

    np.testing.assert_array_equal(load_dynamic_study(path.parent).activity, plain)


@pytest.mark.parametrize("ratio_in_header", [True, False])
def test_lossy_compressed_source_is_reported_and_marks_the_maps(series_32, tmp_path, ratio_in_header, caplog):
    """JPEG 2000 at 8:1 with LossyImageCompression 01: the study records the method and ratio (the header's,
    else estimated from the stored size), warns, and both DICOM outputs keep 01 with the method and ratio."""
    from dynamic_pet.parametric_dicom import write_parametric_outputs

    folder = tmp_path / "lossy"
    shutil.copytree(series_32.folder, folder)
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.compress(pydicom.uid.JPEG2000, j2k_cr=[8])
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_15444_1"
        if ratio_in_header:
            ds.LossyImageCompressionRatio = 8
        ds.save_as(path, enforce_file_format=True)

    with caplog.at_level(logging.WARNING):
        study = load_dynamic_study(folder)

    [(method, ratio)] = study.lossy_compression
    assert method == "ISO_15444_1"
    assert ratio == (8 if ratio_in_header else pytest.approx(8, rel=0.2))  # estimated: the codestream's size
    assert any("lossy compressed" in note for note in study.notes)
    assert "lossy compressed" in caplog.text
    error = np.abs(study.activity - series_32.activity).max() / series_32.activity.max()
    assert 1e-4 < error < 0.05, error  # changed, as lossy coding does, but still the same images
    written = write_parametric_outputs(study, {"ki": study.activity[-1] * 1e-4}, tmp_path / "out",
                                       method_description="test")
    for key in ("ki_pmap", "ki_pet"):
        ds = pydicom.dcmread(written[key][0], stop_before_pixels=True)
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_15444_1"
        assert float(ds.LossyImageCompressionRatio) == pytest.approx(ratio)


def _when(date: str, time: str) -> dt.datetime:
    return dt.datetime.strptime(date + time, "%Y%m%d%H%M%S.%f")


def test_scan_started_before_an_injection_given_as_time_only(series_copy, rewrite):
    """Dynamic scans start before the bolus: an injection 20 s after SeriesTime, given as a time of day, is
    that day's (not the day before's), and the first frame starts before it."""
    def inject_after_series_start(ds, frame, z):
        item = ds.RadiopharmaceuticalInformationSequence[0]
        del item.RadiopharmaceuticalStartDateTime
        item.RadiopharmaceuticalStartTime = (_when(ds.SeriesDate, ds.SeriesTime) + dt.timedelta(seconds=20)
                                             ).strftime("%H%M%S.%f")

    rewrite(series_copy.folder, inject_after_series_start)
    study = load_dynamic_study(series_copy.folder)
    np.testing.assert_allclose(study.frame_start_min * 60, series_copy.start_s - series_copy.series_start_s - 20,
                               atol=1e-3)
    assert not any("day)" in note for note in study.notes)
    assert any("before the injection" in note for note in study.notes)


def test_date_times_with_their_own_utc_offset_are_read_in_local_time(series_copy, rewrite):
    """TimezoneOffsetFromUTC +0100 for the DA/TM values; the injection given in UTC (+0000) and every frame's
    AcquisitionDateTime in -0500: the same instants, so the same times and activity as the plain series."""
    def zoned(ds, frame, z):
        ds.TimezoneOffsetFromUTC = "+0100"
        item = ds.RadiopharmaceuticalInformationSequence[0]
        injection = dt.datetime.strptime(item.RadiopharmaceuticalStartDateTime, "%Y%m%d%H%M%S.%f")
        item.RadiopharmaceuticalStartDateTime = (injection - dt.timedelta(hours=1)).strftime("%Y%m%d%H%M%S.%f+0000")
        acquired = _when(ds.AcquisitionDate, ds.AcquisitionTime) - dt.timedelta(hours=6)
        ds.AcquisitionDateTime = acquired.strftime("%Y%m%d%H%M%S.%f-0500")

    rewrite(series_copy.folder, zoned)
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)


@pytest.mark.parametrize("meaning", ["^18^Fluorine", "F-18", None])
def test_half_life_absent_is_taken_from_the_nuclide_code(series_copy, rewrite, meaning):
    """RadionuclideHalfLife is type 3: without it the half-life of the nuclide the code sequence names is used
    (the same activity as with it); with neither, a refusal naming the tag."""
    def drop_half_life(ds, frame, z):
        item = ds.RadiopharmaceuticalInformationSequence[0]
        del item.RadionuclideHalfLife
        if meaning is None:
            del item.RadionuclideCodeSequence
        else:
            item.RadionuclideCodeSequence[0].CodeMeaning = meaning

    rewrite(series_copy.folder, drop_half_life)
    if meaning is None:
        with pytest.raises(InputError, match="RadionuclideHalfLife"):
            load_dynamic_study(series_copy.folder)
        return
    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)
    assert study.half_life_s == pytest.approx(series_copy.half_life_s, rel=1e-4)
    assert any("the half-life of 18F" in note for note in study.notes)


def test_files_without_a_part10_header_are_read(series_copy):
    """No preamble, no file meta (older systems, raw dumps): the same activity; stray files still ignored."""
    for path in sorted(series_copy.folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.preamble = None
        del ds.file_meta
        ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    (series_copy.folder / "notes.txt").write_text("not DICOM\n" * 50)

    study = load_dynamic_study(series_copy.folder)

    _assert_matches_truth(study, series_copy)


def test_big_endian_source_gives_little_endian_outputs(series_copy, tmp_path):
    """Explicit VR Big Endian (retired, still in archives): the same activity, and the outputs, which copy the
    source headers, are written as Explicit VR Little Endian."""
    from dynamic_pet.parametric_dicom import write_parametric_outputs

    for path in sorted(series_copy.folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
        ds.PixelData = pixels.astype(">i2").tobytes()
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)

    study = load_dynamic_study(series_copy.folder)
    _assert_matches_truth(study, series_copy)
    written = write_parametric_outputs(study, {"ki": study.activity[-1] * 1e-4}, tmp_path / "out",
                                       method_description="test")
    for key in ("ki_pmap", "ki_pet"):
        ds = pydicom.dcmread(written[key][0])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.PatientID == study.slice_datasets[0].PatientID


def test_attenuation_corrected_series_is_chosen_over_its_uncorrected_twin(tmp_path, write_series, rewrite):
    """Scanners store the AC and NAC reconstructions of one dynamic scan as two series alike in frames and
    instances: the one whose CorrectedImage holds ATTN is used, and the note names it."""
    write_series(tmp_path / "ac", series_description="AC dynamic")
    nac = write_series(tmp_path / "nac", series_description="NAC dynamic")
    rewrite(nac.folder, lambda ds, f, z: setattr(ds, "CorrectedImage", [t for t in ds.CorrectedImage if t != "ATTN"]))
    ac_uid = pydicom.dcmread(next((tmp_path / "ac").glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID

    study = load_dynamic_study(tmp_path)

    assert study.series_instance_uid == ac_uid
    assert any("'AC dynamic'" in note and "attenuation-corrected first" in note for note in study.notes)


def test_multi_bed_passes_with_their_own_frame_times_are_refused_by_name(series_copy, rewrite):
    """A whole-body pass over two bed positions: the second half of the slices is acquired in the second half of
    each frame, so its frame times differ from the first half's. One frame time per volume would put a wrong
    time on half the slices; the series is refused naming FrameReferenceTime and the bed layout."""
    half = series_copy.activity.shape[1] // 2

    def two_beds(ds, frame, z):
        duration_ms = float(ds.ActualFrameDuration) / 2
        ds.ActualFrameDuration = int(round(duration_ms))
        bed_offset_s = duration_ms / 1000 if z >= half else 0.0
        ds.FrameReferenceTime = float(ds.FrameReferenceTime) + (bed_offset_s - duration_ms / 2000) * 1000
        start = dt.datetime.strptime(ds.AcquisitionDate + ds.AcquisitionTime.split(".")[0], "%Y%m%d%H%M%S")
        start += dt.timedelta(seconds=bed_offset_s)
        ds.AcquisitionDate, ds.AcquisitionTime = start.strftime("%Y%m%d"), start.strftime("%H%M%S.%f")

    rewrite(series_copy.folder, two_beds)
    with pytest.raises(InputError, match="multi-bed whole-body") as caught:
        load_dynamic_study(series_copy.folder)
    assert "(0054,1300) FrameReferenceTime" in str(caught.value) and str(series_copy.folder) in str(caught.value)

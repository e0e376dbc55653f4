"""The phantom's dynamic PET DICOM writer: standard conformance, header facts and determinism."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from phantom.dicom_writer import write_dynamic_pet_series


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


def _datetime(date: str, time: str) -> dt.datetime:
    return dt.datetime.strptime(date + time, "%Y%m%d%H%M%S.%f")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
def test_dciodvfy_reports_no_errors_or_warnings(written_series):
    files = sorted(written_series.folder.glob("*.dcm"))[:4]
    for path in files:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        assert lines[0] == "PETImage"  # the IOD dciodvfy recognised
        problems = [line for line in lines if line.startswith(("Error", "Warning"))]
        assert problems == [], f"{path.name}: {problems}"


def test_one_series_with_dynamic_pet_attributes(written_series):
    headers = _headers(written_series.folder)
    n_frames, n_slices = written_series.activity.shape[:2]
    assert len(headers) == n_frames * n_slices
    assert {ds.SOPClassUID for ds in headers} == {"1.2.840.10008.5.1.4.1.1.128"}
    assert len({ds.SeriesInstanceUID for ds in headers}) == 1
    assert len({ds.SOPInstanceUID for ds in headers}) == len(headers)
    ds = headers[0]
    assert list(ds.SeriesType) == ["DYNAMIC", "IMAGE"]
    assert (ds.NumberOfTimeSlices, ds.NumberOfSlices) == (n_frames, n_slices)
    assert (ds.Units, ds.DecayCorrection, ds.Modality) == ("BQML", "START", "PT")
    assert "DECY" in ds.CorrectedImage and "ATTN" in ds.CorrectedImage
    assert str(ds.PatientName) == f"PHANTOM^SEED{written_series.seed}"
    item = ds.RadiopharmaceuticalInformationSequence[0]
    assert float(item.RadionuclideHalfLife) == pytest.approx(written_series.half_life_s)
    assert float(item.RadionuclideTotalDose) == pytest.approx(written_series.dose_bq)
    assert item.RadionuclideCodeSequence[0].CodeMeaning == "^18^Fluorine"
    assert sorted(int(d.ImageIndex) for d in headers) == list(range(1, len(headers) + 1))


def test_timing_attributes_follow_the_standard(written_series):
    """AcquisitionTime = frame start; FrameReferenceTime = decay-weighted mean time from the series
    start, here computed by numerical integration of the decaying activity over the frame."""
    lam = np.log(2) / written_series.half_life_s
    for ds in _headers(written_series.folder):
        frame, z = divmod(int(ds.ImageIndex) - 1, int(ds.NumberOfSlices))
        item = ds.RadiopharmaceuticalInformationSequence[0]
        injection = dt.datetime.strptime(item.RadiopharmaceuticalStartDateTime, "%Y%m%d%H%M%S.%f")
        series_start = _datetime(ds.SeriesDate, ds.SeriesTime)
        acquisition = _datetime(ds.AcquisitionDate, ds.AcquisitionTime)
        start, duration = written_series.start_s[frame], written_series.duration_s[frame]
        assert (series_start - injection).total_seconds() == pytest.approx(written_series.series_start_s, abs=1e-6)
        assert (acquisition - injection).total_seconds() == pytest.approx(start, abs=1e-6)
        assert int(ds.ActualFrameDuration) == round(duration * 1000)
        t = np.linspace(0.0, duration, 200001)
        mean_activity = np.trapezoid(np.exp(-lam * t), t) / duration
        t_ave = -np.log(mean_activity) / lam
        expected_ms = (start - written_series.series_start_s + t_ave) * 1000
        assert float(ds.FrameReferenceTime) == pytest.approx(expected_ms, abs=1e-3)
        assert float(ds.DecayFactor) == pytest.approx(np.exp(lam * expected_ms / 1000), rel=1e-9)


def test_pixels_are_int16_with_per_slice_slope_referenced_to_series_start(written_series):
    lam = np.log(2) / written_series.half_life_s
    to_series_start = np.exp(-lam * written_series.series_start_s)
    slopes = []
    for ds in _headers(written_series.folder):
        frame, z = divmod(int(ds.ImageIndex) - 1, int(ds.NumberOfSlices))
        stored = ds.pixel_array
        assert stored.dtype == np.int16 and float(ds.RescaleIntercept) == 0.0
        assert np.abs(stored).max() >= 32766
        slope = float(ds.RescaleSlope)
        slopes.append(slope)
        expected = written_series.activity[frame, z] * to_series_start
        np.testing.assert_allclose(stored * slope, expected, atol=0.51 * slope + 1e-6 * expected.max())
    assert len(set(slopes)) == len(slopes)  # every instance has its own slope


def test_geometry_is_axial_foot_to_head(written_series):
    dz, dy, dx = written_series.voxel_size_mm
    for ds in _headers(written_series.folder):
        frame, z = divmod(int(ds.ImageIndex) - 1, int(ds.NumberOfSlices))
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [dy, dx]
        n_slices = int(ds.NumberOfSlices)
        assert float(ds.ImagePositionPatient[2]) == pytest.approx((z - (n_slices - 1) / 2) * dz)


def test_file_names_are_hashes_of_the_sop_uid(written_series):
    for path in written_series.folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert path.stem == hashlib.sha1(ds.SOPInstanceUID.encode()).hexdigest()[:20]


def test_same_seed_gives_identical_files_and_other_seed_other_uids(tmp_path, write_series):
    first = write_series(tmp_path / "a")
    write_series(tmp_path / "b")
    other = write_series(tmp_path / "c", seed=8)
    names = sorted(p.name for p in first.folder.glob("*.dcm"))
    assert names == sorted(p.name for p in (tmp_path / "b").glob("*.dcm"))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a = pydicom.dcmread(first.folder / names[0], stop_before_pixels=True)
    c = pydicom.dcmread(next(other.folder.glob("*.dcm")), stop_before_pixels=True)
    assert a.StudyInstanceUID != c.StudyInstanceUID and a.SeriesInstanceUID != c.SeriesInstanceUID
    assert a.PatientID != c.PatientID
    assert not set(names) & {p.name for p in other.folder.glob("*.dcm")}


def test_writer_refuses_inconsistent_input(tmp_path):
    activity = np.ones((2, 2, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="frame"):
        write_dynamic_pet_series(tmp_path, activity, [0.0], [60.0], (2, 2, 2), injected_dose_bq=1e8)
    with pytest.raises(ValueError, match="before the series start"):
        write_dynamic_pet_series(tmp_path, activity, [0.0, 60.0], [60.0, 60.0], (2, 2, 2), injected_dose_bq=1e8,
                                 series_start_after_injection_s=10.0)


def test_plain_file_names_follow_the_instance_number(tmp_path, write_series):
    series = write_series(tmp_path / "plain", rng_file_names=False)
    for path in series.folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert path.name == f"IM{int(ds.InstanceNumber):05d}.dcm"


def test_uids_stay_unique_for_many_frames_and_slices(tmp_path):
    """(frame 1, slice 10) and (frame 11, slice 0) must not share a UID or a file name."""
    activity = np.ones((12, 11, 2, 2), dtype=np.float32)
    paths = write_dynamic_pet_series(tmp_path, activity, np.arange(12) * 10.0, np.full(12, 10.0), (2, 2, 2),
                                     injected_dose_bq=1e8)
    assert len({p.name for p in paths}) == len(list(tmp_path.glob("*.dcm"))) == 12 * 11

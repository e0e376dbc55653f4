"""The plasma input function on other frame schedules: gaps between frames, a scan started after the injection,
and blood curves sampled in time.

DICOM cases use the demo phantom's series (noiseless, 24 slices) with time frames removed as a scanner that
never acquired them would have written the series; conventional Patlak Ki of the complete series is the
reference. Curve cases use the simulator's plasma model and its exact frame averages (1-s grid).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import drop_frames
from dynamic_pet.dicom_series import load_dynamic_study
from dynamic_pet.errors import InputError
from dynamic_pet.input_function import (InputFunction, input_function_for_study, on_frames, read_input_function_csv,
                                        sampled_integral)
from dynamic_pet.patlak import fit_patlak
from phantom.kinetics import DEFAULT_SCHEDULE, FrameIntegrals, FrameSchedule, InputFunctionModel

GAP_FRAMES = (9, 15)  # demo schedule: 3-4 min (the falling bolus) and 10-12 min
LATE_START_FRAMES = range(14)  # the first 8 min


@pytest.fixture(scope="module")
def complete(app_small_phantom):
    """The complete series: its study, automatic input function and Ki."""
    study = load_dynamic_study(app_small_phantom.folder)
    inp = input_function_for_study(study).input_function
    return study, inp, fit_patlak(study.activity, inp)


def relative_ki_error(ki: np.ndarray, reference: np.ndarray) -> float:
    """Median |Ki / Ki_ref - 1| where the reference Ki is above 0.005 mL/min/mL."""
    inside = reference > 0.005
    return float(np.median(np.abs(ki[inside] / reference[inside] - 1)))


def test_gaps_between_frames_are_bridged(app_study, complete):
    study, inp, fit = complete
    drop_frames(app_study, GAP_FRAMES)
    gapped = load_dynamic_study(app_study.folder)
    result = input_function_for_study(gapped)
    bridged = result.input_function
    assert gapped.shape[0] == study.shape[0] - len(GAP_FRAMES)
    # the areas of the missing frames, interpolated from their neighbours
    missing = np.array([inp.cp_frame_mean[f] * (inp.frame_end_min[f] - inp.frame_start_min[f]) for f in GAP_FRAMES])
    gaps = bridged.uncovered_area[bridged.uncovered_min() > 0]
    assert gaps.size == len(GAP_FRAMES) and np.allclose(gaps, missing, rtol=0.05), (gaps, missing)
    assert bridged.area_under_curve() == pytest.approx(inp.area_under_curve(), rel=0.005)
    assert relative_ki_error(fit_patlak(gapped.activity, bridged).ki, fit.ki) < 0.005
    # counting the gaps as no activity (this module's earlier rule) biases Ki by several per cent
    unbridged = InputFunction(bridged.frame_start_min, bridged.frame_end_min, bridged.cp_frame_mean,
                              uncovered_area=np.zeros_like(bridged.cp_frame_mean))
    assert relative_ki_error(fit_patlak(gapped.activity, unbridged).ki, fit.ki) > 0.02
    assert any("2 gap(s) between frames" in flag for flag in result.quality_flags), result.quality_flags


def test_a_scan_started_after_the_bolus_needs_a_measured_curve(app_study, app_phantom, complete):
    drop_frames(app_study, LATE_START_FRAMES)
    late = load_dynamic_study(app_study.folder)
    assert late.frame_start_min[0] == pytest.approx(8.0, abs=0.01)
    with pytest.raises(InputError, match="starts 8.0 min after the injection") as refused:
        input_function_for_study(late)
    assert refused.value.tag == "(0018,1078) RadiopharmaceuticalStartDateTime"
    assert refused.value.path and str(app_study.folder) in refused.value.path
    # the simulator's true curve (on the complete schedule) covers the first 8 min: same Ki as the complete
    # series with that curve
    truth_csv = app_phantom.folder.parent / "truth" / "input_function.csv"
    study, _, _ = complete
    on_complete = fit_patlak(study.activity, read_input_function_csv(truth_csv, study.frame_start_min,
                                                                     study.frame_end_min)).ki
    measured = read_input_function_csv(truth_csv, late.frame_start_min, late.frame_end_min)
    assert not measured.uncovered_interpolated and measured.uncovered_area[0] > 0
    assert relative_ki_error(fit_patlak(late.activity, measured).ki, on_complete) < 0.002
    # no frame over the bolus: the frame means cannot show where the curve peaks, so no peak flags
    assert input_function_for_study(late, csv_path=truth_csv).quality_flags == []


def test_a_short_lead_in_is_ramped_and_reported(app_study, complete):
    study, inp, fit = complete
    drop_frames(app_study, range(7))  # the scan starts 1.5 min after the injection, after the bolus peak
    late = load_dynamic_study(app_study.folder)
    result = input_function_for_study(late)
    assert result.source == "aorta"  # found without its first pass, at a higher peak level than usual
    assert any("starts 1.5 min after the injection" in flag for flag in result.quality_flags), result.quality_flags
    ramp = result.input_function.uncovered_area[0]
    assert ramp == pytest.approx(0.5 * 1.5 * result.input_function.cp_frame_mean[0], rel=1e-6)
    # the ramp misses most of the peak's area, so Ki is high: the flag's warning is real
    assert np.median(fit_patlak(late.activity, result.input_function).ki[fit.ki > 0.005]
                     / fit.ki[fit.ki > 0.005]) > 1.02


@pytest.fixture(scope="module")
def plasma():
    return InputFunctionModel.random(np.random.default_rng(7), dose_bq=3e8, weight_kg=75.0)


def test_blood_samples_give_the_patlak_integral(plasma):
    """Arterial samples (every 5 s for 3 min, then sparse to 60 min) on a schedule that starts 40 s after the
    injection and misses 4 min in the middle: the Patlak regressor on the late frames within 0.5 % of the
    exact one, where frame means alone (ramp and trapezoid) are off by more."""
    blocks = FrameSchedule.from_blocks(DEFAULT_SCHEDULE)
    keep = (blocks.start_s >= 40) & ~((blocks.start_s >= 600) & (blocks.start_s < 840))
    schedule = FrameSchedule(blocks.start_s[keep], blocks.duration_s[keep])
    exact = FrameIntegrals(plasma, schedule)  # integrates the model on a 1-s grid, gaps and lead-in included
    start, end = schedule.start_s / 60, schedule.end_s / 60
    times = np.concatenate([np.arange(5, 185, 5), [240, 300, 450, 600, 900, 1200, 1800, 2400, 3000, 3600]]) / 60
    sampled = on_frames(sampled_integral(times, plasma(times)), start, end)
    late = start >= 20
    assert np.allclose(sampled.integral_frame_mean()[late], exact.integral_mean[late], rtol=0.005)
    # samples 10 min apart on a convex curve: linear joins overshoot the frame means by up to 1.5 %
    assert np.allclose(sampled.cp_frame_mean[late], exact.cp_mean[late], rtol=0.02)
    from_frames = InputFunction(start, end, exact.cp_mean)
    assert from_frames.uncovered_interpolated and not sampled.uncovered_interpolated
    worst = np.max(np.abs(from_frames.integral_frame_mean()[late] / exact.integral_mean[late] - 1))
    assert 0.005 < worst < 0.1, worst


def test_blood_sample_csv_as_spreadsheets_write_it(plasma, tmp_path):
    """The same blood samples written as this product documents them and as a site's spreadsheet would (minutes
    and kBq/mL named in brackets, ';' between values, a UTF-8 byte-order mark, tabs) give the same curve on the
    study's frames; a row with a value missing is refused, naming the file."""
    schedule = FrameSchedule.from_blocks(DEFAULT_SCHEDULE)
    start, end = schedule.start_s / 60, schedule.end_s / 60
    t_s = np.concatenate([np.arange(5, 185, 5), [240, 300, 450, 600, 900, 1200, 1800, 2400, 3000, 3600]])
    cp = plasma(t_s / 60)

    def read(name: str, header: str, rows, *, sep: str = ",", encoding: str = "utf-8"):
        path = tmp_path / name
        path.write_text("\n".join([header] + [sep.join(v if isinstance(v, str) else f"{v:.10g}" for v in r)
                                               for r in rows]) + "\n",
                        encoding=encoding)
        return read_input_function_csv(path, start, end)

    plain = read("plain.csv", "time_s,cp_bq_per_ml", zip(t_s, cp))
    assert np.allclose(plain.cp_frame_mean, on_frames(sampled_integral(t_s / 60, cp), start, end).cp_frame_mean)
    excel_rows = [*zip(t_s / 60, cp / 1e3)]
    for other in (read("excel.csv", "Time (min);Cp [kBq/mL]", excel_rows, sep=";", encoding="utf-8-sig"),
                  read("excel_blank_rows.csv", "Time (min);Cp [kBq/mL];", [(*r, "") for r in excel_rows]
                       + [("", "", "")] * 3, sep=";"),  # a trailing empty column and empty rows
                  read("tabs.tsv", "time_sec\tcp_MBq/mL", zip(t_s, cp / 1e6), sep="\t")):
        np.testing.assert_allclose(other.cp_frame_mean, plain.cp_frame_mean, rtol=1e-8)
        np.testing.assert_allclose(other.uncovered_area, plain.uncovered_area, rtol=1e-8)
    with pytest.raises(InputError, match="non-numeric value") as err:
        read("short.csv", "time_s,cp_bq_per_ml", [(t, c) for t, c in zip(t_s, cp)][:-1] + [(3600,)])
    assert "short.csv" in str(err.value)


# ------------------------------------------------------------------ a blood-pool region given by the user

def segmentation(study_folder, frame: int, mask: np.ndarray, out, *, labels=("Descending aorta",),
                 upsample: int = 1, frame_of_reference: str | None = None):
    """A DICOM Segmentation made with highdicom on one time frame's instances of the phantom series (as a viewer
    would when a region is drawn on that frame): ``mask`` (Z, Y, X on the study's grid) as every segment,
    optionally on a grid ``upsample`` times finer in-plane (same frame of reference)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from conftest import frame_and_slice

    sources = sorted((ds for ds in (pydicom.dcmread(p) for p in study_folder.glob("*.dcm"))
                      if frame_and_slice(ds)[0] == frame), key=lambda ds: float(ds.ImagePositionPatient[2]))
    pixels = mask.astype(np.uint8)
    if upsample > 1:
        first = sources[0]
        row, col = (np.array(v, float) for v in (first.ImageOrientationPatient[:3], first.ImageOrientationPatient[3:]))
        dy, dx = (float(v) for v in first.PixelSpacing)
        dz = float(sources[1].ImagePositionPatient[2]) - float(first.ImagePositionPatient[2])
        affine = np.eye(4)  # (slice, row, column) -> LPS, highdicom's convention
        affine[:3, 0] = np.cross(row, col) * dz
        affine[:3, 1], affine[:3, 2] = col * dy / upsample, row * dx / upsample
        affine[:3, 3] = np.array(first.ImagePositionPatient, float) - (upsample - 1) / (2 * upsample) * (
            col * dy + row * dx)
        fine = pixels.repeat(upsample, axis=1).repeat(upsample, axis=2)
        pixels = hd.Volume(fine, affine, "PATIENT", frame_of_reference_uid=first.FrameOfReferenceUID)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=label, segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Organ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for k, label in enumerate(labels, start=1)]
    if len(labels) > 1 and not isinstance(pixels, hd.Volume):
        pixels = np.stack([pixels] * len(labels), axis=-1)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=50,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test", manufacturer_model_name="viewer",
        software_versions="1", device_serial_number="1")
    if frame_of_reference:
        seg.FrameOfReferenceUID = frame_of_reference
    seg.save_as(out)
    return out


def test_nifti_and_segmentation_masks_give_the_same_input_function(app_small_phantom, complete, tmp_path):
    from dynamic_pet.parametric_dicom import write_nifti

    study, _, _ = complete
    auto = input_function_for_study(study)
    nifti = write_nifti(auto.mask.astype(np.uint8), study.affine, tmp_path / "aorta.nii.gz")
    seg = segmentation(app_small_phantom.folder, 25, auto.mask, tmp_path / "aorta_seg.dcm")
    for path in (nifti, seg):
        given = input_function_for_study(study, mask_path=path)
        assert given.source == "mask" and np.array_equal(given.mask, auto.mask), path
        assert np.array_equal(given.input_function.cp_frame_mean, auto.input_function.cp_frame_mean)
    one = np.zeros_like(auto.mask)  # a region drawn on one slice only: a single-frame Segmentation
    z = int(np.flatnonzero(auto.mask.any(axis=(1, 2)))[3])
    one[z] = auto.mask[z]
    single = segmentation(app_small_phantom.folder, 25, one, tmp_path / "one_slice.dcm")
    assert np.array_equal(input_function_for_study(study, mask_path=single).mask, one)


def test_nifti_masks_as_other_tools_write_them(complete, tmp_path):
    """0/255, a probability map (from 0.5, as a fractional Segmentation) and the same voxels stored flipped (placed
    by the affine) give the region; an organ label map is refused rather than read as 'everything above 0' (the
    whole body as blood)."""
    from dynamic_pet.parametric_dicom import write_nifti

    study, _, _ = complete
    aorta = input_function_for_study(study).mask
    soft = ndimage.gaussian_filter(aorta.astype(np.float32), 0.7)
    for name, values in (("255", aorta.astype(np.uint8) * 255), ("soft", soft)):
        path = write_nifti(values, study.affine, tmp_path / f"{name}.nii.gz")
        assert np.array_equal(input_function_for_study(study, mask_path=path).mask, values >= (0.5 if name == "soft"
                                                                                                else 1)), name
    labels = np.where(aorta, 6, np.where(study.activity[-1] > 0.2 * study.activity[-1].max(), 5, 0))
    path = write_nifti(labels.astype(np.uint16), study.affine, tmp_path / "organs.nii.gz")
    with pytest.raises(InputError, match=r"2 different values \(5, 6\), a label map") as refused:
        input_function_for_study(study, mask_path=path)
    assert refused.value.path == str(path)
    flipped = study.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])  # voxel x runs the other way (array axis 2)
    flipped[:3, 3] = study.affine[:3, :3] @ [aorta.shape[2] - 1, 0, 0] + study.affine[:3, 3]
    path = write_nifti(aorta[:, :, ::-1].astype(np.uint8), flipped, tmp_path / "flipped.nii.gz")
    assert np.array_equal(input_function_for_study(study, mask_path=path).mask, aorta)


def test_segmentation_on_a_finer_grid_is_resampled(app_small_phantom, complete, tmp_path):
    study, _, _ = complete
    auto = input_function_for_study(study)
    seg = segmentation(app_small_phantom.folder, 0, auto.mask, tmp_path / "fine.dcm", upsample=2)
    given = input_function_for_study(study, mask_path=seg)
    dice = 2 * (given.mask & auto.mask).sum() / (given.mask.sum() + auto.mask.sum())
    assert dice > 0.95, dice
    assert np.allclose(given.input_function.cp_frame_mean, auto.input_function.cp_frame_mean, rtol=0.02)


def test_segmentation_refusals(app_small_phantom, complete, tmp_path):
    study, _, _ = complete
    mask = input_function_for_study(study).mask
    other = segmentation(app_small_phantom.folder, 25, mask, tmp_path / "other.dcm", frame_of_reference="1.2.3.4")
    with pytest.raises(InputError, match="frame of reference is not the study's") as refused:
        input_function_for_study(study, mask_path=other)
    assert refused.value.tag == "(0020,0052) FrameOfReferenceUID" and refused.value.path == str(other)
    organs = segmentation(app_small_phantom.folder, 25, mask, tmp_path / "organs.dcm", labels=("Liver", "Spleen"))
    with pytest.raises(InputError, match=r"none of the Segmentation's 2 segments \(1 'Liver', 2 'Spleen'\)"):
        input_function_for_study(study, mask_path=organs)
    ventricles = segmentation(app_small_phantom.folder, 25, mask, tmp_path / "lv_rv.dcm",
                              labels=("Left ventricle", "Right ventricle"))
    with pytest.raises(InputError, match="2 of the Segmentation's segments name 'ventric'"):
        input_function_for_study(study, mask_path=ventricles)
    atlas = segmentation(app_small_phantom.folder, 25, mask, tmp_path / "atlas.dcm",
                         labels=("Liver", "Pulmonary artery", "Aorta", "Left ventricle"))
    assert np.array_equal(input_function_for_study(study, mask_path=atlas).mask, mask)


def _head_like_study(vessel_radius_mm: float, cavity_radius_mm: float = 0.0):
    """A 2-mm grid with tissue that keeps taking up FDG, a vertical artery of the given radius (too short to be
    taken for the aorta: 4 cm) and optionally a spherical blood cavity, all on the simulator's frame-averaged
    plasma curve and default schedule."""
    schedule = FrameSchedule.from_blocks(DEFAULT_SCHEDULE)
    frames = FrameIntegrals(InputFunctionModel.random(np.random.default_rng(3), 3e8, 75.0), schedule)
    blood_tac, tissue_tac = frames.cp_mean, 0.02 * frames.integral_mean + 0.1 * frames.cp_mean
    z, y, x = np.mgrid[:40, :48, :48] * 2.0  # mm
    body = (y - 48) ** 2 + (x - 48) ** 2 < 40 ** 2
    blood = ((y - 30) ** 2 + (x - 48) ** 2 <= vessel_radius_mm ** 2) & (z >= 20) & (z < 60)
    blood |= (z - 40) ** 2 + (y - 60) ** 2 + (x - 55) ** 2 <= cavity_radius_mm ** 2
    activity = np.where(blood, blood_tac[:, None, None, None], np.where(body, tissue_tac[:, None, None, None], 0.0))
    mid = 0.5 * (schedule.start_s + schedule.end_s) / 60
    return activity.astype(np.float32), mid


def test_a_small_artery_is_not_taken_for_the_heart():
    """No aorta in view and only a carotid-sized artery (4 mm radius) peaking early: refused, naming the size a
    blood pool needs, instead of a partial-volume-depressed curve labelled as the left ventricle."""
    from dynamic_pet.blood_pool import detect_blood_pool
    activity, mid = _head_like_study(vessel_radius_mm=4.0)
    with pytest.raises(InputError, match="at least 12 mm across") as caught:
        detect_blood_pool(activity, mid, (2.0, 2.0, 2.0))
    assert "--input-function" in str(caught.value) and "(7FE0,0010)" in str(caught.value)
    # a blood cavity of 2 cm radius in the same field of view is found, and the artery is left out
    activity, mid = _head_like_study(vessel_radius_mm=4.0, cavity_radius_mm=20.0)
    pool = detect_blood_pool(activity, mid, (2.0, 2.0, 2.0))
    assert pool.kind == "left ventricle" and pool.mask.any()
    z, y, x = np.nonzero(pool.mask)
    assert np.all(((z * 2.0 - 40) ** 2 + (y * 2.0 - 60) ** 2 + (x * 2.0 - 55) ** 2) <= 20.0 ** 2)


def test_an_abdominal_field_of_view_does_not_take_the_liver_for_blood():
    """The demo phantom at 25 % dose through the scanner, cut to its lowest 12 slices: no heart, 48 mm of aorta
    (too short for the aorta's test). The liver peaks early too, but keeps about half its peak: the fallback must
    take blood (the stretch of aorta) or refuse, never the liver, which gave Ki 30 % low."""
    from dynamic_pet.blood_pool import detect_blood_pool
    from phantom.anatomy import LABELS
    from phantom.simulate import simulate_study

    sim = simulate_study("demo", 1000, 0.25)
    labels = sim.anatomy.labels
    heart = np.isin(labels, [LABELS["myocardium"], LABELS["lv_blood"], LABELS["heart_blood"]]).any(axis=(1, 2))
    low = slice(-12, None) if not heart[-12:].any() else slice(0, 12)
    assert not heart[low].any() and (labels[low] == LABELS["liver"]).sum() > 1000
    inp = sim.true_input_function()
    mid = 0.5 * (inp.frame_start_min + inp.frame_end_min)
    pool = detect_blood_pool(sim.activity[:, low], mid, sim.preset.voxel_mm)
    under = labels[low][pool.mask]
    assert not np.any(under == LABELS["liver"]) and np.mean(under == LABELS["aorta"]) > 0.9

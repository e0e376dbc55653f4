"""The whole application on phantom studies: accuracy against truth, DICOM outputs read back and valid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest

from app.__main__ import main
from conftest import NATIVE_CORRECTIONS, legacy_converted, native_enhanced
from dynamic_pet.parametric_dicom import read_nifti
from demo import ki_error_report


@pytest.fixture(scope="module")
def noiseless_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("noiseless") / "study"
    subprocess.run([sys.executable, "-m", "phantom", "--out", str(out), "--preset", "demo", "--seed", "1001",
                    "--noiseless", "--quiet"], check=True)
    return out


@pytest.fixture(scope="module")
def app_output(noiseless_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("app") / "out"
    assert main(["app", "-i", str(noiseless_study / "dicom"), "-o", str(out), "--method", "patlak",
                 "--quiet"]) == 0
    return out


def test_ki_error_and_idif_auc_against_truth(noiseless_study, app_output):
    report = ki_error_report(app_output, noiseless_study / "truth")
    assert len(report["organs"]) >= 2  # myocardium and lesions at least
    assert report["mean_abs_rel_error"] < 0.03, report
    summary = json.loads((app_output / "summary.json").read_text())
    true_curve = np.loadtxt(noiseless_study / "truth" / "input_function.csv", delimiter=",", skiprows=1)
    true_auc = float(np.sum((true_curve[:, 1] - true_curve[:, 0]) / 60 * true_curve[:, 2]))
    idif = summary["input_function"]
    assert idif["source"] in ("aorta", "left ventricle")
    assert abs(idif["auc_bq_min_per_ml"] / true_auc - 1) < 0.05
    assert summary["t_star_min"] >= 20 and len(summary["frames_used"]) >= 3


def test_parametric_maps_read_back_to_nifti_values(app_output, noiseless_study):
    for name in ("ki", "v"):
        nifti, _ = read_nifti(app_output / "nifti" / f"{name}.nii.gz")
        pm_file, = (app_output / "dicom" / f"{name}_pmap").glob("*.dcm")
        volume = hd.imread(str(pm_file)).get_volume()
        values = np.asarray(volume.array, np.float32)
        # highdicom gives (slices, rows, columns) along its own slice direction; match ours by position
        pos = [float(np.asarray(volume.affine)[2, 3]), float((np.asarray(volume.affine) @ [1, 0, 0, 1])[2])]
        if pos[1] < pos[0]:
            values = values[::-1]
        assert np.array_equal(values, nifti), name
    source = pydicom.dcmread(next((noiseless_study / "dicom").glob("*.dcm")), stop_before_pixels=True)
    for path in (app_output / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def _dciodvfy_errors(path) -> list[str]:
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


def test_every_output_instance_passes_dciodvfy(app_output):
    files = sorted((app_output / "dicom").rglob("*.dcm"))
    assert len(files) > 4
    for path in files:
        errors = _dciodvfy_errors(path)
        assert not errors, (path, errors)


def test_shuffled_names_and_varying_slopes_give_the_same_maps(noiseless_study, app_output, tmp_path):
    """Rename files at random into subfolders and rescale stored values per instance: same Ki."""
    rng = np.random.default_rng(0)
    shuffled = tmp_path / "in"
    for k, path in enumerate(sorted((noiseless_study / "dicom").glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        factor = float(rng.choice([0.5, 1.0]))  # halve stored values and double the slope on some files
        if factor != 1.0:
            ds.PixelData = (ds.pixel_array.astype(np.int16) // 2).astype(np.int16).tobytes()
            ds.RescaleSlope = f"{float(ds.RescaleSlope) * 2:.10g}"[:16]
        folder = shuffled / f"d{rng.integers(5)}"
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{rng.integers(1 << 40):x}")
    out = tmp_path / "out"
    assert main(["app", "-i", str(shuffled), "-o", str(out), "--method", "patlak", "--quiet"]) == 0
    ki, _ = read_nifti(out / "nifti" / "ki.nii.gz")
    ref, _ = read_nifti(app_output / "nifti" / "ki.nii.gz")
    assert np.allclose(ki, ref, atol=2e-3 * float(np.abs(ref).max()))


@pytest.mark.parametrize("convert", [legacy_converted, native_enhanced], ids=["legacy-converted", "native"])
def test_enhanced_pet_gives_the_same_maps_and_valid_references(noiseless_study, app_output, tmp_path, convert):
    """The study as one Legacy Converted Enhanced PET instance (highdicom's converter), or as a native Enhanced
    PET one (units in the Real World Value Mapping, decay in the Enhanced PET Corrections module): the same
    Ki, outputs that pass dciodvfy, and references to the multi-frame instance with frame numbers."""
    source = convert(noiseless_study / "dicom", tmp_path / "in")
    out = tmp_path / "out"
    assert main(["app", "-i", str(source.parent), "-o", str(out), "--method", "patlak", "--quiet"]) == 0
    ki, _ = read_nifti(out / "nifti" / "ki.nii.gz")
    ref, _ = read_nifti(app_output / "nifti" / "ki.nii.gz")
    np.testing.assert_array_equal(ki, ref)
    uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    pmap = pydicom.dcmread(next((out / "dicom" / "ki_pmap").glob("*.dcm")))
    derivation = pmap.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence
    assert {item.ReferencedSOPInstanceUID for item in derivation} == {uid}
    assert all(int(item.ReferencedFrameNumber) >= 1 for item in derivation)
    pet = [pydicom.dcmread(p) for p in sorted((out / "dicom" / "ki_pet").glob("*.dcm"))]
    assert {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in pet} == {uid}
    assert len({int(ds.SourceImageSequence[0].ReferencedFrameNumber) for ds in pet}) == len(pet)
    assert not any("RealWorldValueMappingSequence" in ds for ds in pet)  # the source's mapping is not the map's
    if convert is native_enhanced:  # the correction flags become the classic CorrectedImage terms
        assert all(set(ds.CorrectedImage) == {"ATTN", "SCAT", "DTIM", "RAN", "DCAL", "NORM"} for ds in pet)
        assert not any(keyword in ds for ds in pet for keyword in NATIVE_CORRECTIONS)
    for path in [*(out / "dicom" / "ki_pmap").glob("*.dcm"), *sorted((out / "dicom" / "ki_pet").glob("*.dcm"))[:2]]:
        errors = _dciodvfy_errors(path)
        assert not errors, (path, errors)

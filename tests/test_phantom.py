"""The phantom and simulator: kinetics, scanner statistics, reproducibility, command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dynamic_pet.patlak import fit_patlak
from phantom.anatomy import LABELS
from phantom.kinetics import FrameSchedule
from phantom.simulate import simulate_study

LATE = FrameSchedule(start_s=np.array([2400.0, 3000.0]), duration_s=np.array([600.0, 600.0]))


@pytest.fixture(scope="module")
def noiseless():
    return simulate_study("demo", 7, 1.0, noise="none")


def test_patlak_on_noiseless_tacs_recovers_true_ki(noiseless):
    fit = fit_patlak(noiseless.activity, noiseless.true_input_function())
    assert fit.t_star_min >= 20
    high = noiseless.ki > 0.01
    rel = np.abs(fit.ki[high] / noiseless.ki[high] - 1)
    assert rel.mean() < 0.01
    labels = noiseless.anatomy.labels
    for value in np.unique(labels[high]):
        m = labels == value
        if noiseless.ki[m].mean() <= 0.01:
            continue
        assert abs(fit.ki[m].mean() / noiseless.ki[m].mean() - 1) < 0.02, value
    # The remaining bias is Patlak's own (reversible compartment not yet in equilibrium with a
    # bi-exponential plasma curve): it shrinks with a later t*.
    late = fit_patlak(noiseless.activity, noiseless.true_input_function(), t_star_min=30.0)
    assert np.abs(late.ki[high] / noiseless.ki[high] - 1).mean() < 0.6 * rel.mean()
    assert np.allclose(fit.v[labels == LABELS["aorta"]], 1.0, atol=0.02)


def test_reconstruction_preserves_total_activity(noiseless):
    recon = simulate_study("demo", 7, 1.0, noise="noise-free")
    totals_true = noiseless.activity.sum(axis=(1, 2, 3))
    totals_recon = recon.activity.sum(axis=(1, 2, 3))
    active = totals_true > 0.05 * totals_true.max()
    assert active.sum() >= 25
    assert np.all(np.abs(totals_recon[active] / totals_true[active] - 1) < 0.02)
    # the scanner blurs: the reconstruction is not the phantom
    assert np.abs(recon.activity[-1] - noiseless.activity[-1]).mean() > 0.02 * noiseless.activity[-1].mean()


def test_noise_scales_with_inverse_square_root_of_dose():
    mean = simulate_study("demo", 8, 1.0, noise="noise-free", schedule=LATE).activity[-1]
    liver = simulate_study("demo", 8, 1.0, noise="none", schedule=LATE).anatomy.labels == LABELS["liver"]
    from scipy import ndimage
    core = ndimage.binary_erosion(liver, iterations=2)
    cv = {}
    for dose in (1.0, 0.1):
        noisy = simulate_study("demo", 8, dose, noise="poisson", schedule=LATE).activity[-1] / dose
        cv[dose] = float(np.std(noisy[core] - mean[core]) / mean[core].mean())
    ratio = cv[0.1] / cv[1.0]
    assert 2.5 < ratio < 4.0, cv


def test_same_seed_same_study_other_seed_other_study():
    a = simulate_study("demo", 11, 0.1, schedule=LATE)
    b = simulate_study("demo", 11, 0.1, schedule=LATE)
    c = simulate_study("demo", 12, 0.1, schedule=LATE)
    assert np.array_equal(a.activity, b.activity) and np.array_equal(a.ki, b.ki)
    assert not np.array_equal(a.anatomy.labels, c.anatomy.labels)


def test_command_line_writes_dicom_and_truth(tmp_path):
    out = tmp_path / "study"
    subprocess.run([sys.executable, "-m", "phantom", "--out", str(out), "--preset", "demo", "--seed", "5",
                    "--noiseless", "--quiet"], check=True)
    files = list((out / "dicom").glob("*.dcm"))
    assert len(files) == 29 * 48
    for name in ("ki.nii.gz", "v.nii.gz", "labels.nii.gz", "labels.json", "input_function.csv", "truth.json"):
        assert (out / "truth" / name).is_file(), name
    truth = json.loads((out / "truth" / "truth.json").read_text())
    assert truth["seed"] == 5 and truth["noise"] == "none" and len(truth["frame_start_s"]) == 29
    from dynamic_pet.dicom_series import load_dynamic_study
    from dynamic_pet.parametric_dicom import read_nifti
    study = load_dynamic_study(out / "dicom")
    expected = simulate_study("demo", 5, 1.0, noise="none")
    assert np.allclose(study.activity, expected.activity, rtol=1e-3, atol=1e-3 * expected.activity.max())
    ki, affine = read_nifti(out / "truth" / "ki.nii.gz")
    assert np.allclose(affine, study.affine, atol=1e-3)
    assert np.allclose(ki, expected.ki)


def test_infusion_and_later_arrival_reshape_the_input_function_and_keep_its_area():
    from dataclasses import replace

    from phantom.kinetics import InputFunctionModel
    bolus = InputFunctionModel.random(np.random.default_rng(5), 3e8, 75.0)
    t = np.arange(0.0, 120.0, 1 / 600)  # 0.1-s grid, min
    infused, later = replace(bolus, infusion_min=3.0), replace(bolus, tau=bolus.tau + 1.0)
    area = {name: float(curve(t).sum()) / 600 for name, curve in (("bolus", bolus), ("infused", infused))}
    assert abs(area["infused"] / area["bolus"] - 1) < 0.01  # the same activity, delivered over 3 min
    assert 2.5 < t[np.argmax(infused(t))] - bolus.tau < 3.5  # peak about the infusion's end (bolus: 0.25 min)
    assert t[np.argmax(bolus(t))] - bolus.tau < 0.5
    assert infused(t).max() < 0.5 * bolus(t).max()
    np.testing.assert_allclose(later(t + 1.0), bolus(t), rtol=1e-9, atol=1e-9 * bolus(t).max())


def test_command_line_other_schedule_and_infusion_are_written_and_read_back(tmp_path):
    out = tmp_path / "study"
    subprocess.run([sys.executable, "-m", "phantom", "--out", str(out), "--preset", "demo", "--seed", "5",
                    "--noiseless", "--quiet", "--schedule", "4x30,2X120,3x600", "--infusion-min", "2"], check=True)
    from dynamic_pet.dicom_series import load_dynamic_study
    from dynamic_pet.input_function import read_input_function_csv
    study = load_dynamic_study(out / "dicom")
    np.testing.assert_allclose(study.frame_start_min * 60, [0, 30, 60, 90, 120, 240, 360, 960, 1560], atol=0.01)
    np.testing.assert_allclose(study.frame_end_min[-1], 36.0, atol=1e-4)
    truth = json.loads((out / "truth" / "truth.json").read_text())
    assert truth["input_function"]["infusion_min"] == 2.0
    written = read_input_function_csv(out / "truth" / "input_function.csv", study.frame_start_min,
                                      study.frame_end_min)
    bolus = simulate_study("demo", 5, 1.0, noise="none", schedule=FrameSchedule.from_blocks(
        [(4, 30.0), (2, 120.0), (3, 600.0)])).true_input_function()
    assert np.argmax(written.cp_frame_mean) > np.argmax(bolus.cp_frame_mean)  # the infusion peaks later
    bad = subprocess.run([sys.executable, "-m", "phantom", "--out", str(tmp_path / "x"), "--schedule", "4x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "counts x seconds" in bad.stderr

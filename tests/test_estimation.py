"""Method dispatch of the estimation stage on a real (phantom) study, including --samples uncertainty."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dynamic_pet.dicom_series import load_dynamic_study
from dynamic_pet.estimation import estimate, noise_flags
from dynamic_pet.input_function import input_function_for_study
from dynamic_pet.patlak import fit_patlak
from phantom.simulate import simulate_study


@pytest.fixture(scope="module")
def study_and_input(app_small_phantom):
    study = load_dynamic_study(app_small_phantom.folder)
    return study, input_function_for_study(study).input_function


def test_samples_give_mean_and_ki_standard_deviation(study_and_input):
    study, inp = study_and_input
    res = estimate(study, inp, method="reddiff", samples=2, seed=3)
    singles = [estimate(study, inp, method="reddiff", seed=s) for s in (3, 4)]
    assert np.allclose(res.ki, (singles[0].ki + singles[1].ki) / 2, atol=1e-6)
    sd = res.ki_sd
    body = res.fit.quadratic.body_mask
    assert sd is not None and np.all(np.isfinite(sd)) and np.all(sd >= 0)
    assert np.allclose(sd, np.abs(singles[0].ki - singles[1].ki) / np.sqrt(2), atol=1e-6)
    assert sd[body].mean() > 0  # the seeds differ inside the body
    assert set(res.maps()) == {"ki", "v", "ki_sd"}
    noise = res.details["noise_sd_prior_units"]  # a noiseless study: only the residual floor is left
    assert len(noise) == 2 and all(np.isfinite(noise)) and res.details["quality_flags"] == []
    # the phantom's voxels are cubic, so the prior cuts slices along all three axes in turn
    assert study.spacing_mm[0] == pytest.approx(study.spacing_mm[1]) and res.details["slice_axes"] == [0, 1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (CI has none; run where one is lent)")
@pytest.mark.parametrize("method", ["reddiff", "hqs"])
def test_cuda_gives_the_cpu_answer(study_and_input, method):
    """Same study, seed and weights on the GPU and the CPU: the maps agree within 1e-3 of each map's body
    maximum (float32; the noise is drawn on the CPU for both), the product's stated CPU-GPU tolerance. The
    loaded phantom is noiseless, where the samplers barely move the maps, so noise of 15 % of each frame's
    mean is added so that the prior's part is large against that tolerance (measured on the CPU: the maps move
    from the conventional ones by up to 3-4 % of the maximum for Ki and 17-20 % for V)."""
    study, inp = study_and_input
    rng = np.random.default_rng(0)
    frame_mean = study.activity.mean(axis=(1, 2, 3), keepdims=True)
    noisy = dataclasses.replace(study, activity=study.activity + 0.15 * frame_mean * rng.standard_normal(
        study.activity.shape, dtype=np.float32))
    cpu, gpu = (estimate(noisy, inp, method=method, seed=5, device=d) for d in ("cpu", "cuda"))
    assert gpu.details["device"] == "cuda"
    assert gpu.details["prior_weights_sha256"] == cpu.details["prior_weights_sha256"]
    body = cpu.fit.quadratic.body_mask.astype(bool)
    for a, b, conventional in ((gpu.ki, cpu.ki, cpu.fit.ki), (gpu.v, cpu.v, cpu.fit.v)):
        assert a.dtype == np.float32 and np.all(np.isfinite(a))
        scale = np.abs(b[body]).max()
        assert np.abs(a - b)[body].max() < 1e-3 * scale
        assert np.abs(b - conventional)[body].max() > 1e-2 * scale  # the prior's part: 10x the tolerance at least


def test_unknown_method_is_refused(study_and_input):
    study, inp = study_and_input
    with pytest.raises(ValueError, match="method must be one of"):
        estimate(study, inp, method="logan")


def test_noise_level_follows_the_counts_and_flags_studies_noisier_than_validated():
    """The same phantom at 25 %, 5 % and 1 % of the full dose: the conventional maps' noise in the prior's units
    grows as 1 / sqrt(counts) (measured: Ki 0.096, 0.206, 0.439; V 0.104, 0.211, 0.376); 25 % and 5 % lie
    inside what the samplers' settings were validated on, 1 % does not and is flagged."""
    from dynamic_pet.diffusion_prior import DiffusionPrior
    from dynamic_pet.samplers import noise_sd

    prior = DiffusionPrior(None, device="cpu")
    noise = {}
    for dose in (0.25, 0.05, 0.01):
        study = simulate_study("demo", 1090, dose)
        noise[dose] = noise_sd(prior, fit_patlak(study.activity, study.true_input_function()).quadratic)
    for low, high in ((0.05, 0.25), (0.01, 0.05)):  # five times fewer counts each
        assert noise[low][0] / noise[high][0] == pytest.approx(np.sqrt(5), rel=0.1)  # Ki
        # V's scale follows its robust maximum, which noise inflates at the lowest dose: a little less than Ki
        assert 1.5 < noise[low][1] / noise[high][1] < 1.1 * np.sqrt(5)
    assert noise_flags(noise[0.25]) == [] and noise_flags(noise[0.05]) == []
    flag, = noise_flags(noise[0.01])
    assert "--method patlak" in flag and f"{max(noise[0.01]):.2f}" in flag

"""Method dispatch of the estimation stage on a real (phantom) study, including --samples uncertainty."""

from __future__ import annotations

import numpy as np
import pytest

from dynamic_pet.dicom_series import load_dynamic_study
from dynamic_pet.estimation import estimate
from dynamic_pet.input_function import input_function_for_study


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
    # the phantom's voxels are cubic, so the prior cuts slices along all three axes in turn
    assert study.spacing_mm[0] == pytest.approx(study.spacing_mm[1]) and res.details["slice_axes"] == [0, 1, 2]


def test_unknown_method_is_refused(study_and_input):
    study, inp = study_and_input
    with pytest.raises(ValueError, match="method must be one of"):
        estimate(study, inp, method="logan")

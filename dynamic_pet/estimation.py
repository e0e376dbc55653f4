"""Parametric estimation by method: conventional Patlak, or Patlak with the diffusion prior.

``patlak``: voxel-wise weighted least squares (:mod:`dynamic_pet.patlak`).
``reddiff`` / ``hqs``: the same Patlak data term solved with the diffusion prior for Ki and V
(:mod:`dynamic_pet.samplers`), started from the conventional estimate. With ``samples > 1`` the sampler
runs with that many seeds and the maps are their mean, with the Ki standard deviation as uncertainty.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .input_function import InputFunction
from .patlak import PatlakFit, fit_patlak
from .study import DynamicStudy

log = logging.getLogger(__name__)

METHODS = ("patlak", "reddiff", "hqs")


@dataclass
class ParametricResult:
    method: str
    ki: np.ndarray
    v: np.ndarray
    fit: PatlakFit
    ki_sd: np.ndarray | None = None
    details: dict = field(default_factory=dict)

    def maps(self) -> dict[str, np.ndarray]:
        out = {"ki": self.ki, "v": self.v}
        if self.ki_sd is not None:
            out["ki_sd"] = self.ki_sd
        return out


def estimate(study: DynamicStudy, inp: InputFunction, *, method: str = "patlak", t_star_min: float | None = None,
             device: str = "cpu", samples: int = 1, seed: int = 0, model_dir: str | Path | None = None,
             progress=None) -> ParametricResult:
    """Ki and V maps of ``study`` by ``method`` (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, given {method!r}")
    fit = fit_patlak(study.activity, inp, half_life_min=study.half_life_s / 60.0, t_star_min=t_star_min)
    if method == "patlak":
        return ParametricResult("patlak", fit.ki, fit.v, fit)
    from .diffusion_prior import DiffusionPrior  # torch and the network only when a prior is asked for
    from . import samplers

    prior = DiffusionPrior(model_dir, device=device)
    run = samplers.SAMPLERS[method]
    t0 = time.perf_counter()
    axes = samplers.slice_axes(study.spacing_mm)
    draws = [run(prior, fit.quadratic, axes=axes, seed=seed + k, device=device, progress=progress)
             for k in range(max(1, samples))]
    ki = np.mean([d[0] for d in draws], axis=0).astype(np.float32)
    v = np.mean([d[1] for d in draws], axis=0).astype(np.float32)
    ki_sd = np.std([d[0] for d in draws], axis=0, ddof=1).astype(np.float32) if samples > 1 else None
    details = {"samples": max(1, samples), "seed": seed, "device": device,
               "prior_weights_sha256": prior.weights_sha256, "slice_axes": list(axes),
               "sampler_seconds": round(time.perf_counter() - t0, 2)}
    return ParametricResult(method, ki, v, fit, ki_sd, details)

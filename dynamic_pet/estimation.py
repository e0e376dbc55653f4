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

    prior = DiffusionPrior(model_dir, device=device)
    t0 = time.perf_counter()
    draws, grid = diffusion_draws(prior, method, study.activity, fit, study.spacing_mm,
                                  seeds=[seed + k for k in range(max(1, samples))], device=device, progress=progress)
    ki = np.mean([d[0] for d in draws], axis=0).astype(np.float32)
    v = np.mean([d[1] for d in draws], axis=0).astype(np.float32)
    ki_sd = np.std([d[0] for d in draws], axis=0, ddof=1).astype(np.float32) if samples > 1 else None
    details = {"samples": max(1, samples), "seed": seed, "device": device,
               "prior_weights_sha256": prior.weights_sha256, **grid,
               "sampler_seconds": round(time.perf_counter() - t0, 2)}
    return ParametricResult(method, ki, v, fit, ki_sd, details)


def noise_flags(noise_sd) -> list[str]:
    """A warning when the conventional maps are noisier than any validation study of the samplers' defaults."""
    from .samplers import VALIDATED_NOISE_SD

    worst = max(noise_sd)
    if worst <= VALIDATED_NOISE_SD:
        return []
    return [f"Patlak maps noisier than the diffusion settings were validated for (median SD Ki {noise_sd[0]:.2f}, "
            f"V {noise_sd[1]:.2f} in the prior's units; validated up to {VALIDATED_NOISE_SD:.2f}, phantoms at 5 % "
            "dose): compare with --method patlak, or use longer late frames or an earlier --t-star"]


def diffusion_draws(prior, method: str, activity: np.ndarray, fit: PatlakFit, spacing_mm, *, seeds, device=None,
                    progress=None) -> tuple[list, dict]:
    """(Ki, V) maps of the ``method`` sampler on the study's grid, one pair per seed, and how they were made
    (grid, slicing, the noise the sampler faced and its :func:`noise_flags`).

    Each draw keeps the conventional estimate's regional means (:func:`~dynamic_pet.samplers.keep_regional_means`).
    Where the study's voxels are finer than the prior's pixels, the data term is refitted and sampled on the
    prior's grid and the maps interpolated back (:mod:`dynamic_pet.prior_grid`).
    """
    from . import prior_grid, samplers

    shape = prior_grid.prior_grid_shape(activity.shape[1:], spacing_mm, prior.config.pixel_mm[0])
    quad, spacing = fit.quadratic, tuple(float(s) for s in spacing_mm)
    if shape is not None:
        quad = prior_grid.quadratic_on_grid(activity, fit, shape)
        spacing = tuple(s * n / m for s, n, m in zip(spacing, activity.shape[1:], shape))
        log.info("prior grid: %s voxels of %s mm (study %s of %s mm)", "x".join(map(str, shape)),
                 "x".join(f"{s:.2f}" for s in spacing), "x".join(map(str, activity.shape[1:])),
                 "x".join(f"{s:.2f}" for s in spacing_mm))
    axes = samplers.slice_axes(spacing)
    noise = samplers.noise_sd(prior, quad)
    log.info("noise of the conventional maps in the prior's units: Ki %.3f, V %.3f", *noise)
    flags = noise_flags(noise)
    for flag in flags:
        log.warning(flag)
    draws = []
    for seed in seeds:
        maps = samplers.SAMPLERS[method](prior, quad, axes=axes, seed=seed, device=device, progress=progress)
        maps = samplers.keep_regional_means(maps, quad, spacing)
        if shape is not None:
            maps = prior_grid.to_study_grid(maps, (fit.ki, fit.v), fit.quadratic.body_mask)
        draws.append(maps)
    grid = {"slice_axes": list(axes), "prior_grid_shape": list(shape) if shape else None,
            "prior_grid_spacing_mm": [round(s, 3) for s in spacing],
            "noise_sd_prior_units": [round(n, 4) for n in noise], "quality_flags": flags,
            "regional_mean_sigma_mm": samplers.REGIONAL_MEAN_SIGMA_MM}
    return draws, grid

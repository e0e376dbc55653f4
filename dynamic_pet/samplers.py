"""Diffusion-prior posterior samplers for Patlak Ki and V: RED-diff and HQS (DiffPIR).

Both take a noise predictor (:class:`~dynamic_pet.diffusion_prior.DiffusionPrior`) and the Patlak data term
as a per-voxel quadratic (:class:`~dynamic_pet.patlak.PatlakQuadratic`) and know nothing else of the physics.

Scaled space. The prior was trained on static PET slices; Ki and V are each mapped into its value range [lo, hi]
by a robust maximum, x = lo + (hi - lo) * theta / s with s = (99.9th percentile in the body) / level (each map
smoothed by a 1-voxel Gaussian before the percentile, so that noise, which grows as dose falls, does not inflate
the maximum and squeeze the structures into a narrower range), so each map's robust maximum lands where the
training volumes' did (``level`` = ``prior.config.robust_level``, a fraction of the range; the handbook's
prototype used 0.8 with its own training normalisation). Outside the body x is held at lo (the training
background). Ki and V run as one batch of 2D slices, cropped to the body's bounding box; the slices are cut
across a different volume axis (axial, coronal, sagittal) from step to step where the voxels are near-cubic, so
the 2D prior acts in all three directions. With theta = a (x - lo), a = s / (hi - lo), the data term becomes
D(x) = 0.5 (x - x_hat)^T P (x - x_hat) per voxel, P = inv_var * diag(a) gram diag(a): P is the inverse
covariance of the conventional estimate in scaled units; both samplers give the prior's denoised estimate the
precision lam / sigmabar_t^2 in the same units (:func:`prior_precision`), so the prior's pull weakens where the
data are good (higher dose).

Outside the body the conventional estimate theta_hat is returned unchanged.

Regional means from the data (:func:`keep_regional_means`): the caller then gives back to each map the
difference between the conventional estimate and the sampler's, smoothed by a broad Gaussian, so that over
regions of a few centimetres the maps keep the data's mean and the prior shapes detail and noise only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from .patlak import PatlakQuadratic

log = logging.getLogger(__name__)

Progress = Callable[[int, int, int], None]  # (step index from 1, number of steps, diffusion step t)


@dataclass(frozen=True)
class RedDiffDefaults:
    """RED-diff defaults, chosen on validation phantom seeds 1090-1091 (demo preset, 25% and 5% dose) with the
    slices cut along all three axes in turn (:func:`slice_axes`); PSNR is Ki / V against the full-count Patlak
    reference (the held-out seeds are in ``benchmarks/results/quality.md``).

    The prior's denoised estimate gets the precision lam_t = lam / sigmabar_t^2, sigmabar_t^2 = (1 - ab_t) / ab_t,
    as HQS's rho_t. With that weighting a 'newton' step of length 1 is HQS's data step: mu_new = (P + lam_t I)^-1
    (P x_hat + lam_t x0_hat(x_t)), and since RED-diff noises mu afresh at every step (HQS's zeta = 1), RED-diff
    at lr = 1 on HQS's schedule and weight gives HQS's maps to the last digit. What is RED-diff's own is the
    step length: at lr < 1, mu is a running average of those solutions over the noise draws, which lowers the
    variance that each step's single draw of eps leaves in the estimate.

    14 steps from t = 30 to 0 at lam = 1 and lr = 0.7, mean over the four validation cases: Ki 37.62 / V 27.09
    dB, against 36.52 / 25.92 for the previous defaults (6 steps from t = 40 to 10 at lam = 4) and 37.52 / 26.99
    for HQS; seed 1090 at 5% dose: 38.02 / 25.81 against 36.46 / 23.89. On the same four cases, starting at
    t = 40 or 50, lr 0.8, lam 0.5, or 20 steps at lr 0.6 were 0.03-0.43 dB lower on Ki and 0.14-0.44 dB on V;
    on seed 1090, 10 steps from t = 25 (lr 0.6 or 0.8, lam 1 or 2) were lower still. On torso seed 1090 at 5%
    (not used to choose): 33.96 / 26.10 dB, against 31.14 / 23.12 before and 33.31 / 25.46 for HQS. Mean lesion
    Ki bias against the reference on the validation cases: -11% (HQS -10%).

    Attributes
    ----------
    steps: network evaluations (descending t, evenly spaced from t_max to t_min).
    lam: prior weight relative to 1 / sigmabar_t^2. The regulariser gradient lam_t w_t (eps_hat - eps) with
        w_t = sigmabar_t (Mardani et al.) equals lam_t (mu - x0_hat(x_t)), so lam_t is a precision comparable
        with P.
    lr: step length of 'newton'; 1 is the exact minimiser of the data term plus lam_t/2 |mu - x0_hat|^2.
    t_max, t_min: diffusion steps visited.
    adam_lr: step length of the paper's Adam update (10 steps at 0.02 reached 36.5 dB, Newton 38.4 in 6,
        both with axial slices only and an earlier prior).
    """

    steps: int = 14
    lam: float = 1.0
    lr: float = 0.7
    t_max: int = 30
    t_min: int = 0
    adam_lr: float = 0.02


@dataclass(frozen=True)
class HqsDefaults:
    """HQS / DiffPIR defaults: rho_t = lam / sigmabar_t^2, sigmabar_t^2 = (1 - ab_t) / ab_t (the data term
    is already divided by each voxel's noise variance, so DiffPIR's sigma_n^2 is 1 here).

    Chosen like :class:`RedDiffDefaults` (Ki / V dB, 25% and 10% dose): t_start 150 / 100 / 60 / 40 / 25: 38.2 /
    39.2 / 39.8 / 40.2 / 40.6 and 36.1 / 37.1 / 37.8 / 38.3 / 38.7 Ki; lam 1 beat 0.5, 1.5, 2 and 3; zeta 1 beat 0.5
    and 0.7; 15 or 20 steps did not beat 10 (then; see below). Slicing along the three axes in turn rather than
    axially only: +1.3 / +1.5 dB at no extra cost (averaging the three directions every step: the same at three
    times the cost). No better, at 5% and 25% dose: a separate V weight (0.5 / 0.7 / 2 / 4 with Ki at 1: -0.1 to
    -1.2 dB V), and a noise variance proportional to the smoothed late activity instead of the fit residuals (-0.1
    to -0.2 dB).

    Once :func:`keep_regional_means` restored the data's local means, the schedule was chosen again (validation
    demo 1090-1091 and torso 1090 at 5% dose, demo and torso 1090 at 25%; margin in dB over the better of the
    tuned Gaussian and HYPR-LR against the full-count reference, mean Ki / V at 5% | at 25%; lesion Ki bias
    against the reference, mean of all five): the former 10 steps from t = 25: +2.78 / +1.91 | +3.12 / +3.41,
    -9.5%; 14 steps from t = 25: +3.45 / +2.57 | +3.27 / +3.53, -10.9%; from t = 30 (chosen, RED-diff's schedule,
    so that RED-diff at lr = 1 is this HQS): +3.72 / +2.72 | +3.26 / +3.50, -11.8%; from t = 35: +3.87 / +2.79 |
    +3.21 / +3.45, -12.6%; from t = 45: +3.97 / +2.79 at 5% only, -15.8% there; 20 steps from t = 35: +3.99 /
    +2.82 at 5%, at 1.4 times the time. Starting where sigmabar_t equals the measured noise (:func:`noise_sd`; t =
    61-75 at 5% dose) smoothed more and lost lesion Ki (-15.1%) for no gain in V (+2.65 at 5%).
    """

    steps: int = 14
    lam: float = 1.0
    t_start: int = 30
    zeta: float = 1.0


RED_DIFF = RedDiffDefaults()
HQS = HqsDefaults()
ROBUST_PERCENTILE = 99.9
CROP_MARGIN = 4
# The robust maximum is taken after this Gaussian, so noise inflates it less. On the phantoms' V at 5% dose it
# still sits 23-28% above the full-dose value (Ki 5-13%); 2 or 3 voxels make it dose-invariant but cost 0.5-2.6
# dB at 5% dose on validation seeds 1090-1091 (+-0.3 dB at 25%): the larger scale, i.e. a weaker prior
# relative to the data, is what suits the noisiest maps, so 1 voxel stays.
SCALE_SMOOTH_VOXELS = 1.0
# The largest noise (:func:`noise_sd`, Ki or V) among the validation studies the defaults above were chosen on:
# torso seed 1090 at 5% dose, Ki 0.256 (demo seeds 1090-1091: 0.04-0.06 at full dose, 0.17-0.23 at 5%). The
# held-out phantoms at 5% dose reach 0.26 (V), at 2% dose 0.30-0.33. Noisier maps are flagged: the prior then
# shapes them more than it did on any study its settings were checked on.
VALIDATED_NOISE_SD = 0.26
MAX_ANISOTROPY = 1.3
# Width (Gaussian sigma) over which :func:`keep_regional_means` restores the data's mean. On validation seeds
# 1090-1091 (demo, 4 mm voxels) the sampler pulled the high-V organs' means down (V in the liver -6 %, the aorta
# -16 % at 5 % dose; the conventional estimate: -5 % and -3 %). Putting the low-pass residual back gave,
# at 5 % / 25 % dose, RED-diff +0.28 / +0.48 dB Ki and +0.22 / +0.42 dB V, HQS +0.26 / +0.48 and +0.16 / +0.39,
# with sigma 3.5 voxels (3 or 4: within 0.1 dB; 6: up to 0.2 dB less; 2, on seed 1090 at 5 %: worse than none, as
# the residual then carries the noise back). Large-lesion Ki is unchanged (within 0.2 %). Applied at every sampler
# step instead of once at the end it cost 0.1-0.3 dB at 5 % dose, and weighting the residual by the 2x2 data
# precision (a local least-squares offset) was 0.1 dB below the plain mean.
REGIONAL_MEAN_SIGMA_MM = 14.0


@dataclass
class _Scaled:
    """The problem in the prior's scaled space, on the compute device, cropped to the body's box."""

    x_hat: torch.Tensor  # (2, Z, H, W)
    p00: torch.Tensor  # (Z, H, W) data precision entries in scaled units
    p01: torch.Tensor
    p11: torch.Tensor
    body: torch.Tensor  # (Z, H, W) bool
    lo: float
    a: tuple[float, float]  # theta = a * (x - lo)
    box: tuple[slice, slice]

    def hess(self, v: torch.Tensor) -> torch.Tensor:
        """P v, per voxel."""
        return torch.stack([self.p00 * v[0] + self.p01 * v[1], self.p01 * v[0] + self.p11 * v[1]])

    def solve(self, c: float, r: torch.Tensor) -> torch.Tensor:
        """(P + c I)^-1 r, per voxel (2x2 closed form)."""
        d00, d11 = self.p00 + c, self.p11 + c
        det = d00 * d11 - self.p01 ** 2
        return torch.stack([d11 * r[0] - self.p01 * r[1], d00 * r[1] - self.p01 * r[0]]) / det

    def hold_background(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.body, x, torch.full_like(x, self.lo))


def robust_scale(values: np.ndarray, body: np.ndarray, level: float, smooth_voxels: float = 0.0) -> float:
    """s such that theta / s puts the body's 99.9th percentile (after optional smoothing) at ``level``."""
    v = ndimage.gaussian_filter(values.astype(np.float32), smooth_voxels) if smooth_voxels > 0 else values
    inside = v[body]
    top = float(np.percentile(inside, ROBUST_PERCENTILE)) if inside.size else 0.0
    if top <= 0:  # degenerate map: fall back to the largest magnitude, or unity
        top = float(np.abs(inside).max()) if inside.size and np.abs(inside).max() > 0 else 1.0
    return top / level


def _body_box(body: np.ndarray) -> tuple[slice, slice]:
    """Y, X bounding box of the body over all slices plus a margin."""
    ys, xs = np.flatnonzero(body.any(axis=(0, 2))), np.flatnonzero(body.any(axis=(0, 1)))
    if ys.size == 0:
        return slice(0, body.shape[1]), slice(0, body.shape[2])
    y0, y1 = max(ys[0] - CROP_MARGIN, 0), min(ys[-1] + 1 + CROP_MARGIN, body.shape[1])
    x0, x1 = max(xs[0] - CROP_MARGIN, 0), min(xs[-1] + 1 + CROP_MARGIN, body.shape[2])
    return slice(int(y0), int(y1)), slice(int(x0), int(x1))


def scale_problem(prior, quad: PatlakQuadratic, device: torch.device, dtype: torch.dtype) -> _Scaled:
    """Map the Patlak quadratic into the prior's value range (see the module docstring)."""
    lo, hi = prior.value_range
    body = quad.body_mask.astype(bool)
    level = prior.config.robust_level
    s = tuple(robust_scale(quad.theta_hat[k], body, level, SCALE_SMOOTH_VOXELS) for k in range(2))
    a = (s[0] / (hi - lo), s[1] / (hi - lo))
    box = _body_box(body)
    crop = (slice(None),) + box
    x_hat = np.stack([lo + quad.theta_hat[k][crop] / a[k] for k in range(2)])
    x_hat = np.where(body[crop][None], x_hat, lo)
    iv, g = quad.inv_var[crop].astype(np.float64), quad.gram
    t = lambda arr: torch.as_tensor(np.ascontiguousarray(arr), device=device, dtype=dtype)  # noqa: E731
    return _Scaled(x_hat=t(x_hat), p00=t(iv * g[0, 0] * a[0] ** 2), p01=t(iv * g[0, 1] * a[0] * a[1]),
                   p11=t(iv * g[1, 1] * a[1] ** 2), body=torch.as_tensor(body[crop], device=device),
                   lo=float(lo), a=a, box=box)


def noise_sd(prior, quad: PatlakQuadratic) -> tuple[float, float]:
    """The noise the samplers face: the median over the body of the standard deviation of the conventional Ki
    and V (the diagonal of P^-1) in the prior's units, where the prior's own noise at step t is sigmabar_t
    (sigmabar = 0.11 at t = 30). It falls as 1 / sqrt(counts); compare with :data:`VALIDATED_NOISE_SD`."""
    prob = scale_problem(prior, quad, torch.device("cpu"), torch.float32)
    det = prob.p00 * prob.p11 - prob.p01 ** 2
    ki, v = (float(torch.median(torch.sqrt(p / det)[prob.body])) if bool(prob.body.any()) else 0.0
             for p in (prob.p11, prob.p00))
    return ki, v


def unscale(x: torch.Tensor, prob: _Scaled, quad: PatlakQuadratic) -> tuple[np.ndarray, np.ndarray]:
    """Back to physical units; theta_hat outside the body and outside the cropped box."""
    out = quad.theta_hat.astype(np.float32).copy()
    xs = x.detach().to("cpu", torch.float64).numpy()
    crop = (slice(None),) + prob.box
    body = quad.body_mask[crop].astype(bool)
    for k in range(2):
        out[k][crop] = np.where(body, prob.a[k] * (xs[k] - prob.lo), out[k][crop])
    return out[0], out[1]


def _eps(prior, x: torch.Tensor, t: int, axis: int = 0) -> torch.Tensor:
    """Noise prediction for the (2, Z, H, W) stack of Ki and V, cut into 2D slices across volume ``axis``
    (0 axial, 1 coronal, 2 sagittal) and run as one batch of slices."""
    moved = x.movedim(axis + 1, 1)  # the slicing axis first after the Ki/V channel (a no-op for axial)
    out = prior.eps(moved.reshape(-1, 1, *moved.shape[-2:]), t).reshape(moved.shape)
    return out.movedim(1, axis + 1)


def slice_axes(spacing_mm: Sequence[float] | None, max_anisotropy: float = MAX_ANISOTROPY) -> tuple[int, ...]:
    """Volume axes the 2D prior cuts slices across, in turn from step to step: all three (axial, coronal,
    sagittal) when the voxels are near-cubic, so that every direction gets the prior's smoothing at no extra
    cost per step; axial only when the largest voxel side exceeds the smallest by more than
    ``max_anisotropy`` (coronal slices of thick-slice data would not look like the prior's training slices)
    or when the spacing is unknown."""
    if spacing_mm is None:
        return (0,)
    sp = [float(v) for v in spacing_mm]
    return (0, 1, 2) if max(sp) <= max_anisotropy * min(sp) else (0,)


def _noise(gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn in float32 on the CPU and moved to ``like``'s device and dtype: the same
    stream for any device and dtype, so a seed gives the same answer on CPU and GPU (up to arithmetic)."""
    return torch.randn(like.shape, generator=gen, dtype=torch.float32).to(like)


def _setup(prior, quad: PatlakQuadratic, seed: int, device) -> tuple[_Scaled, torch.Generator]:
    dev = torch.device(device) if device is not None else prior.device
    gen = torch.Generator()  # on the CPU whatever the device (see _noise)
    gen.manual_seed(int(seed))
    return scale_problem(prior, quad, dev, prior.dtype), gen


def _report(progress: Progress | None, name: str, i: int, n: int, t: int, t0: float) -> None:
    log.info("%s step %d/%d (t = %d), %.1f s", name, i, n, t, time.perf_counter() - t0)
    if progress is not None:
        progress(i, n, t)


def prior_precision(lam: float, ab: float) -> float:
    """lam / sigmabar_t^2 with sigmabar_t^2 = (1 - ab_t) / ab_t: the weight of the prior's denoised estimate at
    step t, against the data precision P (RED-diff's lam_t, HQS's rho_t)."""
    return lam * ab / (1 - ab)


def descending_steps(t_max: int, t_min: int, steps: int) -> list[int]:
    """``steps`` diffusion steps evenly spaced from t_max down to t_min (rounded, duplicates kept)."""
    return [int(round(t)) for t in np.linspace(t_max, t_min, steps)]


def red_diff(prior, quad: PatlakQuadratic, *, steps: int = RED_DIFF.steps, lam: float = RED_DIFF.lam,
             lr: float | None = None, optimizer: str = "newton", t_schedule: Sequence[int] | None = None,
             axes: Sequence[int] = (0,), seed: int = 0, device=None,
             progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RED-diff (Mardani, Song, Kautz, Vahdat, ICLR 2024) on the Patlak quadratic.

    mu starts at theta_hat (scaled). At each step t (descending): x_t = sqrt(ab) mu + sqrt(1 - ab) eps,
    eps_hat = prior.eps(x_t, t) (no back-propagation), gradient g = P (mu - x_hat) + lam_t w_t (eps_hat - eps)
    with w_t = sqrt(1 - ab) / sqrt(ab) and lam_t = lam ab / (1 - ab). 'adam': the paper's Adam step on g.
    'newton': mu -= lr (P + lam_t I)^-1 g, the per-voxel 2x2 Hessian of the data term plus the regulariser's
    scalar curvature lam_t.

    Parameters
    ----------
    prior: a :class:`~dynamic_pet.diffusion_prior.DiffusionPrior`.
    quad: the Patlak data term.
    steps, t_schedule: number of steps, evenly spaced from ``RED_DIFF.t_max`` to ``t_min``, or explicit
        descending diffusion steps (then ``steps`` is ignored).
    lam: prior weight relative to 1 / sigmabar_t^2 (see :class:`RedDiffDefaults`).
    lr: step length; default ``RED_DIFF.lr`` (newton) or ``RED_DIFF.adam_lr`` (adam).
    axes: volume axes the 2D prior slices across, taken in turn from step to step (:func:`slice_axes`):
        (0,) axial only; (0, 1, 2) axial, coronal, sagittal (for near-cubic voxels).
    seed: seed of the noise, drawn on the CPU for every device: the same seed gives the same result on CPU
        and, up to floating-point arithmetic, on GPU.
    device: compute device; default the prior's.
    progress: called as progress(step, n_steps, t) after every step.

    Returns
    -------
    Ki, V: float32 (Z, Y, X) in the units of ``quad.theta_hat``.
    """
    if optimizer not in ("newton", "adam"):
        raise ValueError(f"optimizer must be 'newton' or 'adam', given {optimizer!r}")
    ts = list(t_schedule) if t_schedule is not None else descending_steps(RED_DIFF.t_max, RED_DIFF.t_min, steps)
    lr = lr if lr is not None else (RED_DIFF.lr if optimizer == "newton" else RED_DIFF.adam_lr)
    prob, gen = _setup(prior, quad, seed, device)
    mu = prob.x_hat.clone()
    adam = torch.optim.Adam([mu], lr=lr, betas=(0.9, 0.99)) if optimizer == "adam" else None
    t0 = time.perf_counter()
    for i, t in enumerate(ts, 1):
        ab = float(prior.alphas_cumprod[t])
        eps = _noise(gen, mu)
        eps_hat = _eps(prior, ab ** 0.5 * mu + (1 - ab) ** 0.5 * eps, t, axes[(i - 1) % len(axes)])
        lam_t = prior_precision(lam, ab)
        g = prob.hess(mu - prob.x_hat) + lam_t * ((1 - ab) / ab) ** 0.5 * (eps_hat - eps)
        if adam is None:
            mu = mu - lr * prob.solve(lam_t, g)
        else:
            mu.grad = g
            adam.step()
        with torch.no_grad():
            mu.copy_(prob.hold_background(mu))
        _report(progress, "RED-diff", i, len(ts), t, t0)
    return unscale(mu, prob, quad)


def hqs(prior, quad: PatlakQuadratic, *, steps: int = HQS.steps, lam: float = HQS.lam,
        t_start: int = HQS.t_start, zeta: float = HQS.zeta, axes: Sequence[int] = (0,), seed: int = 0,
        device=None, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Half-quadratic splitting with a diffusion denoiser (DiffPIR, Zhu et al., CVPRW 2023).

    Start from theta_hat (scaled) noised to ``t_start``. Per step t (evenly spaced from t_start to 0):
    x0_hat = (x_t - sqrt(1 - ab) eps_hat) / sqrt(ab); data step, closed form per voxel,
    x0 = (P + rho_t I)^-1 (P x_hat + rho_t x0_hat) with rho_t = lam / sigmabar_t^2,
    sigmabar_t^2 = (1 - ab_t) / ab_t; re-noise to the next t with the effective noise of x_t given x0,
    mixed with fresh noise: sqrt(1 - zeta) eps_eff + sqrt(zeta) eps_new.

    Parameters
    ----------
    prior, quad, axes, seed, device, progress: as for :func:`red_diff`.
    steps: network evaluations.
    lam: prior weight relative to 1 / sigmabar_t^2.
    t_start: diffusion step the Patlak maps are noised to.
    zeta: share of fresh noise when re-noising (0 deterministic DDIM-like, 1 fully stochastic).

    Returns
    -------
    Ki, V: float32 (Z, Y, X) in the units of ``quad.theta_hat``.
    """
    ts = descending_steps(t_start, 0, steps)
    prob, gen = _setup(prior, quad, seed, device)
    ab = float(prior.alphas_cumprod[ts[0]])
    x = ab ** 0.5 * prob.x_hat + (1 - ab) ** 0.5 * _noise(gen, prob.x_hat)
    t0 = time.perf_counter()
    for i, t in enumerate(ts, 1):
        ab = float(prior.alphas_cumprod[t])
        x0 = (x - (1 - ab) ** 0.5 * _eps(prior, x, t, axes[(i - 1) % len(axes)])) / ab ** 0.5
        rho = prior_precision(lam, ab)
        x0 = prob.hold_background(prob.solve(rho, prob.hess(prob.x_hat) + rho * x0))
        _report(progress, "HQS", i, len(ts), t, t0)
        if i == len(ts):
            break
        ab_next = float(prior.alphas_cumprod[ts[i]])
        eps_eff = (x - ab ** 0.5 * x0) / (1 - ab) ** 0.5
        mixed = (1 - zeta) ** 0.5 * eps_eff + zeta ** 0.5 * _noise(gen, x0)
        x = ab_next ** 0.5 * x0 + (1 - ab_next) ** 0.5 * mixed
    return unscale(x0, prob, quad)


def keep_regional_means(maps: tuple[np.ndarray, np.ndarray], quad: PatlakQuadratic, spacing_mm,
                        sigma_mm: float = REGIONAL_MEAN_SIGMA_MM) -> tuple[np.ndarray, np.ndarray]:
    """Add to each sampled map the Gaussian-weighted mean, over the body, of the conventional estimate minus
    that map (sigma ``sigma_mm``; see :data:`REGIONAL_MEAN_SIGMA_MM`): the result keeps the sampler's detail and
    the data's local mean. Outside the body the maps are returned as they are (the conventional estimate)."""
    body = quad.body_mask.astype(bool)
    sigma = [sigma_mm / float(s) for s in spacing_mm]
    inside = body.astype(np.float32)
    weight = np.maximum(ndimage.gaussian_filter(inside, sigma), 1e-6)
    out = []
    for est, raw in zip(maps, quad.theta_hat):
        residual = ndimage.gaussian_filter(inside * (raw - est), sigma) / weight
        out.append(np.where(body, est + residual, est).astype(np.float32))
    return out[0], out[1]


SAMPLERS = {"reddiff": red_diff, "hqs": hqs}  # by the app's --method name

"""Patlak graphical analysis, voxel-wise, for irreversible tracers such as FDG.

For t >= t*, tissue activity follows C_T(t) = Ki * int_0^t Cp + V * Cp(t) (Patlak, Blasberg & Fenstermacher,
J Cereb Blood Flow Metab 1983;3:1-7). The model is linear in theta = (Ki, V) with the same design matrix
for every voxel, so the whole volume is one weighted least-squares solve: theta = (A^T W A)^-1 A^T W y.
Regressors are frame averages (of Cp and of its running integral), matching frame-averaged images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import InputError
from .input_function import InputFunction

log = logging.getLogger(__name__)

DEFAULT_T_STAR_MIN = 20.0
MIN_FRAMES_AFTER_T_STAR = 3


@dataclass
class PatlakQuadratic:
    """The Patlak data term around the conventional estimate, as a per-voxel quadratic.

    D(theta) = 0.5 * inv_var * (theta - theta_hat)^T gram (theta - theta_hat), exactly the weighted
    least-squares misfit over the frames used (up to a constant), divided by each voxel's noise variance.

    Attributes
    ----------
    theta_hat: float32 (2, Z, Y, X), conventional WLS estimate [Ki, V].
    gram: float64 (2, 2), A^T W A over the frames used.
    inv_var: float32 (Z, Y, X), 1 / sigma^2 of the weighted residuals (smoothed, floored).
    body_mask: bool (Z, Y, X).
    """

    theta_hat: np.ndarray
    gram: np.ndarray
    inv_var: np.ndarray
    body_mask: np.ndarray


@dataclass
class PatlakFit:
    """Result of a voxel-wise Patlak fit."""

    ki: np.ndarray  # (Z, Y, X) mL/min/mL
    v: np.ndarray  # (Z, Y, X) mL/mL
    r2: np.ndarray  # (Z, Y, X) weighted coefficient of determination over the frames used
    quadratic: PatlakQuadratic
    t_star_min: float
    frames_used: np.ndarray  # indices of the frames with start >= t*
    design: np.ndarray  # (n, 2) regressors of the frames used (:func:`design_matrix`)
    weights: np.ndarray  # (n,) their weights in the fit


def select_frames(inp: InputFunction, t_star_min: float | None = None) -> tuple[float, np.ndarray]:
    """Frames used by Patlak: those starting at or after t* (default: first frame starting >= 20 min)."""
    starts = inp.frame_start_min
    if t_star_min is None:
        later = np.flatnonzero(starts >= DEFAULT_T_STAR_MIN - 1e-6)
        if later.size == 0:
            raise InputError(
                f"no frame starts at or after the default t* of {DEFAULT_T_STAR_MIN:g} min "
                f"(last frame starts at {starts[-1]:.2f} min); the study is too short for Patlak",
                tag="(0054,1300) FrameReferenceTime")
        t_star_min = float(starts[later[0]])
    frames = np.flatnonzero(starts >= t_star_min - 1e-6)
    if frames.size < MIN_FRAMES_AFTER_T_STAR:
        raise InputError(
            f"only {frames.size} frame(s) start at or after t* = {t_star_min:g} min; Patlak needs at least "
            f"{MIN_FRAMES_AFTER_T_STAR} (frames start at {_minutes(starts)} min: an earlier --t-star where the "
            "tracer's linear phase allows)", tag="(0054,1300) FrameReferenceTime")
    return float(t_star_min), frames


def _minutes(starts: np.ndarray, last: int = 6) -> str:
    """The last few frame starts, for a message."""
    shown = ", ".join(f"{t:.1f}" for t in starts[-last:])
    return shown if starts.size <= last else "..., " + shown


def design_matrix(inp: InputFunction, frames: np.ndarray) -> np.ndarray:
    """(n, 2) Patlak design matrix [frame mean of int Cp, frame mean of Cp] for the given frames."""
    return np.stack([inp.integral_frame_mean()[frames], inp.cp_frame_mean[frames]], axis=1)


def frame_weights(frame_start_min: np.ndarray, frame_end_min: np.ndarray, half_life_min: float) -> np.ndarray:
    """Statistical weights ~ 1/variance of a decay-corrected frame: duration x decay factor (mean 1).

    The variance of a decay-corrected frame mean scales as exp(lambda t) / duration for a given activity.
    """
    lam = np.log(2.0) / half_life_min
    dur = frame_end_min - frame_start_min
    w = dur * np.exp(-lam * 0.5 * (frame_start_min + frame_end_min))
    return w / w.mean()


def fit_patlak(activity: np.ndarray, inp: InputFunction, *, half_life_min: float = 109.77,
               t_star_min: float | None = None, body_mask: np.ndarray | None = None,
               weighted: bool = True, chunk_slices: int = 16) -> PatlakFit:
    """Voxel-wise (weighted) linear least-squares Patlak fit over frames starting at or after t*.

    Parameters
    ----------
    activity: (T, Z, Y, X) Bq/mL, decay-corrected to injection, frames matching ``inp``.
    inp: the plasma input function on the same frames.
    t_star_min: start of the linear phase; default the first frame starting at or after 20 min.
    body_mask: voxels that count for noise statistics; default from :func:`body_mask_from_activity`.
    weighted: weight frames by duration and decay (:func:`frame_weights`); False gives ordinary LS.
    chunk_slices: slices processed at once; peak extra memory is one chunk of the used frames.
    """
    if activity.shape[0] != inp.frame_start_min.size:
        raise ValueError(f"activity has {activity.shape[0]} frames, the input function {inp.frame_start_min.size}")
    t_star_min, frames = select_frames(inp, t_star_min)
    a = design_matrix(inp, frames)
    w = frame_weights(inp.frame_start_min[frames], inp.frame_end_min[frames], half_life_min) if weighted \
        else np.ones(frames.size)
    quad, r2 = patlak_quadratic(activity, frames, a, w, body_mask, chunk_slices)
    log.info("Patlak: t* = %.2f min, %d frames, %d body voxels", t_star_min, frames.size, int(quad.body_mask.sum()))
    theta = quad.theta_hat
    return PatlakFit(ki=theta[0], v=theta[1], r2=r2, quadratic=quad, t_star_min=t_star_min, frames_used=frames,
                     design=a, weights=w)


def patlak_quadratic(activity: np.ndarray, frames: np.ndarray, a: np.ndarray, w: np.ndarray,
                     body_mask: np.ndarray | None = None,
                     chunk_slices: int = 16) -> tuple[PatlakQuadratic, np.ndarray]:
    """The weighted least-squares fit of ``frames`` (:func:`solve_patlak`) as the per-voxel quadratic data
    term, with the noise level from the residuals; also returns the weighted R^2."""
    theta, r2, var = solve_patlak(activity, frames, a, w, chunk_slices)
    if body_mask is None:
        body_mask = body_mask_from_activity(mean_of_frames(activity, frames))
    inv_var = _inverse_noise_variance(var, body_mask)
    gram = a.T @ (w[:, None] * a)
    return PatlakQuadratic(theta_hat=theta, gram=gram, inv_var=inv_var, body_mask=body_mask), r2


def solve_patlak(activity: np.ndarray, frames: np.ndarray, a: np.ndarray, w: np.ndarray,
                 chunk_slices: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares y = a @ theta over ``frames`` for every voxel, ``chunk_slices`` slices at a time.

    ``a`` is (n, 2) and ``w`` (n,) frame weights shared by all voxels, so per chunk the fit is one
    (2, n) x (n, voxels) product: theta = G^-1 A^T W y with G = A^T W A. The residual sum of squares comes
    from the same sums (rss = y^T W y - theta . A^T W y), so the frames are read three times and never
    copied to float64; peak extra memory is one chunk of the used frames. Returns theta (2, Z, Y, X),
    the weighted R^2 and the residual variance rss / (n - 2).
    """
    g_inv = np.linalg.inv(a.T @ (w[:, None] * a))
    aw = (a * w[:, None]).T.astype(np.float32)  # (2, n)
    w32 = w.astype(np.float32)
    n_dof = max(frames.size - 2, 1)
    spatial = activity.shape[1:]
    theta = np.empty((2,) + spatial, np.float32)
    r2 = np.empty(spatial, np.float32)
    var = np.empty(spatial, np.float32)
    for z0 in range(0, spatial[0], chunk_slices):
        zs = slice(z0, z0 + chunk_slices)
        flat = activity[frames, zs].reshape(frames.size, -1).astype(np.float32, copy=False)
        b = (aw @ flat).astype(np.float64)  # A^T W y, (2, V)
        th = g_inv @ b
        yy = (w32 @ (flat * flat)).astype(np.float64)
        sy = (w32 @ flat).astype(np.float64)
        rss = np.maximum(yy - np.einsum("kv,kv->v", th, b), 0.0)
        tss = yy - sy * sy / w.sum()
        shape = (-1,) + spatial[1:]
        theta[:, zs] = th.reshape((2,) + shape)
        r2[zs] = np.where(tss > 0, 1.0 - rss / np.maximum(tss, 1e-30), 0.0).reshape(shape)
        var[zs] = (rss / n_dof).reshape(shape)
    return theta, r2, var


def mean_of_frames(activity: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Mean image of ``frames``, summed one frame at a time: ``activity[frames].mean(0)`` would copy them all."""
    total = np.zeros(activity.shape[1:], np.float32)
    for f in frames:
        total += activity[f]
    return total / np.float32(len(frames))


def _inverse_noise_variance(var: np.ndarray, body_mask: np.ndarray, smooth_voxels: float = 1.5) -> np.ndarray:
    """1/sigma^2 from the residual variance, smoothed (it is itself noisy) and floored inside the body."""
    smoothed = ndimage.gaussian_filter(var, smooth_voxels)
    inside = smoothed[body_mask]
    floor = np.percentile(inside, 5) if inside.size else float(smoothed.max())
    floor = max(float(floor), 1e-12)
    return (1.0 / np.maximum(smoothed, floor)).astype(np.float32)


def body_mask_from_activity(mean_image: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Body outline: smoothed late activity above a fraction of its robust maximum, holes filled."""
    smooth = ndimage.gaussian_filter(mean_image.astype(np.float32), 1.0)
    level = fraction * np.percentile(smooth, 99.5)
    mask = smooth > level
    mask = ndimage.binary_opening(mask, iterations=1)
    return np.stack([ndimage.binary_fill_holes(m) for m in mask])

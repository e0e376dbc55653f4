"""Conventional voxel Patlak: this product vs the peer nifti-dynamic (PyPI) on the same data, same run.

python -m benchmarks.patlak_speed [--preset total-body] [--frames 10]

Both fit the same model on the same regressors so their Ki must agree: nifti-dynamic regresses
y/Cp on int(Cp)/Cp by ordinary least squares over the last N frames (int Cp by cumulative Simpson at the
frame mid-times); that is weighted least squares on y = Ki int(Cp) + V Cp with weights 1/Cp^2, which
``dynamic_pet.patlak.solve_patlak`` is given here. Timing is the fit alone (data already in memory, in
each tool's own layout); peak memory is the tracemalloc peak of numpy allocations during the fit.
The table goes to benchmarks/results/patlak_speed.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "patlak_speed.md"


def measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak / 2 ** 20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="total-body")
    ap.add_argument("--frames", type=int, default=10, help="last N frames in the regression")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    import nibabel as nib
    from nifti_dynamic.patlak import voxel_patlak
    from scipy.integrate import cumulative_simpson

    from dynamic_pet.patlak import solve_patlak
    from phantom.simulate import simulate_study

    t0 = time.perf_counter()
    study = simulate_study(args.preset, 1000, 1.0, noise="none")
    sim_s = time.perf_counter() - t0
    act = study.activity  # (T, Z, Y, X) float32
    sch = study.schedule
    t_mid_s = 0.5 * (sch.start_s + sch.end_s)
    cp = study.frame_integrals.cp_mean
    integral = cumulative_simpson(cp, x=t_mid_s / 60, initial=0)
    frames = np.arange(act.shape[0] - args.frames, act.shape[0])
    a = np.stack([integral[frames], cp[frames]], axis=1)
    w = 1.0 / cp[frames] ** 2
    peer_layout = nib.Nifti1Image(np.ascontiguousarray(act.transpose(3, 2, 1, 0)), study.affine)  # (X,Y,Z,T)

    rows = []
    for _ in range(args.repeats):
        (ours, _, _), s_ours, m_ours = measure(lambda: solve_patlak(act, frames, a, w))
        (peer, _), s_peer, m_peer = measure(lambda: voxel_patlak(peer_layout, cp, t_mid_s,
                                                                 n_frames_linear_regression=args.frames))
        rows.append((s_ours, m_ours, s_peer, m_peer))
    peer_ki = np.asarray(peer.dataobj).transpose(2, 1, 0)
    finite = np.isfinite(peer_ki)
    max_diff = float(np.abs(ours[0][finite] - peer_ki[finite]).max())
    s_ours, m_ours, s_peer, m_peer = (min(r[i] for r in rows) for i in range(4))
    shape = "x".join(map(str, act.shape[::-1]))
    study_mb = act.nbytes / 2 ** 20
    table = [
        f"# Conventional voxel Patlak: speed and memory ({args.preset}, {shape} voxels x frames)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; best of {args.repeats}; study array {study_mb:.0f} MiB float32; "
        f"last {args.frames} frames; simulation took {sim_s:.0f} s (not timed below).",
        "",
        "| implementation | fit time (s) | peak extra memory (MiB) | max abs Ki difference vs peer |",
        "|---|---:|---:|---:|",
        f"| dynamic_pet `solve_patlak` (chunked closed form) | {s_ours:.2f} | {m_ours:.0f} | {max_diff:.1e} |",
        f"| nifti-dynamic `voxel_patlak` (sklearn per chunk) | {s_peer:.2f} | {m_peer:.0f} | - |",
        "",
        f"Speed-up: **{s_peer / s_ours:.1f}x** at equal Ki (max difference {max_diff:.1e} mL/min/mL, goal 1e-4).",
        "",
        "Regenerate: `.venv/bin/python -m benchmarks.patlak_speed` (writes this file).",
    ]
    text = "\n".join(table) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0 if max_diff < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Diffusion-prior samplers: time and memory per volume, CPU and (where present) GPU, and their agreement.

python -m benchmarks.sampler_speed [--presets demo torso total-body] [--gpu-only total-body]
                                   [--methods hqs reddiff] [--devices cpu cuda] [--autocast bf16 ...]

Each preset's noiseless phantom study (the sampler's cost depends on the grid, not on the counts) is fitted
by conventional Patlak once; then each sampler runs with the app's defaults (:mod:`dynamic_pet.samplers`)
on each device, seed 0, and is timed from the Patlak fit to the maps (the data term on the prior's grid
where the voxels are finer than its pixels, network, data steps, transfers;
the prior's loading not included, the first call on a device is a warm-up and is not timed). On CUDA the
peak allocated GPU memory is reported, and the maps are compared with the CPU's: the largest difference
inside the body relative to each map's maximum (the stated tolerance is 1e-3 in float32, looser under
autocast; each --autocast mode runs on CUDA after the float32 run). A device that is absent is listed as
not measured; presets in --gpu-only (by default the total-body study, minutes per volume on a CPU) run on
CUDA only. A second table times the whole application (``python -m app --method METHOD``, default device,
every default output) on the demo phantom at --app-dose (seed 1000), wall time and peak resident set, each
run in a fresh process (``benchmarks.memory_scale``'s measurement). Writes benchmarks/results/sampler_speed.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dynamic_pet import samplers
from dynamic_pet.diffusion_prior import DiffusionPrior
from dynamic_pet.estimation import diffusion_draws
from dynamic_pet.patlak import fit_patlak
from phantom.simulate import simulate_study

RESULTS = Path(__file__).resolve().parent / "results" / "sampler_speed.md"
GPU_RESULTS = RESULTS.with_name("sampler_speed_gpu.md")  # where a run on a GPU machine is committed (--out)
log = logging.getLogger("benchmarks.sampler_speed")


def run(prior: DiffusionPrior, method: str, study, fit, device: str) -> tuple[np.ndarray, np.ndarray, float]:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    (ki, v), = diffusion_draws(prior, method, study.activity, fit, study.preset.voxel_mm, seeds=[0],
                               device=device)[0]
    if device == "cuda":
        torch.cuda.synchronize()
    return ki, v, time.perf_counter() - t0


def app_rows(methods, dose: float) -> list[str]:
    """Whole-application wall time and peak RSS per method on the demo phantom at ``dose``."""
    from phantom.__main__ import write_study

    rows = ["| study | method | whole app (s) | peak RSS (MiB) |", "|---|---|---:|---:|"]
    with tempfile.TemporaryDirectory() as work:
        write_study(simulate_study("demo", 1000, dose), Path(work))
        for method in methods:
            run = subprocess.run([sys.executable, "-m", "benchmarks.memory_scale", "--measure-app",
                                  str(Path(work) / "dicom"), "--method", method],
                                 cwd=RESULTS.parents[2], capture_output=True, text=True, check=True)
            app = json.loads(run.stdout.splitlines()[-1])
            log.info("whole app, %s: %.1f s, %.0f MiB", method, app["seconds"], app["peak_mib"])
            rows.append(f"| demo, {dose:g} dose | {method} | {app['seconds']:.1f} | {app['peak_mib']:.0f} |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["demo", "torso", "total-body"])
    ap.add_argument("--gpu-only", nargs="*", default=["total-body"], help="presets not run on the CPU")
    ap.add_argument("--methods", nargs="+", default=["hqs", "reddiff"])
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--autocast", nargs="*", choices=("bf16", "fp16"), default=[],
                    help="mixed-precision modes also run on CUDA")
    ap.add_argument("--app-dose", type=float, default=0.25, help="dose of the whole-app study (0: skip)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    command = sys.argv[1:] if argv is None else argv  # recorded in the table
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    has_cuda = torch.cuda.is_available()
    priors: dict[tuple, DiffusionPrior] = {}  # loaded once per device and precision
    rows = ["| preset (Z x Y x X) | method | steps | device | seconds per volume | seconds per step "
            "| peak GPU memory (MiB) | max difference vs CPU / map max (Ki, V) |",
            "|---|---|---:|---|---:|---:|---:|---|"]
    for preset in args.presets:
        devices = [d for d in args.devices if d == "cuda" or preset not in args.gpu_only]
        if "cuda" in devices and not has_cuda:
            absent = f"not measured: no GPU on this machine (see {GPU_RESULTS.name})"
            rows.extend(f"| {preset} | {m} | | cuda | {absent} | | | |" for m in args.methods)
            devices.remove("cuda")
        if not devices:
            continue
        study = simulate_study(preset, 0, 1.0, noise="none")
        fit = fit_patlak(study.activity, study.true_input_function())
        body = fit.quadratic.body_mask.astype(bool)
        shape = " x ".join(map(str, study.activity.shape[1:]))
        for method in args.methods:
            steps = samplers.HQS.steps if method == "hqs" else samplers.RED_DIFF.steps
            cpu_maps = None
            runs = [(d, None) for d in devices] + [("cuda", a) for a in args.autocast if "cuda" in devices]
            for device, autocast in runs:
                label = f"{device} ({autocast})" if autocast else device
                if (device, autocast) not in priors:
                    priors[device, autocast] = DiffusionPrior(device=device, autocast=autocast)
                prior = priors[device, autocast]
                if device == "cuda":
                    run(prior, method, study, fit, device)  # warm-up: kernels, allocator
                    torch.cuda.reset_peak_memory_stats()
                ki, v, seconds = run(prior, method, study, fit, device)
                peak = f"{torch.cuda.max_memory_allocated() / 2 ** 20:.0f}" if device == "cuda" else "-"
                if device == "cpu":
                    cpu_maps, diff = (ki, v), "-"
                elif cpu_maps is not None:
                    d = [float(np.abs(m - c)[body].max() / np.abs(c[body]).max()) for m, c in zip((ki, v), cpu_maps)]
                    diff = f"{d[0]:.1e}, {d[1]:.1e}"
                else:
                    diff = "CPU not run"
                log.info("%s %s %s: %.1f s", preset, method, label, seconds)
                rows.append(f"| {preset} ({shape}) | {method} | {steps} | {label} | {seconds:.1f} | "
                            f"{seconds / steps:.2f} | {peak} | {diff} |")
    if args.app_dose > 0:
        rows += ["", *app_rows(args.methods, args.app_dose)]
    gpu = torch.cuda.get_device_name(0) if has_cuda else "none"
    text = ["# Diffusion-prior samplers: time per volume by device", "", __doc__.split("\n\n", 1)[1].strip(), "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, GPU: {gpu}.",
            "", *rows, "", f"Regenerate: `{' '.join(['python -m benchmarks.sampler_speed', *command])}`."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

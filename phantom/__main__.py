"""Simulate a dynamic FDG PET study and write it as DICOM with its ground truth.

python -m phantom --out DIR [--preset demo|torso|total-body] [--dose FRACTION] [--seed N]
                  [--noiseless | --noise-free] [--schedule NxSEC,...] [--infusion-min M] [--delay-min M]
                  [--quiet]

DIR/dicom/   the dynamic PET series (classic PET Image Storage, one file per frame and slice)
DIR/truth/   ki.nii.gz, v.nii.gz, labels.nii.gz + labels.json, input_function.csv, truth.json
--noiseless  writes the exact frame-averaged activity (no scanner); --noise-free runs the scanner
             (resolution, projection, OSEM) on expected counts without Poisson sampling: the
             full-count reference.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from dynamic_pet.parametric_dicom import write_nifti

from .dicom_writer import write_dynamic_pet_series
from .kinetics import FrameSchedule
from .presets import PRESETS
from .simulate import SimulatedStudy, simulate_study

log = logging.getLogger("phantom")


def write_truth(study: SimulatedStudy, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    aff = study.affine
    write_nifti(study.ki, aff, folder / "ki.nii.gz")
    write_nifti(study.v, aff, folder / "v.nii.gz")
    write_nifti(study.anatomy.labels.astype(np.int16), aff, folder / "labels.nii.gz")
    (folder / "labels.json").write_text(json.dumps(study.anatomy.legend, indent=1))
    study.true_input_function().write_csv(folder / "input_function.csv")
    sch = study.schedule
    cp = study.input_function
    truth = {
        "preset": study.preset.name, "seed": study.seed, "dose_fraction": study.dose_fraction,
        "noise": study.noise, "injected_dose_bq": study.injected_dose_bq, "weight_kg": study.weight_kg,
        "shape_zyx": list(study.preset.shape), "voxel_mm_zyx": list(study.preset.voxel_mm),
        "psf_fwhm_mm": study.preset.psf_fwhm_mm,
        "frame_start_s": sch.start_s.tolist(), "frame_duration_s": sch.duration_s.tolist(),
        "input_function": {k: getattr(cp, k) for k in ("A1", "A2", "A3", "l1", "l2", "l3", "tau", "scale",
                                                      "infusion_min")},
        "lesions": [dict(les, kinetics=study.kinetics.lesion_kinetics.get(les["label"]))
                    for les in study.anatomy.lesions],
        "truth_definitions": "Ki = (1-vB) K1 k3/(k2+k3); V = vB + (1-vB) K1 k2/(k2+k3) x late conv/Cp ratio",
    }
    (folder / "truth.json").write_text(json.dumps(truth, indent=1))


def write_study(study: SimulatedStudy, out: Path) -> list[Path]:
    sch = study.schedule
    files = write_dynamic_pet_series(out / "dicom", study.activity, sch.start_s, sch.duration_s,
                                     study.preset.voxel_mm, injected_dose_bq=study.injected_dose_bq,
                                     seed=study.seed, patient_weight_kg=study.weight_kg)
    write_truth(study, out / "truth")
    return files


def parse_schedule(text: str) -> FrameSchedule:
    """'6x10,2x30' -> six 10-s frames then two 30-s frames, back to back from the injection."""
    try:
        blocks = [(int(n), float(sec)) for n, sec in (item.lower().split("x") for item in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts x seconds such as 6x10,2x30, given {text!r}") from None
    if not blocks or any(n < 1 or sec <= 0 for n, sec in blocks):
        raise argparse.ArgumentTypeError(f"counts and seconds must be positive, given {text!r}")
    return FrameSchedule.from_blocks(blocks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phantom", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    ap.add_argument("--dose", type=float, default=1.0, help="fraction of the full 4 MBq/kg dose")
    ap.add_argument("--seed", type=int, default=0)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--noiseless", action="store_true", help="exact frame-averaged activity, no scanner")
    mode.add_argument("--noise-free", action="store_true", help="scanner on expected counts (no Poisson)")
    ap.add_argument("--schedule", type=parse_schedule, default=None, metavar="NxSEC,...",
                    help="frame schedule as counts x seconds from the injection, e.g. 12x5,6x10,4x30,5x60,8x300 "
                         "(default: 6x10,2x30,6x60,5x120,4x180,6x300)")
    ap.add_argument("--infusion-min", type=float, default=0.0, help="spread the bolus over an infusion (min)")
    ap.add_argument("--delay-min", type=float, default=0.0, help="delay the input function's arrival (min)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    noise = "none" if args.noiseless else "noise-free" if args.noise_free else "poisson"
    t0 = time.perf_counter()
    study = simulate_study(args.preset, args.seed, args.dose, noise=noise, schedule=args.schedule,
                           progress=lambda k, n: log.info("reconstructed frame %d/%d", k, n),
                           infusion_min=args.infusion_min, extra_delay_min=args.delay_min)
    files = write_study(study, args.out)
    log.info("wrote %d DICOM files and the truth to %s in %.1f s", len(files), args.out,
             time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Everything a run leaves behind, written into one folder.

dicom/<map>_pmap/, dicom/<map>_pet/   Parametric Map and derived PET series per map (same study)
nifti/ki.nii.gz, nifti/v.nii.gz       (+ ki_sd.nii.gz with --samples > 1, r2.nii.gz goodness of fit,
                                      blood_pool_mask.nii.gz when the input function is image-derived)
input_function.csv                    frame start/end (s) and plasma activity (Bq/mL)
summary.json                          method, t*, frames, input function, timings, versions
report.pdf, dicom/report/             one-page report, also as DICOM Encapsulated PDF (same study)
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from . import __version__
from .estimation import ParametricResult
from .input_function import InputFunctionResult
from .parametric_dicom import write_nifti, write_parametric_outputs
from .report import write_report
from .study import DynamicStudy

METHOD_DESCRIPTIONS = {
    "patlak": "Voxel-wise weighted least-squares Patlak",
    "reddiff": "Patlak with diffusion prior, RED-diff",
    "hqs": "Patlak with diffusion prior, HQS",
}


def _versions() -> dict:
    out = {"dynamic_pet": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "pydicom", "highdicom", "torch", "monai", "monai-deploy-app-sdk"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_results(folder: Path, study: DynamicStudy, idif: InputFunctionResult, result: ParametricResult,
                  run_options: dict | None = None, report: bool = True) -> dict:
    """Write all outputs of a run into ``folder``; returns the summary. ``report`` adds report.pdf and
    its Encapsulated PDF copy (dicom/report/)."""
    t0 = time.perf_counter()
    folder = Path(folder)
    fit = result.fit
    description = f"{METHOD_DESCRIPTIONS[result.method]}, t*={fit.t_star_min:g} min"
    write_parametric_outputs(study, result.maps(), folder, method_description=description)
    nifti = folder / "nifti"
    nifti.mkdir(parents=True, exist_ok=True)
    for name, image in {**result.maps(), "r2": fit.r2}.items():
        write_nifti(image.astype(np.float32), study.affine, nifti / f"{name}.nii.gz")
    if idif.mask is not None:
        write_nifti(idif.mask.astype(np.uint8), study.affine, nifti / "blood_pool_mask.nii.gz")
    idif.input_function.write_csv(folder / "input_function.csv")
    body = fit.quadratic.body_mask
    study.timings_s["writing"] = round(time.perf_counter() - t0, 3)  # DICOM and NIfTI, before the summary
    summary = {
        "method": result.method,
        "method_description": description,
        "t_star_min": fit.t_star_min,
        "frames_used": [int(f) for f in fit.frames_used],
        "frames_total": int(study.activity.shape[0]),
        "frame_start_min": [round(float(t), 4) for t in study.frame_start_min],
        "frame_end_min": [round(float(t), 4) for t in study.frame_end_min],
        "shape_zyx": list(study.activity.shape[1:]),
        "spacing_mm_zyx": [float(s) for s in study.spacing_mm],
        "input_function": idif.summary(),
        "ki_body_median_ml_min_ml": float(np.median(result.ki[body])) if body.any() else None,
        "estimation": result.details,
        "loading_notes": list(study.notes),
        "timings_s": dict(study.timings_s),
        "options": dict(run_options or {}),
        "versions": _versions(),
        "research_use_only": True,
    }
    if report:
        write_report(folder, study, idif, result, summary)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary

"""Dynamic PET to Patlak parametric images, as a MONAI Deploy application.

Input: a folder of DICOM files holding a dynamic PET series (classic, or multi-frame Legacy Converted
Enhanced / Enhanced PET Image Storage). Output, in the same study: Ki and V as DICOM Parametric Maps and as
derived PET series, NIfTI copies, the input function and summary.json. On the demo phantom (48 slices of
96x96, 29 frames) conventional Patlak takes a few seconds on 2 CPU cores; see README for the diffusion-prior
methods' timings.

Workflow (compose): load the dynamic series -> sort frames and slices into Bq/mL -> input function
(automatic aorta / LV, a mask or a CSV) -> Patlak estimation (conventional or with the diffusion prior)
-> parametric DICOM, NIfTI and summary, written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application

from operators import (DicomSendOperator, DynamicPetLoaderOperator, FrameSorterOperator, InputFunctionOperator,
                       ParametricEstimationOperator, ParametricWriterOperator)

log = logging.getLogger(__name__)

REPO_MODELS = Path(__file__).resolve().parent.parent / "models" / "prior"


class PatlakApp(Application):
    """Dynamic PET DICOM in, Patlak Ki and V parametric DICOM out (research use only)."""

    name = "dynamic-pet-patlak"
    description = __doc__
    version = "0.1.0"

    def __init__(self, *args, options: dict | None = None, **kwargs):
        self.patlak_options = dict(options or {})
        self.input_error = None
        super().__init__(*args, **kwargs)

    def compose(self):
        ctx = Application.init_app_context(self.argv)
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # per-module copy notes are noise here
        opts = self.patlak_options
        model_dir = _model_dir(ctx.model_path)
        loader = DynamicPetLoaderOperator(self, CountCondition(self, 1), input_folder=Path(ctx.input_path),
                                          series_instance_uid=opts.get("series_uid"), name="dynamic_pet_loader")
        sorter = FrameSorterOperator(self, name="frame_sorter")
        idif = InputFunctionOperator(self, csv_path=opts.get("input_function"), mask_path=opts.get("idif_mask"),
                                     name="input_function")
        estimator = ParametricEstimationOperator(
            self, method=opts.get("method", "patlak"), t_star_min=opts.get("t_star"),
            device=opts.get("device", "cpu"), samples=opts.get("samples", 1), seed=opts.get("seed", 0),
            model_dir=model_dir, name="parametric_estimation")
        # the destination stays out of summary.json: it may carry credentials
        writer = ParametricWriterOperator(self, output_folder=Path(ctx.output_path), report=opts.get("report", True),
                                          run_options={k: v for k, v in opts.items()
                                                       if v is not None and k != "send_to"},
                                          name="parametric_writer")
        self.add_flow(loader, sorter, {("series", "series")})
        self.add_flow(sorter, idif, {("study", "study")})
        self.add_flow(idif, estimator, {("study", "study"), ("input_function", "input_function")})
        self.add_flow(estimator, writer, {("study", "study"), ("input_function", "input_function"),
                                          ("result", "result")})
        if opts.get("send_to"):
            sender = DicomSendOperator(self, destination=opts["send_to"], name="dicom_send")
            self.add_flow(writer, sender, {("outputs", "outputs")})


def _model_dir(model_path: str | None) -> Path:
    """The prior's folder: -m / HOLOSCAN_MODEL_PATH when it holds the weights (directly or under prior/),
    else the copy shipped in the repository."""
    if model_path:
        for candidate in (Path(model_path), Path(model_path) / "prior"):
            if (candidate / "config.json").is_file():
                return candidate
    return REPO_MODELS


if __name__ == "__main__":
    from app.__main__ import main

    raise SystemExit(main())

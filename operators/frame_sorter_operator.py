"""Operator: sort and validate frames and slices into a (T, Z, Y, X) study in Bq/mL."""

import logging

from monai.deploy.core import Fragment, Operator, OperatorSpec

from dynamic_pet.dicom_series import sort_dynamic_series

from .common import keeps_input_error, timed

log = logging.getLogger(__name__)


class FrameSorterOperator(Operator):
    """Receives ``series``; emits ``study`` (a DynamicStudy, decay-corrected to injection)."""

    def __init__(self, fragment: Fragment, *args, **kwargs):
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("series")
        spec.output("study")

    @keeps_input_error
    def compute(self, op_input, op_output, context):
        series = op_input.receive("series")
        timings = dict(series.timings_s)
        with timed(timings, "frame_sorting"):
            study = sort_dynamic_series(series)
        study.timings_s.update(timings)
        log.info("%d frames x %d slices of %dx%d, %.1f-%.1f min after injection", *study.activity.shape,
                 study.frame_start_min[0], study.frame_end_min[-1])
        op_output.emit(study, "study")

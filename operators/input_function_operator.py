"""Operator: the plasma input function (automatic blood pool, a user mask, or a CSV)."""

import logging

from monai.deploy.core import Fragment, Operator, OperatorSpec

from dynamic_pet.input_function import input_function_for_study

from .common import keeps_input_error, timed

log = logging.getLogger(__name__)


class InputFunctionOperator(Operator):
    """Receives ``study``; emits ``study`` and ``input_function`` (an InputFunctionResult)."""

    def __init__(self, fragment: Fragment, *args, csv_path=None, mask_path=None, **kwargs):
        self.csv_path, self.mask_path = csv_path, mask_path
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("study")
        spec.output("study")
        spec.output("input_function")

    @keeps_input_error
    def compute(self, op_input, op_output, context):
        study = op_input.receive("study")
        with timed(study.timings_s, "input_function"):
            result = input_function_for_study(study, self.csv_path, self.mask_path)
        log.info("input function from %s; AUC %.4g Bq min/mL%s", result.source,
                 result.input_function.area_under_curve(),
                 "".join(f"; WARNING {f}" for f in result.quality_flags))
        op_output.emit(study, "study")
        op_output.emit(result, "input_function")

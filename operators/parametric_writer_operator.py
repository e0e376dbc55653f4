"""Operator: parametric DICOM (Parametric Map + derived PET), NIfTI, input-function CSV, summary.json."""

import logging
from pathlib import Path

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from dynamic_pet.output_staging import staged_output
from dynamic_pet.results import write_results

from .common import keeps_input_error

log = logging.getLogger(__name__)


class ParametricWriterOperator(Operator):
    """Receives ``study``, ``input_function`` and ``result``; writes everything into ``output_folder``
    through a staging folder, so the folder gets all outputs or none."""

    def __init__(self, fragment: Fragment, *args, output_folder, run_options=None, report=True, **kwargs):
        self.output_folder, self.run_options = Path(output_folder), dict(run_options or {})
        self.report = report
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("study")
        spec.input("input_function")
        spec.input("result")
        # the written DICOM files, for an optional sender downstream; fine to leave unconnected
        spec.output("outputs").condition(ConditionType.NONE)

    @keeps_input_error
    def compute(self, op_input, op_output, context):
        study = op_input.receive("study")
        idif = op_input.receive("input_function")
        result = op_input.receive("result")
        with staged_output(self.output_folder) as staging:
            write_results(staging, study, idif, result, self.run_options, report=self.report)
        dicom_files = sorted((self.output_folder / "dicom").rglob("*.dcm"))
        log.info("outputs written to %s (%d DICOM files)", self.output_folder, len(dicom_files))
        op_output.emit(dicom_files, "outputs")

"""Operator: find the dynamic PET series among the DICOM files of the input folder."""

import logging
import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from dynamic_pet.dicom_series import find_dynamic_series
from .common import keeps_input_error

log = logging.getLogger(__name__)


class DynamicPetLoaderOperator(Operator):
    """Source operator. Emits ``series``: the chosen series' instances, not yet sorted or decoded.

    Replaces the SDK's DICOMDataLoaderOperator, which keeps one instance per position and so drops
    every dynamic frame but one.
    """

    def __init__(self, fragment: Fragment, *args, input_folder, series_instance_uid=None, **kwargs):
        self.input_folder, self.series_instance_uid = input_folder, series_instance_uid
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("series")

    @keeps_input_error
    def compute(self, op_input, op_output, context):
        t0 = time.perf_counter()
        series = find_dynamic_series(self.input_folder, self.series_instance_uid)
        series.timings_s["loading"] = round(time.perf_counter() - t0, 3)
        log.info("dynamic PET series with %d instances selected", len(series.records))
        op_output.emit(series, "series")

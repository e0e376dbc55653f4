"""MONAI Deploy operators: thin adapters from ports to the framework-free ``dynamic_pet`` modules."""

from .dicom_send_operator import DicomSendOperator
from .dynamic_pet_loader_operator import DynamicPetLoaderOperator
from .frame_sorter_operator import FrameSorterOperator
from .input_function_operator import InputFunctionOperator
from .parametric_estimation_operator import ParametricEstimationOperator
from .parametric_writer_operator import ParametricWriterOperator

__all__ = ["DicomSendOperator", "DynamicPetLoaderOperator", "FrameSorterOperator", "InputFunctionOperator",
           "ParametricEstimationOperator", "ParametricWriterOperator"]

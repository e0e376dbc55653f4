"""Operator: Ki and V maps by the chosen method (patlak, reddiff, hqs)."""

import logging

from monai.deploy.core import Fragment, Operator, OperatorSpec

from dynamic_pet.estimation import estimate

from .common import keeps_input_error, timed

log = logging.getLogger(__name__)


class ParametricEstimationOperator(Operator):
    """Receives ``study`` and ``input_function``; emits both and ``result`` (a ParametricResult)."""

    def __init__(self, fragment: Fragment, *args, method="patlak", t_star_min=None, device="cpu", samples=1,
                 seed=0, model_dir=None, **kwargs):
        self.method, self.t_star_min, self.device = method, t_star_min, device
        self.samples, self.seed, self.model_dir = samples, seed, model_dir
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("study")
        spec.input("input_function")
        spec.output("study")
        spec.output("input_function")
        spec.output("result")

    @keeps_input_error
    def compute(self, op_input, op_output, context):
        study = op_input.receive("study")
        idif = op_input.receive("input_function")
        with timed(study.timings_s, f"estimation_{self.method}"):
            result = estimate(study, idif.input_function, method=self.method, t_star_min=self.t_star_min,
                              device=self.device, samples=self.samples, seed=self.seed,
                              model_dir=self.model_dir)  # the samplers log every step
        log.info("%s: t* %.1f min, %d frames", self.method, result.fit.t_star_min, result.fit.frames_used.size)
        op_output.emit(study, "study")
        op_output.emit(idif, "input_function")
        op_output.emit(result, "result")

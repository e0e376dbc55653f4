"""Helpers shared by the operators: stage timing, and keeping the product's own error for the exit code."""

import functools
import time
from contextlib import contextmanager

from dynamic_pet.errors import InputError


@contextmanager
def timed(timings: dict, stage: str):
    """Record the wall time of the block under ``stage``."""
    t0 = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - t0, 3)


def keeps_input_error(compute):
    """Holoscan turns an exception in compute() into a RuntimeError; keep the InputError on the
    fragment (``fragment.input_error``) so the entry point can report it and exit with its code."""

    @functools.wraps(compute)
    def wrapper(self, *args, **kwargs):
        try:
            return compute(self, *args, **kwargs)
        except InputError as exc:
            self.fragment.input_error = exc
            raise

    return wrapper

"""Half precision: the layer on float16 and bfloat16 inputs next to the same layer on float32.

A half-precision layer reads and writes 16-bit values and computes in float32, so at the memory
roofline it moves half the bytes of float32 and should take about half the time. The float32
rows of these benchmarks are the baseline of that ratio, measured in the same run.
"""
import numpy as np

import numbabn

from .common import CASES, LARGE, make_input

# layer dtype policy per input dtype: half input, float32 weights and arithmetic
POLICIES = {"float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def half_dtype(name):
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise NotImplementedError("bfloat16 needs ml_dtypes") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _HalfCase:
    params = [LARGE, list(POLICIES)]
    param_names = ["case", "dtype"]

    def setup(self, case, dtype):
        self.x = make_input(case).astype(half_dtype(dtype))
        self.dy = make_input(case, stream=1).astype(half_dtype(dtype))
        self.layer = numbabn.BatchNormalization(axis=CASES[case].axis, dtype=POLICIES[dtype])
        self.layer(self.x, training=True)
        self.layer.backward(self.dy)
        self.layer(self.x, training=False)


class HalfTrainingForward(_HalfCase):
    def time_forward(self, case, dtype):
        self.layer(self.x, training=True)


class HalfInferenceForward(_HalfCase):
    def time_forward(self, case, dtype):
        self.layer(self.x, training=False)


class HalfTrainingStep(_HalfCase):
    def time_step(self, case, dtype):
        self.layer(self.x, training=True)
        self.layer.backward(self.dy)

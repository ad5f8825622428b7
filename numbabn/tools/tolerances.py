"""Tolerances are data: one per-dtype table for every comparison in the tests and in ``selftest``.

A result of dtype ``d`` agrees with the expected one when, elementwise,
``|got - want| <= atol + rtol * |want|`` (NumPy's ``allclose`` rule) with
``rtol, atol = TOLERANCE[d]``. The rows are the rounding of results of order 1 in ``d``: float32
and the half types are compared with the float64 reference or with another engine's result,
float64 with the float64 reference (and the CUDA engine with the CPU engine). A comparison may
loosen the absolute part for a sum of many values (``scale``): both engines accumulate in float64,
so two sums of ``n`` float32 terms differ like a random walk of their roundings.

:data:`STATS_RTOL` is the relative tolerance of batch statistics against the float64 reference.

Comparisons of another kind keep their own numbers where they are made (tests/): central
differences (the step's truncation error), losses against TensorFlow's, results that must agree
more tightly than a dtype's rounding (the same computation twice).
"""
import collections

import numpy as np

Tolerance = collections.namedtuple("Tolerance", ["rtol", "atol"])

TOLERANCE = {
    # float16 results (e.g. the input gradient of float16 input) are the float32 result rounded:
    # one float16 ulp is about 1e-3 relative.
    np.dtype(np.float16): Tolerance(rtol=2e-3, atol=2e-3),
    # bfloat16 keeps 8 significant bits: half an ulp is 2**-9 of the value. The key is the name,
    # since the dtype needs ml_dtypes.
    "bfloat16": Tolerance(rtol=8e-3, atol=8e-3),
    np.dtype(np.float32): Tolerance(rtol=2e-5, atol=2e-5),
    # float64 results against the float64 reference: a few ulps of values of order 1.
    np.dtype(np.float64): Tolerance(rtol=1e-10, atol=1e-12),
}

# Batch statistics accumulate in float64 for every input dtype, so float32 input gets
# float64-accurate statistics of its (float32) values.
STATS_RTOL = {np.dtype(np.float32): 1e-9, np.dtype(np.float64): 1e-9}


def key(dtype):
    """The :data:`TOLERANCE` key of ``dtype``: the dtype, or ``"bfloat16"``."""
    dtype = np.dtype(dtype)
    return "bfloat16" if dtype.name == "bfloat16" else dtype


def tolerance(dtype):
    """``(rtol, atol)`` of results of ``dtype`` (a :class:`Tolerance`)."""
    return TOLERANCE[key(dtype)]

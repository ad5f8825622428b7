"""Shared test settings: thread count, tolerances and data helpers.

Races between Numba threads are invisible with one thread, so the suite always runs the parallel
kernels with at least two (set before numba is first imported).
"""
import os

os.environ.setdefault("NUMBA_NUM_THREADS", str(max(2, os.cpu_count() or 1)))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The fixture generator needs TensorFlow, which the suite never imports.
collect_ignore = ["golden/generate.py"]

# Tolerances are data: one row per compute dtype, used by every comparison in the suite.
# float32 results are compared with outputs of order 1; float64 with the float64 reference.
TOLERANCE = {
    np.dtype(np.float16): dict(rtol=2e-3, atol=2e-3),
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}


# Batch statistics against the float64 reference: they accumulate in float64 for every input
# dtype, so float32 input gets float64-accurate statistics of its (float32) values.
STATS_RTOL = {np.dtype(np.float32): 1e-9, np.dtype(np.float64): 1e-9}


def tolerance(dtype):
    return TOLERANCE[np.dtype(dtype)]


def assert_close(actual, expected, dtype=None, scale=1.0, err_msg=""):
    """Compare within the tolerance of ``dtype`` (default: ``actual``'s), ``scale`` times looser."""
    actual = np.asarray(actual)
    tol = tolerance(dtype if dtype is not None else actual.dtype)
    np.testing.assert_allclose(actual.astype(np.float64), np.asarray(expected, np.float64),
                               rtol=tol["rtol"] * scale, atol=tol["atol"] * scale,
                               err_msg=err_msg)


def numeric_grad(f, x, h=1e-6):
    """Central differences of the scalar function ``f`` at the float64 array ``x``."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


def pytest_report_header(config):
    import numba
    return f"numba {numba.__version__}, NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}"

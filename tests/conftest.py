"""Shared test settings: thread count, CUDA backend, tolerances and data helpers.

Races between Numba threads are invisible with one thread, so the suite always runs the parallel
kernels with at least two (set before numba is first imported).

The CUDA engine is tested on a GPU when the machine has a CUDA driver, and otherwise on Numba's
CUDA simulator (also set before numba is first imported), which runs every kernel thread as a
Python thread: the same kernels, launch shapes scaled down (see ``numbabn/cuda/kernels.py``).
"""
import ctypes
import os
import sys

os.environ.setdefault("NUMBA_NUM_THREADS", str(max(2, os.cpu_count() or 1)))


def _has_cuda_driver():
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _has_cuda_driver():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"
if SIMULATOR:
    import simulator_fix  # noqa: E402

    sys.setswitchinterval(1e-4)      # the simulator's threads hand over much faster
    simulator_fix.install()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The fixture generator needs TensorFlow, which the suite never imports; the PTX check runs in
# its own process (tests/test_cuda.py), and the MPI scripts under mpiexec (test_distributed.py).
collect_ignore = ["golden/generate.py", "golden/generate_keras3_masked.py",
                  "golden/generate_sgd.py", "ptx_compile.py", "mpi", "reliability", "cuda",
                  "simulator_fix.py"]

# Tolerances are data: one row per compute dtype, used by every comparison in the suite and by
# python -m numbabn selftest (numbabn/tools/tolerances.py).
from numbabn.tools.tolerances import STATS_RTOL, TOLERANCE, tolerance  # noqa: E402, F401


def assert_close(actual, expected, dtype=None, scale=1.0, err_msg=""):
    """Compare within the tolerance of ``dtype`` (default: ``actual``'s), ``scale`` times looser."""
    actual = np.asarray(actual)
    rtol, atol = tolerance(dtype if dtype is not None else actual.dtype)
    np.testing.assert_allclose(actual.astype(np.float64), np.asarray(expected, np.float64),
                               rtol=rtol * scale, atol=atol * scale, err_msg=err_msg)


def numeric_grad(f, x, h=1e-6):
    """Central differences of the scalar function ``f`` at the float64 array ``x``.

    Gradients are compared with these within tolerances of their own, not the TOLERANCE table:
    the error is the step's truncation and cancellation, not a dtype's rounding.
    """
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


class Backend:
    """Moves test data to an engine's arrays and results back to NumPy."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name

    def to(self, x):
        if self.name == "cpu":
            return x
        from numba import cuda
        return cuda.to_device(np.ascontiguousarray(x))

    def host(self, a):
        if self.name == "cpu" or isinstance(a, np.ndarray):
            return a
        return a.copy_to_host()


BACKENDS = [Backend("cpu"), Backend("cuda")]


@pytest.fixture(params=BACKENDS, ids=str)
def backend(request):
    return request.param


# Launch geometries for the CUDA simulator: the kernels' tile constants and the engine's grid
# limits (the defaults are ``numbabn/cuda/kernels.py``'s scaled-down tiles). The simulator's time
# follows the Python threads a launch starts: "tiny" costs about a third of the default tiles.
SIMULATOR_LAUNCHES = {
    "tiny": dict(TX=2, TY=2, T=4, TARGET_BLOCKS=3, CHUNK=8, MAX_ROW_BLOCKS=2, MAX_GRID_Y=3,
                 VECTOR_BLOCK=4, COPY_BLOCKS=2, COPY_THREADS=4),
    "production": dict(TX=32, TY=8, T=256, TARGET_BLOCKS=2048, CHUNK=16 * 256,
                       MAX_ROW_BLOCKS=8192, MAX_GRID_Y=65535, VECTOR_BLOCK=128,
                       COPY_BLOCKS=4096, COPY_THREADS=256),
}


def simulator_launch(monkeypatch, name):
    """Run the CUDA kernels with the launch geometry ``name`` until ``monkeypatch`` undoes it.

    Only on the simulator: it reads the constants at every launch, while a GPU compiles them in.
    """
    assert SIMULATOR
    from numbabn.cuda import engine, kernels
    for key, value in SIMULATOR_LAUNCHES[name].items():
        monkeypatch.setattr(kernels if key in ("TX", "TY", "T") else engine, key, value)


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


def threading_layer_env(layer, root):
    """The environment of a fresh interpreter that runs this checkout (``root``) under Numba's
    threading ``layer`` ("default": Numba's own choice) with two threads; skips when tbb is
    asked for and not installed."""
    from numbabn.tools.loopbench import tbb_environment
    env = dict(os.environ, NUMBA_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    for key in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(key, None)
    if layer == "tbb":
        extra = tbb_environment()
        if extra is None:
            pytest.skip("TBB is not installed (pip install tbb)")
        env.update(extra)
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    return env


def pytest_report_header(config):
    import numba
    return f"numba {numba.__version__}, NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}"

"""The layer on CuPy arrays: the CUDA engine, timed with the device synchronized.

Runs only where CuPy has a GPU; elsewhere every ``setup`` raises ``NotImplementedError``, which asv
reports as a skipped benchmark. Each timed body ends with a stream synchronization: without it
asv would time the launch, not the work.
"""
import numbabn
from numbabn.tools.timing import CudaEventClock, median_seconds
from numbabn.tools.traffic import gb_per_s

from .common import CASES, make_input


def _cupy():
    try:
        import cupy
        from numba import config
    except ImportError:
        raise NotImplementedError("CuPy is not installed") from None
    if config.ENABLE_CUDASIM or not cupy.is_available():
        raise NotImplementedError("no CUDA device")
    return cupy


class _CudaCase:
    params = [list(CASES)]
    param_names = ["case"]

    def setup(self, case):
        self.cupy = _cupy()
        self.x = self.cupy.asarray(make_input(case))
        self.dy = self.cupy.asarray(make_input(case, stream=1))
        self.layer = numbabn.BatchNormalization(axis=CASES[case].axis)
        self.run()                   # compile the kernels for these shapes and dtypes
        self.sync()

    def sync(self):
        self.cupy.cuda.get_current_stream().synchronize()

    def seconds(self, repeats=20):
        """Median device time of ``run`` between CUDA events."""
        return median_seconds(self.run, repeats, clock=CudaEventClock(self.cupy))


class CudaTrainingForward(_CudaCase):
    """``layer(x, training=True)`` on a CuPy array."""

    def run(self):
        return self.layer(self.x, training=True)

    def time_forward(self, case):
        self.run()
        self.sync()

    def track_bandwidth(self, case):
        # the least traffic: one read of x (statistics), then read x and write y
        return round(gb_per_s("train", self.x.nbytes, self.seconds()), 1)

    track_bandwidth.unit = "GB/s"


class CudaInferenceForward(_CudaCase):
    """``layer(x, training=False)`` on a CuPy array."""

    def run(self):
        return self.layer(self.x, training=False)

    def time_forward(self, case):
        self.run()
        self.sync()

    def track_bandwidth(self, case):
        return round(gb_per_s("infer", self.x.nbytes, self.seconds()), 1)

    track_bandwidth.unit = "GB/s"


class CudaStep(_CudaCase):
    """Forward (training) and backward on CuPy arrays."""

    def run(self):
        self.layer(self.x, training=True)
        return self.layer.backward(self.dy)

    def time_step(self, case):
        self.run()
        self.sync()

    def track_bandwidth(self, case):
        # two copies and four reads of an input-sized array (numbabn.tools.traffic)
        return round(gb_per_s("step", self.x.nbytes, self.seconds()), 1)

    track_bandwidth.unit = "GB/s"

"""The benchmark shapes: one table for ``bench``, ``selftest``, ``loop`` and the asv suite.

Every case is a float32 input and its feature axis. The large ones (49 and 64 MiB) are far beyond
the caches, so their floor is memory traffic; ``small`` (64 KB) measures the cost of a call.
"""
import dataclasses

import numpy as np

# Bytes per value: the benchmarks time float32 inputs.
ITEMSIZE = np.dtype(np.float32).itemsize


@dataclasses.dataclass(frozen=True)
class Case:
    """An input shape and its feature axis; ``small`` cases measure call overhead (in µs)."""
    name: str
    shape: tuple
    axis: int
    small: bool = False

    @property
    def layout(self):
        """``"NC"``, ``"NHWC"`` (features last), ``"NCHW"`` (features after the batch) or
        ``"other"``."""
        ndim = len(self.shape)
        axis = self.axis % ndim
        if ndim == 2 and axis == 1:
            return "NC"
        if ndim > 2 and axis in (1, ndim - 1):
            return "NHWC" if axis == ndim - 1 else "NCHW"
        return "other"

    @property
    def channels(self):
        return self.shape[self.axis]

    @property
    def nbytes(self):
        return int(np.prod(self.shape)) * ITEMSIZE

    def label(self):
        return f"{self.name} {'x'.join(map(str, self.shape))}"


CASES = {
    "NC": Case("NC", (65536, 256), -1),              # dense layer output, channels last
    "NHWC": Case("NHWC", (32, 56, 56, 128), -1),     # conv feature map, channels last
    "NCHW": Case("NCHW", (32, 128, 56, 56), 1),      # conv feature map, channels first
    "small": Case("small", (256, 64), -1, small=True),   # mostly call overhead
}
# The three memory-bound cases (``selftest`` times these on the GPU).
LARGE_CASES = tuple(case for case in CASES.values() if not case.small)
# The same layouts at an eighth of the size, for quick runs.
QUICK_CASES = (
    Case("NC", (8192, 256), -1),
    Case("NHWC", (8, 28, 28, 128), -1),
    Case("NCHW", (8, 128, 28, 28), 1),
)

# A layer training step alternating with a (PAIR_MATMUL, PAIR_MATMUL) float32 matmul: two
# medium NHWC inputs on which Numba's and the BLAS's thread pools meet (``loop``, asv ``loop``).
PAIR_SHAPES = ((32, 16, 16, 64), (64, 8, 8, 32))
PAIR_MATMUL = 256

"""Shared shapes, the seeding helper and small utilities for the numbabn benchmarks."""
import sys
from collections import namedtuple

import numpy as np

from . import CHECKOUT

SEED = 1234
DTYPE = np.float32

Case = namedtuple("Case", ["shape", "axis"])

# The shapes every benchmark is parametrized over (float32, so the large ones are 64 MB each).
CASES = {
    "NC": Case((65536, 256), -1),             # dense layer output, channels last
    "NHWC": Case((32, 56, 56, 128), -1),      # conv feature map, channels last
    "NCHW": Case((32, 128, 56, 56), 1),       # conv feature map, channels first
    "small": Case((256, 64), -1),             # 64 KB: mostly call overhead
}
# The cases that also run the renorm and ghost-batch paths.
PATH_CASES = ["NC", "NHWC"]
VIRTUAL_BATCH_SIZE = 8


def rng(stream=0):
    """The one source of randomness: a generator seeded the same way on every run."""
    return np.random.default_rng([SEED, stream])


def make_input(case, stream=0):
    """A float32 array of the case's shape, normal with mean 3 and standard deviation 2.

    The offset keeps the statistics away from the trivial zero-mean case; ``stream`` gives
    independent arrays (an input and its upstream gradient).
    """
    x = rng(stream).standard_normal(CASES[case].shape, dtype=DTYPE)
    x *= 2.0
    x += 3.0
    return x


def per_feature(case, value):
    """A float32 per-feature vector (``gamma``, ``beta``, statistics) filled with ``value``."""
    shape, axis = CASES[case]
    return np.full(shape[axis], value, dtype=DTYPE)


def fresh_interpreter_setup():
    """Untimed set-up code for ``timeraw_`` benchmarks: make this checkout importable there too."""
    if CHECKOUT in sys.path:
        return f"import sys; sys.path.insert(0, {CHECKOUT!r})"
    return ""

"""Shared shapes, the seeding helper and small utilities for the numbabn benchmarks."""
import sys

import numpy as np

from numbabn.tools.shapes import CASES, LARGE_CASES

from . import CHECKOUT

SEED = 1234
DTYPE = np.float32

# The shapes every benchmark is parametrized over are those of ``python -m numbabn bench``
# (numbabn.tools.shapes: float32, the large ones 64 MB each, ``small`` 64 KB).
LARGE = [case.name for case in LARGE_CASES]
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
    return np.full(CASES[case].channels, value, dtype=DTYPE)


def fresh_interpreter_setup():
    """Untimed set-up code for ``timeraw_`` benchmarks: make this checkout importable there too."""
    if CHECKOUT in sys.path:
        return f"import sys; sys.path.insert(0, {CHECKOUT!r})"
    return ""

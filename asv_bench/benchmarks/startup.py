"""Start-up: what a fresh interpreter pays before its first batch is normalized.

``timeraw_`` benchmarks return code that asv times in a new Python process, once per sample:
``(stmt, setup)``, where only ``stmt`` is timed. Importing numbabn compiles nothing; the first
call of each kernel compiles it, or loads it from Numba's on-disk cache (``cache=True``).
"""
import numpy as np

import numbabn

from .common import CASES, SEED, fresh_interpreter_setup

# the small case, (256, 64)
SHAPE = CASES["small"].shape
FIRST_STEP = f"""
import numpy as np
import numbabn
x = np.random.default_rng({SEED}).standard_normal({SHAPE}, dtype=np.float32)
layer = numbabn.BatchNormalization()
layer(x, training=True)
layer.backward(np.ones_like(x))
"""

# One kernel loaded from the disk cache: Numba's own first-use cost, which any cached Numba
# function pays once per process (it initializes Numba's CPU target, and that imports SciPy's
# BLAS where SciPy is installed; docs/performance.md, "Start-up"). The first step's time above
# this is numbabn's.
ONE_KERNEL = """
import numpy as np
from numbabn.cpu import kernels
kernels.any_nan(np.zeros((1, 64)))
"""

# Point Numba at an empty cache directory (removed when the process exits): every kernel the
# first step needs is compiled from scratch.
EMPTY_KERNEL_CACHE = """
import os, tempfile
kernel_cache = tempfile.TemporaryDirectory()
os.environ["NUMBA_CACHE_DIR"] = kernel_cache.name
"""


class Startup:
    """Import time and time to the first training step, in a fresh interpreter."""

    def setup(self):
        # The kernels a (256, 64) step uses are now in the on-disk cache, even on the first run
        # after they changed: the warm timings below never include a compilation.
        x = np.zeros(SHAPE, dtype=np.float32)
        layer = numbabn.BatchNormalization()
        layer(x, training=True)
        layer.backward(x)

    def timeraw_import(self):
        return "import numbabn", fresh_interpreter_setup()

    def timeraw_import_and_first_step(self):
        """Import, then forward and backward on (256, 64), kernels loaded from the disk cache."""
        return FIRST_STEP, fresh_interpreter_setup()

    def timeraw_import_and_one_kernel(self):
        """Import, then one small kernel (the step uses it too) loaded from the disk cache."""
        return ONE_KERNEL, fresh_interpreter_setup()


class ColdStartup:
    """Import and first training step with an empty kernel cache: every kernel compiles."""

    # Each sample takes seconds; a few are enough to see a change.
    repeat = (1, 5, 30.0)
    rounds = 1

    def timeraw_import_and_first_step(self):
        return FIRST_STEP, fresh_interpreter_setup() + EMPTY_KERNEL_CACHE

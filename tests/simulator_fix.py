"""A lock for the CUDA simulator's shared-memory allocation (test-only).

Numba's simulator runs the threads of a block as Python threads and gives them one array per
``cuda.shared.array`` call site, found in a dict: but it looks the site up and inserts a new
array without a lock, so two threads that reach the call at once can get two different arrays.
A block's reduction then loses one thread's contribution, a few times in a hundred launches.
Real GPUs have no such problem; the tests install this before any kernel runs.
"""
import sys
import threading

import numpy as np


def install():
    from numba import config
    if not config.ENABLE_CUDASIM:
        return
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support
    original = kernelapi.FakeCUDAShared.array
    if getattr(original, "locked", False):
        return
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:          # dynamic shared memory: no lookup
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            found = self._allocations.get(site)
            if found is None:
                found = self._allocations[site] = np.empty(shape, dtype)
        return found

    array.locked = True
    kernelapi.FakeCUDAShared.array = array

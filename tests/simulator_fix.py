"""A lock for the CUDA simulator's shared-memory allocation, for the whole test session.

Numba's simulator runs the threads of a block as Python threads and gives them one array per
``cuda.shared.array`` call site, found in a dict, but it looks the site up and inserts a new
array without a lock: two threads that reach the call at once can get two different arrays, and
a block's reduction then loses one thread's values. Real GPUs allocate shared memory statically
and have no such problem. The fix is the self-check's (``numbabn.tools.selftest``), entered for the
session and held here: a context manager nobody references is finalized at once, and its exit
would put the unlocked method back.
"""
import contextlib

_session = contextlib.ExitStack()


def install():
    from numba import config
    if not config.ENABLE_CUDASIM:
        return
    from numbabn.tools.selftest import simulator_shared_arrays_locked
    _session.enter_context(simulator_shared_arrays_locked())


def installed():
    """Whether the simulator's shared arrays are allocated under the lock right now."""
    from numba.cuda.simulator.kernelapi import FakeCUDAShared
    return getattr(FakeCUDAShared.array, "locked", False)

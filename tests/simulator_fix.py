"""A lock for the CUDA simulator's shared-memory allocation, for the whole test session.

Numba's simulator runs the threads of a block as Python threads and gives them one array per
``cuda.shared.array`` call site, found in a dict, but it looks the site up and inserts a new
array without a lock: two threads that reach the call at once can get two different arrays, and
a block's reduction then loses one thread's values (a few launches in a hundred). Real GPUs have
no such problem. The fix is the self-check's (``numbabn.selftest``), kept entered for good.
"""


def install():
    from numba import config
    if not config.ENABLE_CUDASIM:
        return
    from numbabn.selftest import simulator_shared_arrays_locked
    simulator_shared_arrays_locked().__enter__()

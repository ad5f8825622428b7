"""When the CPU engine may run a kernel on Numba's thread pool, and when it must not.

Numba's threading layers differ in what survives (numba.readthedocs.io, "The Threading Layers"):

    layer       several Python threads at once      fork() after a parallel kernel
    tbb         safe                                safe
    omp (GNU)   safe                                the child aborts or hangs at its first
                                                    parallel region
    workqueue   the process aborts                  safe

numbabn works under all three, whichever Numba picked (or the user chose with
``NUMBA_THREADING_LAYER``):

* until the layer is known to be thread-safe, a parallel kernel runs only while holding a lock;
  a thread that finds the lock taken runs the kernel's serial twin instead of waiting;
* in a child forked from a process that already ran a GNU OpenMP region, every kernel runs
  serially.

Serial and parallel kernels split the work into the same units and merge them in the same order,
so the fallbacks change the speed, never the results.
"""
import os
import threading

import numba

_THREAD_SAFE = ("tbb", "omp")

_lock = threading.Lock()
_layer = None              # the layer Numba chose, known after the first parallel kernel
_parallel = True           # false in a forked child of a process that used GNU OpenMP


def _known_layer():
    try:
        return numba.threading_layer()
    except ValueError:     # no parallel kernel has run in this process yet
        return None


def _after_fork_in_child():
    global _parallel, _layer, _lock
    _layer = _known_layer()
    if _layer == "omp":
        _parallel = False
    # a lock that another thread of the parent held at fork() would stay held in the child
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def runner(kernel):
    """The callable that runs ``kernel`` (a parallel kernel with a ``.serial`` twin) safely."""
    if not _parallel:
        return kernel.serial
    if _layer in _THREAD_SAFE:
        return kernel
    return lambda *args: _exclusive(kernel, args)


def _exclusive(kernel, args):
    global _layer
    lock = _lock
    if not lock.acquire(blocking=False):
        return kernel.serial(*args)
    try:
        result = kernel(*args)
    finally:
        lock.release()
    if _layer is None:
        _layer = _known_layer()
    return result

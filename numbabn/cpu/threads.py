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

Where the pool is allowed, whether a kernel runs on it is decided from measured cost
(:class:`Choice`): a kernel site (kernel, problem size) times both twins where it is called and
keeps the faster. Timed alone, a parallel kernel usually wins; timed inside a NumPy training loop,
Numba's OpenMP workers and OpenBLAS's threads spin against each other on a small machine and the
same parallel kernel can take 10x its serial twin (and slow the matrix products around it as much),
so the site goes serial and the pools stop fighting. The choice is probed again now and then, and
at once when the chosen twin gets much slower, so a process that moves from one regime to the
other follows it. ``docs/performance.md`` ("Inside a training loop") has the numbers.
"""
import collections
import os
import threading
import time

import numba

_clock = time.perf_counter            # tests replace it with a fake clock

_THREAD_SAFE = ("tbb", "omp")

_lock = threading.Lock()
_layer = None              # the layer Numba chose, known after the first parallel kernel
_parallel = True           # false in a forked child of a process that used GNU OpenMP


def tbb_library_dir():
    """The directory of a pip-installed TBB (``pip install tbb``), or None.

    Numba loads TBB only from the loader's path, which a virtual environment's ``lib`` is not
    on: a process started with this directory on ``LD_LIBRARY_PATH`` can use the tbb layer.
    """
    import sys
    for prefix in (sys.prefix, sys.base_prefix):
        for lib in ("lib", "lib64"):
            path = os.path.join(prefix, lib)
            if os.path.exists(os.path.join(path, "libtbb.so.12")):
                return path
    return None


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
    return lambda *args: _exclusive(kernel, args)[0]


def _exclusive(kernel, args):
    """Run the parallel twin unless another thread holds the pool (then the serial one);
    returns ``(result, whether the parallel twin ran)``."""
    global _layer
    if _layer in _THREAD_SAFE:
        return kernel(*args), True
    lock = _lock
    if not lock.acquire(blocking=False):
        return kernel.serial(*args), False
    try:
        result = kernel(*args)
    finally:
        lock.release()
    if _layer is None:
        _layer = _known_layer()
    return result, True


# ------------------------------------------------------------------------------------------------
# serial or parallel, from measured cost

POLICIES = ("auto", "parallel", "serial")
_policy = "auto"


def set_policy(policy):
    """``"auto"`` (measured per kernel site), ``"parallel"`` or ``"serial"``; returns the old one.

    Only benchmarks and tests force a policy: results are the same bits under each.
    """
    global _policy
    if policy not in POLICIES:
        raise ValueError(f"`policy` must be one of {POLICIES}. Received: policy={policy!r}")
    old, _policy = _policy, policy
    _sites.clear()
    return old


class Choice:
    """The serial/parallel decision of one kernel site, from the times of its own calls.

    * Warm-up: the first call of each twin is not counted (a cache load, first-touch page
      faults), then the twins alternate until each has ``SAMPLES`` times; the faster median wins.
    * Then the chosen twin runs, and every ``interval`` calls the other one is probed (once for
      the parallel twin, whose probe inside a fight is the expensive one; twice for the serial):
      if it is faster now it takes over and the interval restarts at ``FIRST_INTERVAL``, else
      the interval grows ``GROWTH`` times (``GROWTH ** 2`` times when the probe lost by more
      than ``JUMP``, as a parallel probe inside a fight does) up to ``LAST_INTERVAL``: a settled
      site spends well under a thousandth of its calls on probes.
    * A call of the chosen parallel twin that takes more than ``JUMP`` times its median probes
      the serial one at once: another pool (a BLAS's) started spinning beside it.
    """

    SAMPLES = 3
    PROBES = {True: 1, False: 2}        # calls of a probe, by the probed twin
    FIRST_INTERVAL = 32
    GROWTH = 4
    LAST_INTERVAL = 4096
    JUMP = 2.0

    __slots__ = ("kernel", "parallel", "times", "warm", "countdown", "interval", "probing",
                 "reference", "lock")

    def __init__(self, kernel):
        self.kernel = kernel
        self.parallel = True            # the twin in use once the warm-up is over
        self.times = {True: collections.deque(maxlen=self.SAMPLES),
                      False: collections.deque(maxlen=self.SAMPLES)}
        self.warm = {True: False, False: False}
        self.countdown = None           # None while warming up
        self.interval = self.FIRST_INTERVAL
        self.probing = 0                # probe calls of the other twin still to make
        self.reference = None           # the chosen twin's median at the last decision
        # calls from several Python threads share a site: its bookkeeping (not the kernel) is
        # done under this lock
        self.lock = threading.Lock()

    def __call__(self, *args):
        with self.lock:
            parallel = self._next()
        start = _clock()
        if parallel:
            result, parallel = _exclusive(self.kernel, args)
        else:
            result = self.kernel.serial(*args)
        seconds = _clock() - start
        with self.lock:
            self._record(parallel, seconds)
        return result

    def _next(self):
        if self.countdown is None:      # warming up: the twin with fewer counted times
            for parallel in (True, False):
                if not self.warm[parallel]:
                    return parallel
            return len(self.times[True]) <= len(self.times[False])
        if self.probing:
            return not self.parallel
        return self.parallel

    def _record(self, parallel, seconds):
        if not self.warm[parallel]:
            self.warm[parallel] = True
            return
        times = self.times[parallel]
        if self.countdown is None:
            times.append(seconds)
            if len(self.times[True]) == len(self.times[False]) == self.SAMPLES:
                self._decide(self._faster())
            return
        if parallel != self.parallel:   # a probe of the other twin
            if self.probing <= 0:       # another thread's probe finished it already, or the
                return                  # pool was busy and the serial twin ran instead
            times.append(seconds)
            self.probing -= 1
            if not self.probing:
                chosen = self._faster()
                if chosen == self.parallel:
                    # a probe that lost by far (a fight) is not worth repeating soon
                    lost_by_far = seconds > self.JUMP * self.reference
                    growth = self.GROWTH ** 2 if lost_by_far else self.GROWTH
                    self.interval = min(growth * self.interval, self.LAST_INTERVAL)
                else:
                    self.interval = self.FIRST_INTERVAL
                self._decide(chosen)
            return
        # only a parallel twin can be caught in a fight; a slow serial call is just noise
        jumped = parallel and seconds > self.JUMP * self.reference
        times.append(seconds)
        self.countdown -= 1
        if jumped or self.countdown <= 0:
            if jumped:
                self.interval = self.FIRST_INTERVAL
            self.times[not parallel].clear()
            self.probing = self.PROBES[not parallel]

    def _decide(self, parallel):
        self.parallel = parallel
        self.reference = _median(self.times[parallel])
        self.countdown = self.interval

    def _faster(self):
        """Whether the parallel twin is the faster, by the medians of the kept times (a probe
        keeps only its own fresh times for the probed twin)."""
        return _median(self.times[True]) < _median(self.times[False])


def _median(times):
    """``statistics.median`` of a few timings, without importing ``statistics`` (and with it
    ``decimal`` and ``fractions``) when numbabn is imported."""
    ordered = sorted(times)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


_sites = {}


def pick(kernel, a, serial_below):
    """The callable that runs ``kernel`` on the array ``a`` (whose size sets the work): serial
    below ``serial_below`` elements (waking the pool costs more than the work there), else by
    the policy. Sites are per kernel, shape and dtype."""
    if a.size < serial_below or not _parallel:
        return kernel.serial
    policy = _policy
    if policy == "auto":
        if numba.get_num_threads() == 1:          # a pool of one: nothing to choose
            return kernel.serial
        key = (kernel, a.shape, a.dtype)
        site = _sites.get(key)
        if site is None:
            if len(_sites) > 4096:      # a process that sees endless new shapes
                _sites.clear()
            site = _sites[key] = Choice(kernel)
        return site
    return runner(kernel) if policy == "parallel" else kernel.serial

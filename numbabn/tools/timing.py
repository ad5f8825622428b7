"""The one timer of the benchmarks: the median of repeated timed calls.

A *sample* is ``inner`` calls of a function in a row between two readings of a clock, divided by
``inner``; a cell is the median of its samples (one call delayed by another process moves the
median little). Two clocks:

* :class:`HostClock`: wall time (``time.perf_counter``). A ``sync`` hook, called before each
  reading, brings into the interval the work a call queued on a device.
* :class:`CudaEventClock`: device time between two CUDA events recorded on a CuPy stream, so a
  run of ``inner`` calls lets the host's launch of one overlap the device's work on the last,
  as in a training loop.

``python -m numbabn bench`` interleaves its implementations round-robin and ``loop`` times blocks
of training steps between idle gaps; both take their samples with :func:`sample`. ``selftest``
and the asv suite use :func:`median_seconds`. Nothing here imports an optional package.
"""
import statistics
import time


class HostClock:
    """Wall time in seconds; ``sync()`` (if given) runs before each reading."""

    def __init__(self, sync=None):
        self._sync = sync

    def sync(self):
        if self._sync is not None:
            self._sync()

    def start(self):
        self.sync()
        return time.perf_counter()

    def stop(self, started):
        self.sync()
        return time.perf_counter() - started


class CudaEventClock:
    """Seconds between two CUDA events on a CuPy ``stream`` (default: CuPy's current one)."""

    def __init__(self, cp, stream=None):
        self.cp = cp
        self.stream = cp.cuda.get_current_stream() if stream is None else stream
        self._start, self._end = cp.cuda.Event(), cp.cuda.Event()

    def sync(self):
        self.stream.synchronize()

    def start(self):
        self._start.record(self.stream)
        return self._start

    def stop(self, started):
        self._end.record(self.stream)
        self._end.synchronize()
        return self.cp.cuda.get_elapsed_time(started, self._end) * 1e-3


HOST = HostClock()


def sample(fn, inner=1, clock=HOST):
    """One sample: seconds per call of ``inner`` calls of ``fn`` in a row on ``clock``."""
    started = clock.start()
    for _ in range(inner):
        fn()
    return clock.stop(started) / inner


def samples(fn, repeats, inner=1, warmup=0, clock=HOST, min_time=0.0):
    """``warmup`` untimed calls, then samples (see :func:`sample`): at least ``repeats``, and
    more until ``min_time`` seconds of wall time have passed. Returns the list in order."""
    for _ in range(warmup):
        fn()
    clock.sync()
    taken = []
    started = time.perf_counter()
    while len(taken) < repeats or time.perf_counter() - started < min_time:
        taken.append(sample(fn, inner, clock))
    return taken


def median_seconds(fn, repeats, inner=1, warmup=0, clock=HOST, min_time=0.0):
    """Median seconds per call of ``fn`` over :func:`samples` taken with these arguments."""
    return statistics.median(samples(fn, repeats, inner, warmup, clock, min_time))


def summarize(values):
    """Median, relative interquartile range, and the samples in the order they were taken."""
    ordered = sorted(values)
    median = statistics.median(ordered)
    if len(ordered) >= 4:
        q = statistics.quantiles(ordered, n=4)
        spread = (q[2] - q[0]) / median if median > 0 else 0.0
    else:
        spread = (ordered[-1] - ordered[0]) / median if median > 0 else 0.0
    return {"median": median, "spread": spread, "samples": list(values)}

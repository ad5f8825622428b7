"""Check the CUDA engine against the CPU engine on this machine's GPU, then time it against cuDNN.

``python -m numbabn selftest`` does two things:

1. **Verification.** For every case of :data:`CHECKS` (features last and first, ghost batches,
   batch renormalization with clipping, non-consecutive feature axes; float32, float64 and
   float16 input) it builds two identical ``BatchNormalization`` layers and drives one with NumPy
   arrays (the CPU engine) and the other with Numba device arrays (the CUDA engine) through the
   same training steps, ``y = layer(x, training=True)`` then ``dx = layer.backward(dy)``, and one
   inference call with its backward. Outputs, input gradients, ``layer.grads`` and every weight
   are compared after each call, within :data:`TOLERANCE` (per result dtype, the table of
   :mod:`numbabn.tools.tolerances` that the test suite uses too). A gradient sum over
   ``n`` values gets ``sqrt(n)`` times the absolute tolerance: both engines accumulate in float64,
   so their sums differ by the rounding of the float32 terms, which adds up like a random walk.
   One line per case; the exit status is 1 if any case fails.

2. **Benchmark** (needs CuPy; skipped with a note without it). On the float32 shapes of
   ``python -m numbabn bench``, it times ``layer(x, training=True)`` (``train``),
   ``layer(x, training=False)`` (``infer``) and ``train`` followed by ``layer.backward(dy)``
   (``step``) on CuPy arrays, against cuDNN's batch normalization called through CuPy
   (``cupy.cudnn.batch_normalization_forward_training``, ``..._forward_inference`` and
   ``batch_normalization_backward``). Every case is also timed against a device-to-device copy of
   an array of the input's size, measured in the same run. Cells report the median time, the
   bandwidth the op must use (bytes moved at least, :mod:`numbabn.tools.traffic`: train = 1 copy
   + 1 read of the input, infer = 1 copy, step = 2 copies + 4 reads, divided by the time) and that
   bandwidth as a percentage of the measured copy bandwidth. Before timing, cuDNN's outputs are
   compared with numbabn's, so that the table only compares implementations that compute the same
   thing.

Timing: every callable is warmed up (its kernels compiled) first; a sample is ``INNER`` calls in a
row between two CUDA events on CuPy's current stream, their mean, so that the host's work for one
call overlaps the device's work for the previous one, as in a training loop; each cell is the
median of its samples (:mod:`numbabn.tools.timing`). numbabn queues its kernels on the input's
stream (CuPy's, the legacy default stream unless CuPy is told otherwise), which the events see.

Without a CUDA device the command says so and returns 2. Under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), which runs every CUDA thread as a Python thread, the verification
runs on tiny shapes (as ``--quick`` does anywhere), with the simulator's shared-memory lookup made
thread-safe (:func:`simulator_shared_arrays_locked`), and there is no benchmark.

The module imports no optional package at import time (the command line imports it to build its
parser); CuPy is imported when the benchmark runs.
"""
import argparse
import contextlib
import dataclasses
import sys
import threading
import warnings
from typing import Dict, List, Optional

import numpy as np

from .._dispatch import device_of
from ..layer import BatchNormalization
from . import shapes, timing, tolerances, traffic
from ._cli import positive_int
from .bench import EPSILON, MOMENTUM, format_table, layer_ops, make_data
from .shapes import Case
from .traffic import COPY_PASSES, OPS

# ------------------------------------------------------------------------------------------------
# verification

# (rtol, atol) per dtype of the compared result: the test suite's table.
TOLERANCE = tolerances.TOLERANCE
TRAIN_STEPS = 3
# Moving statistics move visibly within TRAIN_STEPS steps (the default 0.99 would hide them).
CHECK_MOMENTUM = 0.9
# Far from the renorm statistics' initial values (mean 0, stddev 1), so the clipping is active.
CLIPPING = {"rmax": 1.5, "rmin": 0.67, "dmax": 0.5}
RENORM = {"renorm": True, "renorm_clipping": CLIPPING, "renorm_momentum": 0.9}
# At most this many failing comparisons are named on a FAIL line.
NAMED_FAILURES = 4


@dataclasses.dataclass(frozen=True)
class Check:
    """A verification case: input shape and dtype, and extra ``BatchNormalization`` arguments."""
    name: str
    shape: tuple
    dtype: str = "float32"
    kwargs: dict = dataclasses.field(default_factory=dict)

    def label(self):
        return f"{self.name} {'x'.join(map(str, self.shape))} {self.dtype}"


# Shapes for a GPU: several blocks per reduction, feature counts that are not a multiple of the
# 32-wide feature tiles, planes longer than one reduction chunk (4096 values).
CHECKS = (
    Check("NC", (16384, 100)),
    Check("NC", (16384, 100), "float64", {"dtype": "float64"}),
    Check("NC", (16384, 100), "float16"),
    Check("NHWC", (16, 28, 28, 40)),
    Check("NCHW", (8, 24, 80, 80), kwargs={"axis": 1}),
    Check("NCHW", (8, 24, 80, 80), "float64", {"axis": 1, "dtype": "float64"}),
    Check("ghost NHWC", (64, 8, 8, 48), kwargs={"virtual_batch_size": 8}),
    Check("ghost NCHW", (32, 16, 24, 24), kwargs={"axis": 1, "virtual_batch_size": 4}),
    Check("renorm", (8192, 72), kwargs=RENORM),
    Check("axis [1, 3]", (16, 12, 20, 10), kwargs={"axis": [1, 3]}),
)

# The same features on tiny shapes (at most a few hundred values): on the simulator every CUDA
# thread is a Python thread.
QUICK_CHECKS = (
    Check("NC", (12, 10)),
    Check("NC", (12, 10), "float64", {"dtype": "float64"}),
    Check("NC", (12, 10), "float16"),
    Check("NHWC", (4, 5, 6, 3)),
    Check("NCHW", (4, 3, 5, 6), kwargs={"axis": 1}),
    Check("NCHW", (4, 3, 5, 6), "float64", {"axis": 1, "dtype": "float64"}),
    Check("ghost", (8, 5), kwargs={"virtual_batch_size": 2}),
    Check("renorm", (24, 5), kwargs=RENORM),
    Check("axis [1, 3]", (6, 2, 3, 4), kwargs={"axis": [1, 3]}),
)


@dataclasses.dataclass
class Comparison:
    """One result of the CUDA layer against the CPU layer's."""
    label: str
    error: float        # max |cuda - cpu|
    ratio: float        # max of |cuda - cpu| / tolerance, elementwise (inf: shape or dtype differ)
    ok: bool
    note: str = ""


@dataclasses.dataclass
class CheckResult:
    check: Check
    comparisons: List[Comparison] = dataclasses.field(default_factory=list)
    error: Optional[str] = None      # an exception that stopped the case

    @property
    def ok(self):
        return self.error is None and bool(self.comparisons) and all(
            c.ok for c in self.comparisons)

    @property
    def max_error(self):
        return max((c.error for c in self.comparisons), default=float("nan"))

    def worst(self):
        return max(self.comparisons, key=lambda c: c.ratio, default=None)

    def line(self):
        verdict = "PASS" if self.ok else "FAIL"
        head = f"{verdict}  {self.check.label():<32}"
        if self.error is not None:
            return f"{head} error: {self.error}"
        text = f"{head} max abs err {self.max_error:.1e}"
        failed = [c for c in self.comparisons if not c.ok]
        if failed:
            named = ", ".join(f"{c.label}{' (' + c.note + ')' if c.note else ''}"
                              for c in failed[:NAMED_FAILURES])
            more = len(failed) - NAMED_FAILURES
            return (f"{text}; {len(failed)} of {len(self.comparisons)} comparisons out of "
                    f"tolerance: {named}{f', {more} more' if more > 0 else ''}")
        worst = self.worst()
        return f"{text} ({worst.ratio:.2g} of tolerance, at {worst.label})"


def to_host(a):
    """A NumPy copy of a result of either layer (device arrays are copied back)."""
    if isinstance(a, np.ndarray):
        return a
    return a.copy_to_host()


def compare(label, got, want, scale=1.0, on_device=True):
    """Compare the CUDA layer's result ``got`` with the CPU layer's ``want`` (NumPy).

    The tolerance is that of ``want``'s dtype, ``|got - want| <= atol * scale + rtol * |want|``
    elementwise; ``scale`` loosens the absolute part for sums of many values. ``on_device``:
    ``got`` must be a device array (the CUDA engine's results are; ``get_weights`` copies back).
    """
    if on_device:
        if device_of(got) != "cuda":
            # a host array from the CUDA engine would be a hidden round trip through the host
            return Comparison(label, float("inf"), float("inf"), False,
                              f"a {type(got).__name__}, not a device array")
        got = to_host(got)
    want = np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return Comparison(label, float("inf"), float("inf"), False,
                          f"{got.dtype}{got.shape}, expected {want.dtype}{want.shape}")
    rtol, atol = TOLERANCE[tolerances.key(want.dtype)]
    want64 = want.astype(np.float64)
    diff = np.abs(got.astype(np.float64) - want64)
    diff = np.where(np.isnan(diff), np.inf, diff)          # NaN never passes
    bound = atol * scale + rtol * np.abs(want64)
    ok = bool(np.all(diff <= bound))
    safe = np.where(bound > 0, bound, 1.0)
    ratios = np.where(diff == 0, 0.0, np.where(bound > 0, diff / safe, np.inf))
    if not diff.size:
        return Comparison(label, 0.0, 0.0, ok)
    return Comparison(label, float(diff.max()), float(ratios.max()), ok)


def _weight_key(var):
    """``"gamma"`` for the variable ``"batch_normalization_3/gamma:0"``."""
    return var.name.split("/")[-1].split(":")[0]


def _initial_weights(layer, rng):
    """Random weights in :attr:`BatchNormalization.weights` order (the defaults are too special:
    gamma 1 and beta 0 hide a swapped or missing factor)."""
    values = {}
    for var in layer.weights:
        key, shape = _weight_key(var), var.shape
        if key == "gamma":
            v = rng.uniform(0.5, 1.5, shape)
        elif key == "moving_variance":
            v = rng.uniform(0.5, 2.0, shape)
        elif key == "moving_stddev":             # created after moving_variance
            v = np.sqrt(values["moving_variance"])
        elif key == "renorm_stddev":
            v = rng.uniform(0.7, 1.4, shape)
        else:                                     # beta, moving_mean, renorm_mean
            v = rng.normal(0.0, 0.5, shape)
        values[key] = v.astype(var.dtype)
    return list(values.values())


def run_check(check, seed=0):
    """Drive a CPU and a CUDA layer through the same calls; every result compared."""
    result = CheckResult(check)
    try:
        _drive(check, seed, result.comparisons.append)
    except Exception as err:   # a failing case must not stop the others: report it and go on
        result.error = f"{type(err).__name__}: {err}"
    return result


def _drive(check, seed, add):
    """The calls of :func:`run_check`; ``add`` receives each :class:`Comparison`."""
    from numba import cuda

    rng = np.random.default_rng(seed)
    kwargs = {"momentum": CHECK_MOMENTUM, **check.kwargs}
    cpu, gpu = BatchNormalization(**kwargs), BatchNormalization(**kwargs)
    cpu.build(check.shape)
    gpu.build(check.shape)
    weights = _initial_weights(cpu, rng)
    cpu.set_weights(weights)
    gpu.set_weights(weights)
    # how many values are summed into one gradient entry
    per_feature = max(int(np.prod(check.shape)) // int(np.prod(cpu.weights[0].shape)), 1)
    dtype = np.dtype(check.dtype)

    def call(where, training):
        x = rng.normal(2.0, 3.0, check.shape).astype(dtype)
        dy = rng.normal(0.0, 1.0, check.shape).astype(dtype)
        y_cpu = cpu(x, training=training)
        y_gpu = gpu(cuda.to_device(x), training=training)
        add(compare(f"{where} y", y_gpu, y_cpu))
        dx_cpu = cpu.backward(dy)
        dx_gpu = gpu.backward(cuda.to_device(dy))
        add(compare(f"{where} dx", dx_gpu, dx_cpu))
        if sorted(gpu.grads) != sorted(cpu.grads):
            add(Comparison(f"{where} grads", float("inf"), float("inf"), False,
                           f"keys {sorted(gpu.grads)}, expected {sorted(cpu.grads)}"))
        for key in sorted(set(cpu.grads) & set(gpu.grads)):
            add(compare(f"{where} grads[{key}]", gpu.grads[key], cpu.grads[key],
                        scale=np.sqrt(per_feature)))
        for var, got, want in zip(cpu.weights, gpu.get_weights(), cpu.get_weights()):
            add(compare(f"{where} {_weight_key(var)}", got, want, on_device=False))

    for step in range(1, TRAIN_STEPS + 1):
        call(f"step {step}", True)
    call("inference", False)


@contextlib.contextmanager
def simulator_shared_arrays_locked():
    """Inside the block, the CUDA simulator hands every thread of a block the same shared array.

    The simulator (numba-cuda 0.30) looks ``cuda.shared.array`` up by call site and creates it
    when missing, without a lock: two threads of a block that get there at the same time may each
    create one, and the block's reduction then reads slots nobody wrote. With fast thread
    switching that fails about one case in a few hundred. This replaces the lookup with the same
    one under a lock (and reads the call site from the frame instead of a formatted traceback).
    Nothing happens where the simulator's class is not the expected one.
    """
    try:
        from numba.cuda.simulator.kernelapi import FakeCUDAShared
    except ImportError:
        FakeCUDAShared = None
    original = getattr(FakeCUDAShared, "array", None)
    if original is None:
        yield
        return
    from numba.core import types
    from numba.np import numpy_support
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        allocations = getattr(self, "_allocations", None)
        if shape == 0 or alignment is not None or allocations is None:
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = allocations.get(caller)
            if res is None:
                res = allocations[caller] = np.empty(shape, dtype)
        return res

    array.locked = True                  # tests assert the lock is in place for their session
    FakeCUDAShared.array = array
    try:
        yield
    finally:
        FakeCUDAShared.array = original


def verify(checks, out):
    """Run and print every check; returns the list of :class:`CheckResult`."""
    results = []
    for check in checks:
        res = run_check(check)
        results.append(res)
        print("  " + res.line(), file=out, flush=True)
    passed = sum(r.ok for r in results)
    print(f"{passed} of {len(results)} cases pass", file=out, flush=True)
    return results


# ------------------------------------------------------------------------------------------------
# benchmark

# the large shapes of ``python -m numbabn bench``, and the same layouts smaller for --quick
BENCH_CASES = shapes.LARGE_CASES
QUICK_BENCH_CASES = shapes.QUICK_CASES
DEFAULT_REPEATS = 20
QUICK_REPEATS = 5
WARMUP = 3
# Calls per sample: one large call is tens of microseconds on a current GPU, close to the host's
# cost of launching it; a run of calls lets the launches overlap the device's work.
INNER = 10
# Relative difference from numbabn above which cuDNN's times are flagged as not comparable.
AGREEMENT_TOL = 1e-3


class Skip(Exception):
    """The benchmark, or one implementation of a case, cannot run here; the text says why."""


def import_cupy():
    """CuPy with a usable device, or :class:`Skip` saying why not."""
    try:
        import cupy
    except Exception as err:       # ImportError, or a broken installation
        raise Skip(f"CuPy is not importable ({type(err).__name__}: {err}); "
                   "pip install cupy-cuda12x (or the package for your CUDA version)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:
        raise Skip(f"CuPy finds no CUDA device ({type(err).__name__}: {err})") from None
    if count < 1:
        raise Skip("CuPy finds no CUDA device")
    return cupy


class EventTimer:
    """Median seconds per call of a callable, from CUDA events on CuPy's current stream (see
    :mod:`numbabn.tools.timing`)."""

    def __init__(self, cp, repeats, inner=INNER, warmup=WARMUP):
        self.repeats, self.inner, self.warmup = repeats, inner, warmup
        self.clock = timing.CudaEventClock(cp)
        self.stream = self.clock.stream

    def __call__(self, fn):
        return timing.median_seconds(fn, self.repeats, inner=self.inner, warmup=self.warmup,
                                     clock=self.clock)


def copy_bandwidth(cp, nbytes, timer):
    """Device copy bandwidth (bytes read + written per second) for arrays of ``nbytes``: the
    faster of ``cudaMemcpyAsync`` device to device and a one-line elementwise copy kernel."""
    src = cp.ones(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    runtime = cp.cuda.runtime
    stream_ptr = timer.stream.ptr
    kernel = cp.ElementwiseKernel("T x", "T y", "y = x", "numbabn_selftest_copy")

    def memcpy():
        runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes,
                            runtime.memcpyDeviceToDevice, stream_ptr)

    times = {"memcpy": timer(memcpy), "kernel": timer(lambda: kernel(src, dst))}
    return {k: COPY_PASSES * src.nbytes / t for k, t in times.items()}


class Cudnn:
    """cuDNN batch normalization through ``cupy.cudnn`` (CuPy's own wrappers, in
    ``cupy/cudnn.pyx``):

    * ``batch_normalization_forward_training(x, gamma, beta, running_mean, running_var, mean,
      inv_std, eps, decay, is_for_conv2d, cudnn_mode, debug, d_layout)``: with ``mean`` and
      ``inv_std`` None it returns ``(y, saved_mean, saved_inv_std)`` and updates the running
      statistics in place with factor ``1 - decay`` (so ``decay`` is Keras' momentum);
    * ``batch_normalization_forward_inference(x, gamma, beta, mean, var, eps, is_for_conv2d,
      cudnn_mode, d_layout)`` returns y;
    * ``batch_normalization_backward(x, gamma, gy, mean, inv_std, eps, is_for_conv2d, cudnn_mode,
      debug, d_layout)`` returns ``(gx, ggamma, gbeta)`` from the saved statistics.
    """

    def __init__(self, cp):
        try:
            import cupy.cudnn as api
            from cupy.cuda import cudnn as lib
            self.version = lib.getVersion()
        except Exception as err:    # CuPy without cuDNN: ImportError, or a library load error
            raise Skip(f"cuDNN is not usable through CuPy ({type(err).__name__}: {err})") from None
        self.cp, self.api, self.lib = cp, api, lib

    def modes(self, case):
        """``(is_for_conv2d, d_layout, {op: [(mode name, mode)]})``: the cuDNN modes tried for
        each op of ``case``; the fastest that agrees with numbabn is reported."""
        lib = self.lib
        if case.layout == "NC":
            # With is_for_conv2d False CuPy describes an (N, C) input as an (N, C, 1, 1) NCHW
            # tensor. On it PER_ACTIVATION (cuDNN's mode for fully connected layers) and SPATIAL
            # both normalize each feature over the N samples: both are tried.
            both = [("PER_ACTIVATION", lib.CUDNN_BATCHNORM_PER_ACTIVATION),
                    ("SPATIAL", lib.CUDNN_BATCHNORM_SPATIAL)]
            return False, lib.CUDNN_TENSOR_NCHW, {"train": both, "infer": both, "step": both}
        if case.layout in ("NHWC", "NCHW") and len(case.shape) == 4:
            # SPATIAL normalizes each channel over N, H and W, in either memory layout.
            # SPATIAL_PERSISTENT is cuDNN's faster variant for training and backward only (its
            # inference call takes SPATIAL or PER_ACTIVATION); it may overflow on extreme
            # values, which the agreement check would catch.
            d_layout = lib.CUDNN_TENSOR_NHWC if case.layout == "NHWC" else lib.CUDNN_TENSOR_NCHW
            spatial = ("SPATIAL", lib.CUDNN_BATCHNORM_SPATIAL)
            persistent = ("SPATIAL_PERSISTENT", lib.CUDNN_BATCHNORM_SPATIAL_PERSISTENT)
            return True, d_layout, {"train": [spatial, persistent], "infer": [spatial],
                                    "step": [spatial, persistent]}
        raise Skip(f"cuDNN takes 2-D (N, C) or 4-D NCHW/NHWC inputs, not {case.label()} "
                   f"with axis {case.axis}")

    def ops(self, case, data, conv2d, d_layout, mode):
        """``{op: f}`` for one cuDNN mode, on fresh copies of the case's weights."""
        cp, api = self.cp, self.api
        x, dy = cp.asarray(data.x), cp.asarray(data.dy)
        gamma, beta = cp.asarray(data.gamma), cp.asarray(data.beta)
        running_mean = cp.asarray(data.moving_mean)
        running_var = cp.asarray(data.moving_variance)

        def train():
            y, _, _ = api.batch_normalization_forward_training(
                x, gamma, beta, running_mean, running_var, None, None, EPSILON, MOMENTUM,
                conv2d, mode, False, d_layout)
            return y

        def infer():
            return api.batch_normalization_forward_inference(
                x, gamma, beta, running_mean, running_var, EPSILON, conv2d, mode, d_layout)

        def step():
            _, mean, inv_std = api.batch_normalization_forward_training(
                x, gamma, beta, running_mean, running_var, None, None, EPSILON, MOMENTUM,
                conv2d, mode, False, d_layout)
            dx, _, _ = api.batch_normalization_backward(
                x, gamma, dy, mean, inv_std, EPSILON, conv2d, mode, False, d_layout)
            return dx

        return {"train": train, "infer": infer, "step": step}


def relative_difference(cp, got, want):
    """max |got - want| ÷ max(1, max |want|), on the device."""
    got, want = cp.asarray(got, dtype=cp.float64), cp.asarray(want, dtype=cp.float64)
    scale = max(1.0, float(cp.abs(want).max()))
    return float(cp.abs(got - want).max()) / scale


def reference_outputs(funcs):
    """Each op's output, the state-free op (infer) first so all start from the same weights."""
    return {op: funcs[op]() for op in ("infer", "train", "step")}


@dataclasses.dataclass
class BenchResult:
    case: Case
    copy: Dict[str, float]                  # bytes/s, by copy kind
    numbabn: Dict[str, float]               # seconds, by op
    cudnn: Dict[str, float] = dataclasses.field(default_factory=dict)
    cudnn_mode: Dict[str, str] = dataclasses.field(default_factory=dict)
    difference: Dict[str, float] = dataclasses.field(default_factory=dict)
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def copy_bandwidth(self):
        return max(self.copy.values())


def bench_case(cp, case, cudnn, timer):
    """Copy bandwidth, numbabn's times and cuDNN's (the fastest agreeing mode) for ``case``."""
    data = make_data(case)
    copy = copy_bandwidth(cp, case.nbytes, timer)
    ours = layer_ops(case, data, to=cp.asarray)    # on CuPy arrays
    expected = reference_outputs(ours)
    res = BenchResult(case, copy, {op: timer(ours[op]) for op in OPS})
    if cudnn is None:
        return res
    try:
        conv2d, d_layout, modes = cudnn.modes(case)
    except Skip as why:
        res.notes.append(f"cuDNN skipped: {why}")
        return res
    for op in OPS:
        for name, mode in modes[op]:
            try:
                with warnings.catch_warnings():
                    # CuPy's advice to call the _ex variant applies to float16 NHWC only
                    warnings.simplefilter("ignore")
                    funcs = cudnn.ops(case, data, conv2d, d_layout, mode)
                    diff = relative_difference(cp, reference_outputs(funcs)[op], expected[op])
                    if not diff <= AGREEMENT_TOL:
                        res.notes.append(f"cuDNN {name} {op} differs from numbabn by {diff:.1e} "
                                         "(relative): not timed")
                        continue
                    seconds = timer(funcs[op])
            except Exception as err:   # a mode this cuDNN or GPU does not support
                res.notes.append(f"cuDNN {name} {op} failed ({type(err).__name__}: {err})")
                continue
            if op not in res.cudnn or seconds < res.cudnn[op]:
                res.cudnn[op], res.cudnn_mode[op], res.difference[op] = seconds, name, diff
    return res


def benchmark(cp, args, out):
    """Run the benchmark with the CuPy module ``cp``; returns a :class:`BenchResult` per case."""
    try:
        cudnn = Cudnn(cp)
    except Skip as why:
        print(f"  {why}: timing numbabn alone", file=out, flush=True)
        cudnn = None
    cases = QUICK_BENCH_CASES if args.quick else BENCH_CASES
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    timer = EventTimer(cp, repeats)
    version = f"cuDNN {cudnn.version}" if cudnn is not None else "no cuDNN"
    print(f"  CuPy {cp.__version__}, {version}; {len(cases)} cases x {len(OPS)} ops, median of "
          f"{repeats} samples of {INNER} calls", file=out, flush=True)
    results = []
    for case in cases:
        res = bench_case(cp, case, cudnn, timer)
        print(f"  {case.label()}: copy {res.copy_bandwidth / 1e9:.0f} GB/s", file=out, flush=True)
        results.append(res)
    return results


def _cell(seconds, case, op, copy_bw):
    """(ms, GB/s, % of copy bandwidth) strings for one time."""
    if seconds is None:
        return "", "", ""
    rate = traffic.bytes_moved(op, case.nbytes) / seconds
    return f"{seconds * 1e3:.3f}", f"{rate / 1e9:.0f}", f"{100 * rate / copy_bw:.0f}%"


# column keys of the tables, then their headers (some headers repeat, keys do not)
BENCH_COLUMNS = ("case", "op", "ours_ms", "ours_rate", "ours_share", "cudnn_ms", "cudnn_rate",
                 "cudnn_share", "ratio", "mode", "difference")
BENCH_HEADERS = ("case", "op", "numbabn ms", "GB/s", "% copy", "cuDNN ms", "GB/s", "% copy",
                 "numbabn ÷ cuDNN", "cuDNN mode", "max diff")
COPY_COLUMNS = ("case", "MB", "memcpy", "kernel")
COPY_HEADERS = ("case", "MB", "memcpy GB/s", "copy kernel GB/s")


def bench_rows(results):
    """One row per (case, op): numbabn's and cuDNN's cells side by side."""
    rows = []
    for res in results:
        for op in OPS:
            ours, theirs = res.numbabn[op], res.cudnn.get(op)
            rows.append(dict(zip(BENCH_COLUMNS, (
                res.case.label(), op,
                *_cell(ours, res.case, op, res.copy_bandwidth),
                *_cell(theirs, res.case, op, res.copy_bandwidth),
                "" if theirs is None else f"{ours / theirs:.2f}",
                res.cudnn_mode.get(op, ""),
                "" if theirs is None else f"{res.difference[op]:.1e}"))))
    return rows


def copy_rows(results):
    return [dict(zip(COPY_COLUMNS, (res.case.label(), f"{res.case.nbytes / 1e6:.0f}",
                                    f"{res.copy['memcpy'] / 1e9:.0f}",
                                    f"{res.copy['kernel'] / 1e9:.0f}")))
            for res in results]


BENCH_LEGEND = (f"Medians. GB/s: bytes the op must move ({traffic.legend()}, of the input) "
                "÷ time; % copy: of the measured copy bandwidth (best of memcpy and a copy "
                "kernel, bytes read + written). "
                "numbabn ÷ cuDNN: time ratio (above 1: numbabn is slower). max diff: max |cuDNN "
                "- numbabn| ÷ max(1, max |numbabn|) of the op's output (dx for step).")


# ------------------------------------------------------------------------------------------------
# report


def device_description():
    """The device the CUDA engine runs on, in words."""
    from numba import config, cuda
    if config.ENABLE_CUDASIM:
        return "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    major, minor = dev.compute_capability
    return f"{name} (compute capability {major}.{minor})"


def versions():
    from importlib import metadata

    from .. import __version__
    parts = [f"numbabn {__version__}"]
    for package in ("numba", "numba-cuda", "numpy"):
        try:
            parts.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def write_markdown(path, info, checks, bench_results, notes):
    lines = ["# numbabn selftest", ""]
    lines += ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "## Verification: CUDA engine against CPU engine", "",
              f"{TRAIN_STEPS} training steps (forward + backward) and one inference call (with "
              "its backward) per case; y, dx, gradients and weights compared after each call.",
              "", "| case | result | max abs err | worst ÷ tolerance |",
              "| --- | --- | --- | --- |"]
    for res in checks:
        worst = res.worst()
        lines.append(f"| {res.check.label()} | {'PASS' if res.ok else 'FAIL'} | "
                     f"{res.max_error:.1e} | {'' if worst is None else f'{worst.ratio:.2g}'} |")
    if bench_results:
        lines += ["", "## Copy bandwidth (same run)", "",
                  format_table(copy_rows(bench_results), COPY_COLUMNS, COPY_HEADERS, True)]
        lines += ["", "## numbabn against cuDNN", "", BENCH_LEGEND, "",
                  format_table(bench_rows(bench_results), BENCH_COLUMNS, BENCH_HEADERS, True)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------
# command line

DESCRIPTION = """\
Check numbabn's CUDA engine on this machine's GPU: the same training steps and inference call on
NumPy input (CPU engine) and on Numba device arrays (CUDA engine) must give the same outputs,
gradients and weights (features last and first, ghost batches, renorm with clipping,
non-consecutive axes; float32, float64, float16 input). Then, when CuPy is installed, time the
layer on CuPy arrays against cuDNN's batch normalization and against the device's copy bandwidth.
Exit status: 0 all checks pass, 1 a check fails, 2 no CUDA device. Under Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1) the checks run on tiny shapes and there is no benchmark.
"""


def add_arguments(parser):
    """The ``selftest`` subcommand's options."""
    parser.add_argument("--quick", action="store_true",
                        help="tiny verification shapes; smaller benchmark shapes, "
                             f"{QUICK_REPEATS} samples")
    parser.add_argument("--repeats", type=positive_int, default=None, metavar="N",
                        help=f"benchmark samples per cell (default {DEFAULT_REPEATS}, "
                             f"{QUICK_REPEATS} with --quick)")
    parser.add_argument("--skip-bench", action="store_true", help="verify only, no benchmark")
    parser.add_argument("--markdown", metavar="PATH", help="also write the results as Markdown")


def run(args, out=None):
    """Entry point of ``python -m numbabn selftest``; returns the exit status."""
    out = sys.stdout if out is None else out
    from numba import config, cuda
    if not cuda.is_available():
        print("numbabn selftest: no CUDA device is available (numba.cuda.is_available() is "
              "False): check the NVIDIA driver and `python -m numba -s`; NUMBA_ENABLE_CUDASIM=1 "
              "runs the checks on Numba's CUDA simulator instead", file=sys.stderr)
        return 2
    simulator = bool(config.ENABLE_CUDASIM)
    info = {"device": device_description(), "versions": versions()}
    print(f"numbabn selftest on {info['device']}; {info['versions']}", file=out)
    checks = QUICK_CHECKS if args.quick or simulator else CHECKS
    if simulator and not args.quick:
        print("  the simulator runs every CUDA thread in Python: tiny shapes (as --quick)",
              file=out)
    print(f"\nVerification: CUDA engine (Numba device arrays) against CPU engine (NumPy), "
          f"{TRAIN_STEPS} training steps + 1 inference call per case (layout, shape, input "
          "dtype)", file=out, flush=True)
    switch = sys.getswitchinterval()
    with contextlib.ExitStack() as stack:
        if simulator:
            stack.enter_context(simulator_shared_arrays_locked())
            # Simulated threads wait for each other at every barrier; with the default 5 ms
            # switch interval each hand-over of the interpreter costs that long.
            sys.setswitchinterval(min(switch, 1e-4))
            stack.callback(sys.setswitchinterval, switch)
        check_results = verify(checks, out)
    failed = not all(r.ok for r in check_results)

    notes, bench_results = [], None
    if not args.skip_bench:
        print("\nBenchmark: numbabn on CuPy arrays against cuDNN", file=out, flush=True)
        try:
            if failed:
                raise Skip("a verification case failed: the timings would be of wrong results")
            cp = import_cupy()
            if simulator:
                raise Skip("the CUDA simulator has no meaningful timings")
            bench_results = benchmark(cp, args, out)
        except Skip as why:
            notes.append(f"benchmark skipped: {why}")
            print(f"  benchmark skipped: {why}", file=out, flush=True)
    if bench_results:
        print("\nCopy bandwidth (bytes read + written):", file=out)
        print(format_table(copy_rows(bench_results), COPY_COLUMNS, COPY_HEADERS), file=out)
        print("\nnumbabn against cuDNN:", file=out)
        print(format_table(bench_rows(bench_results), BENCH_COLUMNS, BENCH_HEADERS), file=out)
        print(BENCH_LEGEND, file=out)
        notes += [f"{res.case.label()}: {n}" for res in bench_results for n in res.notes]
        for note in notes:
            print(f"  - {note}", file=out)
    if args.markdown:
        write_markdown(args.markdown, info, check_results, bench_results, notes)
        print(f"Markdown written to {args.markdown}", file=out)
    return 1 if failed else 0


def main(argv=None, out=None):
    """Parse ``argv`` (selftest options only) and run."""
    parser = argparse.ArgumentParser(prog="python -m numbabn selftest", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv), out=out)

"""Speed of the layer against a memory roofline, plain NumPy, PyTorch and TensorFlow.

``python -m numbabn bench`` times three operations of ``BatchNormalization`` on float32 inputs:

* ``train``: ``layer(x, training=True)``, the training forward pass (batch statistics, moving
  average update);
* ``infer``: ``layer(x, training=False)``, normalization by the moving statistics;
* ``step``: ``layer(x, training=True)`` followed by ``layer.backward(dy)``.

Every case is timed against a roofline measured in the same run, on an array of the input's size
and on the same number of threads: a parallel Numba copy into a preallocated array and a parallel
Numba sum (read). Batch normalization cannot move less data than the traffic model of
:mod:`numbabn.tools.traffic` says (train: 1 copy + 1 read of x; infer: 1 copy; step: 2 copies +
4 reads), so an op's time divided by its floor says how far it is from the memory bound. A
second floor uses a copy into a freshly allocated array, because a new 64 MB output is mapped
afresh by the operating system and its pages are zeroed on first touch (every implementation
here returns a new array).

The peers are timed as their users call them: ``torch.nn.functional.batch_norm`` (channels-last
memory format for NHWC; autograd for ``step``, ``torch.no_grad()`` for ``infer``) and
``tf.compat.v1.nn.fused_batch_norm`` inside ``tf.function`` (``tf.GradientTape`` for ``step``),
with TensorFlow's default settings (oneDNN on unless ``TF_ENABLE_ONEDNN_OPTS`` says otherwise).
All run on the same number of threads. Before timing, every implementation's outputs are compared
with numbabn's, so the table only compares implementations that compute the same thing.

Timing: every callable is warmed up (compiled) first; then the rounds run every callable of a
case once, round-robin, with a short idle gap before each sample so that one library's spinning
worker threads do not slow the next; each cell is the median of its samples (each sample taken
with :func:`numbabn.tools.timing.sample`).

The module imports no optional package at import time (the command line imports it to build its
parser); PyTorch, TensorFlow and matplotlib are imported when used and skipped with a note when
they are missing: ``pip install "numbabn[bench]"`` installs them.
"""
import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from ..layer import BatchNormalization
from . import timing, traffic
from ._cli import ProgressBar, positive_int
from .shapes import CASES, Case
from .traffic import COPY_PASSES, OPS, READ_PASSES

INSTALL_HINT = 'pip install "numbabn[bench]"'
MOMENTUM = 0.99
EPSILON = 1e-3
GHOST_BATCH = 8
DEFAULT_REPS = 15
SMALL_REPS = 150
QUICK_REPS = 5
QUICK_SMALL_REPS = 40
# A small-case sample times this many calls in a row (their mean): one call is a few microseconds.
SMALL_INNER = 20
# Idle time before each sample, in seconds: OpenMP and Eigen worker threads spin for a while after
# a parallel region; without the gap they steal the cores from whichever library runs next.
GAP = 0.005
# Other processes using more than this many cores during a case make its numbers suspect.
OTHER_LOAD = 0.1
# Arrays at least this large are far beyond the caches (the floor is DRAM traffic).
BIG_BYTES = 1 << 24
# A cell whose interquartile range exceeds this fraction of its median is marked as noisy (on
# an idle 2-core VM, memory-bound cells spread by 10-20%).
NOISY = 0.25

DESCRIPTION = """\
Time numbabn's BatchNormalization (training forward, inference, training forward + backward) on
float32 inputs against a memory roofline measured in the same run (parallel Numba copy and read
kernels), a plain NumPy implementation, and PyTorch and TensorFlow when they are installed, all
on the same number of threads. Also measures the start-up cost (import + first training step)
with a warm and a cold kernel cache. Run it on an otherwise idle machine.
PyTorch, TensorFlow and matplotlib: pip install "numbabn[bench]".
"""


@dataclasses.dataclass
class Data:
    """The inputs of one case; the weights are shared by every implementation."""
    x: np.ndarray
    dy: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    moving_mean: np.ndarray
    moving_variance: np.ndarray


def make_data(case, seed=0):
    rng = np.random.default_rng(seed)
    C = case.channels

    def normal(shape, loc=0.0, scale=1.0):
        return rng.normal(loc, scale, size=shape).astype(np.float32)

    return Data(x=normal(case.shape, 1.0, 2.0), dy=normal(case.shape),
                gamma=normal(C, 1.0, 0.2), beta=normal(C, 0.0, 0.2),
                moving_mean=normal(C, 1.0, 0.5),
                moving_variance=rng.uniform(2.0, 6.0, C).astype(np.float32))


# ------------------------------------------------------------------------------------------------
# implementations
#
# Each one turns a case into callables {op: f}; every f returns the op's main output (y, or dx for
# step) as something `as_numpy` converts to an array in the input's layout. `setup` raises Skip when
# the implementation cannot run the case.


class Skip(Exception):
    """An implementation does not run here (not installed, or not this case); the text says why."""


class Implementation:
    key = ""            # name on the command line (--skip) and in the JSON
    label = ""          # name in the tables
    peer = False        # PyTorch / TensorFlow: enters the "best peer" ratio
    only_numbabn = False  # a numbabn feature the peers do not have: no agreement check, no ratio

    def available(self):
        """``None`` if usable, else the reason it is not."""
        return None

    def version(self):
        return ""

    def setup(self, case, data) -> Dict[str, Callable]:
        raise NotImplementedError

    def as_numpy(self, out):
        return np.asarray(out)


class Numbabn(Implementation):
    """The layer, called as users call it."""

    def __init__(self, key="numbabn", label="numbabn", **layer_kwargs):
        self.key, self.label, self.layer_kwargs = key, label, layer_kwargs
        self.only_numbabn = bool(layer_kwargs)

    def version(self):
        from .. import __version__
        return __version__

    def setup(self, case, data):
        vbs = self.layer_kwargs.get("virtual_batch_size")
        if vbs is not None and case.shape[0] % vbs:
            raise Skip(f"batch {case.shape[0]} is not a multiple of virtual_batch_size={vbs}")
        return layer_ops(case, data, **self.layer_kwargs)


def layer_ops(case, data, to=None, **layer_kwargs):
    """The layer called as users call it, ``{op: f}`` (f returns y or dx), with the case's
    weights; ``to`` moves the input and gradient where they run (e.g. ``cupy.asarray``)."""
    layer = BatchNormalization(axis=case.axis, momentum=MOMENTUM, epsilon=EPSILON,
                               **layer_kwargs)
    layer.build(case.shape)
    for key in ("gamma", "beta", "moving_mean", "moving_variance"):
        getattr(layer, key).assign(getattr(data, key).reshape(getattr(layer, key).shape))
    x, dy = (data.x, data.dy) if to is None else (to(data.x), to(data.dy))

    def step():
        layer(x, training=True)
        return layer.backward(dy)

    return {"train": lambda: layer(x, training=True),
            "infer": lambda: layer(x, training=False),
            "step": step}


class NumpyBatchNorm:
    """Batch normalization in plain float32 NumPy, written the textbook way (cached ``xhat``).

    An independent implementation: the baseline for speed, and a check of numbabn's outputs.
    """

    def __init__(self, ndim, axis, gamma, beta, moving_mean, moving_variance,
                 momentum=MOMENTUM, epsilon=EPSILON):
        axis %= ndim
        self.reduce = tuple(a for a in range(ndim) if a != axis)
        shape = tuple(-1 if a == axis else 1 for a in range(ndim))   # broadcasts over x
        self.gamma = np.asarray(gamma, np.float32).reshape(shape)
        self.beta = np.asarray(beta, np.float32).reshape(shape)
        self.moving_mean = np.asarray(moving_mean, np.float32).reshape(shape).copy()
        self.moving_variance = np.asarray(moving_variance, np.float32).reshape(shape).copy()
        self.momentum = np.float32(momentum)
        self.epsilon = np.float32(epsilon)
        self.cache = None

    def train(self, x):
        mean = x.mean(axis=self.reduce, keepdims=True)
        var = x.var(axis=self.reduce, keepdims=True)
        inv_std = 1 / np.sqrt(var + self.epsilon)
        xhat = (x - mean) * inv_std
        y = self.gamma * xhat + self.beta
        decay = 1 - self.momentum
        self.moving_mean -= (self.moving_mean - mean) * decay
        self.moving_variance -= (self.moving_variance - var) * decay
        self.cache = (xhat, inv_std)
        return y

    def infer(self, x):
        inv_std = 1 / np.sqrt(self.moving_variance + self.epsilon)
        self.cache = None
        return (x - self.moving_mean) * (self.gamma * inv_std) + self.beta

    def backward(self, dy):
        """Input gradient of the last ``train`` call (also computes dgamma and dbeta)."""
        xhat, inv_std = self.cache
        n = np.float32(dy.size // self.gamma.size)
        dbeta = dy.sum(axis=self.reduce, keepdims=True)
        dgamma = (dy * xhat).sum(axis=self.reduce, keepdims=True)
        self.grads = {"gamma": dgamma, "beta": dbeta}
        return (self.gamma * inv_std / n) * (n * dy - dbeta - xhat * dgamma)


class Numpy(Implementation):
    key, label = "numpy", "NumPy"

    def version(self):
        return np.__version__

    def setup(self, case, data):
        bn = NumpyBatchNorm(len(case.shape), case.axis, data.gamma, data.beta, data.moving_mean,
                            data.moving_variance)
        x, dy = data.x, data.dy

        def step():
            bn.train(x)
            return bn.backward(dy)

        return {"train": lambda: bn.train(x), "infer": lambda: bn.infer(x), "step": step}


class Torch(Implementation):
    key, label, peer = "torch", "PyTorch", True

    def __init__(self):
        self.torch = None
        self.threads_before = None

    def available(self):
        try:
            import torch
        except Exception as err:          # ImportError, or a broken installation
            return f"not importable ({type(err).__name__}: {err})"
        self.torch = torch
        return None

    def version(self):
        return self.torch.__version__

    def set_threads(self, n):
        self.threads_before = self.torch.get_num_threads()
        self.torch.set_num_threads(n)

    def restore_threads(self):
        if self.threads_before is not None:
            self.torch.set_num_threads(self.threads_before)

    def _to_torch(self, a, case):
        t = self.torch.from_numpy(a)
        if case.layout == "NHWC":
            # The same memory seen as a logically NCHW tensor in channels-last format (no copy).
            t = t.permute(0, t.ndim - 1, *range(1, t.ndim - 1))
        return t

    def setup(self, case, data):
        torch = self.torch
        F = torch.nn.functional
        if case.layout == "other":
            raise Skip(f"batch_norm takes the features on axis 1 (or last, channels-last), "
                       f"not axis {case.axis} of {case.shape}")
        x = self._to_torch(data.x, case)
        dy = self._to_torch(data.dy, case)
        weight = torch.from_numpy(data.gamma.copy()).requires_grad_()
        bias = torch.from_numpy(data.beta.copy()).requires_grad_()
        running_mean = torch.from_numpy(data.moving_mean.copy())
        running_var = torch.from_numpy(data.moving_variance.copy())
        x_grad = x.detach().requires_grad_()
        momentum = 1.0 - MOMENTUM

        def train():
            return F.batch_norm(x, running_mean, running_var, weight, bias, training=True,
                                momentum=momentum, eps=EPSILON)

        def infer():
            with torch.no_grad():
                return F.batch_norm(x, running_mean, running_var, weight, bias, training=False,
                                    momentum=momentum, eps=EPSILON)

        def step():
            x_grad.grad = weight.grad = bias.grad = None
            y = F.batch_norm(x_grad, running_mean, running_var, weight, bias, training=True,
                             momentum=momentum, eps=EPSILON)
            y.backward(dy)
            return x_grad.grad

        self.layout = case.layout
        return {"train": train, "infer": infer, "step": step}

    def as_numpy(self, out):
        out = out.detach()
        if self.layout == "NHWC":
            out = out.permute(0, *range(2, out.ndim), 1)
        return out.numpy()

    def memory_format(self, out):
        """How an output is laid out in memory (channels-last is what NHWC users expect)."""
        torch = self.torch
        if out.ndim == 4 and out.is_contiguous(memory_format=torch.channels_last):
            return "channels_last"
        return "contiguous" if out.is_contiguous() else "strided"


class TensorFlow(Implementation):
    key, label, peer = "tf", "TensorFlow", True

    def __init__(self):
        self.tf = None
        self.threads = None

    def available(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            with _captured_stderr():
                import tensorflow as tf
        except Exception as err:
            return f"not importable ({type(err).__name__}: {err})"
        self.tf = tf
        return None

    def version(self):
        return self.tf.__version__

    def set_threads(self, n):
        """Thread pools can be sized only before TensorFlow runs its first op."""
        cfg = self.tf.config.threading
        with _captured_stderr():              # initializing the runtime logs a CUDA probe
            try:
                cfg.set_intra_op_parallelism_threads(n)
                cfg.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass                          # already initialized (an earlier run here)
            self.threads = (cfg.get_intra_op_parallelism_threads(),
                            cfg.get_inter_op_parallelism_threads())
            self.tf.constant(0.0) + 1.0

    @staticmethod
    def onednn_setting():
        value = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
        return "default (oneDNN on)" if value is None else f"TF_ENABLE_ONEDNN_OPTS={value}"

    def setup(self, case, data):
        tf = self.tf
        fused = tf.compat.v1.nn.fused_batch_norm
        if case.layout == "NC":
            # fused_batch_norm takes 4-D input: (N, C) is (N, 1, 1, C) NHWC, a free reshape.
            shape4 = (case.shape[0], 1, 1, case.shape[1])
            fmt = "NHWC"
        elif len(case.shape) == 4 and case.layout != "other":
            shape4, fmt = case.shape, case.layout
        else:
            raise Skip(f"fused_batch_norm needs 4-D input, not {case.shape}")
        x = tf.constant(data.x.reshape(shape4))
        dy = tf.constant(data.dy.reshape(shape4))
        scale = tf.Variable(data.gamma)
        offset = tf.Variable(data.beta)
        mean = tf.constant(data.moving_mean)
        variance = tf.constant(data.moving_variance)

        @tf.function
        def train(x):
            return fused(x, scale, offset, epsilon=EPSILON, data_format=fmt, is_training=True)[0]

        @tf.function
        def infer(x):
            return fused(x, scale, offset, mean=mean, variance=variance, epsilon=EPSILON,
                         data_format=fmt, is_training=False)[0]

        @tf.function
        def step(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fused(x, scale, offset, epsilon=EPSILON, data_format=fmt, is_training=True)[0]
            # y is returned too: a training step needs it (the loss does), so it is computed.
            return [y] + tape.gradient(y, [x, scale, offset], output_gradients=dy)

        self.shape = case.shape
        return {"train": lambda: train(x), "infer": lambda: infer(x),
                "step": lambda: step(x, dy)[1]}

    def as_numpy(self, out):
        return out.numpy().reshape(self.shape)


@contextlib.contextmanager
def _captured_stderr():
    """Hold back what native code writes to stderr (TensorFlow's start-up log lines, which no
    setting silences); replay it if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def implementations(renorm=True, ghost=True):
    """Every implementation, in table order."""
    impls = [Numbabn()]
    if renorm:
        impls.append(Numbabn("renorm", "numbabn renorm*", renorm=True))
    if ghost:
        impls.append(Numbabn("ghost", f"numbabn ghost{GHOST_BATCH}*",
                             virtual_batch_size=GHOST_BATCH))
    impls += [Numpy(), Torch(), TensorFlow()]
    return impls


IMPL_KEYS = ("numbabn", "renorm", "ghost", "numpy", "torch", "tf")


# ------------------------------------------------------------------------------------------------
# the roofline: parallel Numba copy and read kernels on the bench's threads


# Blocks per roofline kernel call: each one a contiguous slice, so its inner loop vectorizes.
ROOFLINE_BLOCKS = 256
_KERNELS = {}


def _roofline_kernels():
    """Copy and sum kernels, compiled on first use (importing this module compiles nothing)."""
    if _KERNELS:
        return _KERNELS
    import numba
    from numba import njit, prange

    @njit(parallel=True, fastmath=True)
    def copy_flat(src, dst):
        for i in prange(src.size):
            dst[i] = src[i]

    @njit(parallel=True, fastmath=True)
    def copy_blocks(src, dst, blocks):
        n = src.size
        size = -(-n // blocks)
        for k in prange(blocks):
            s = src[min(k * size, n):min((k + 1) * size, n)]
            d = dst[min(k * size, n):min((k + 1) * size, n)]
            for j in range(s.size):
                d[j] = s[j]

    @njit(parallel=True, fastmath=True)
    def sum_flat(src):
        total = np.float32(0.0)
        for i in prange(src.size):
            total += src[i]
        return total

    @njit(parallel=True, fastmath=True)
    def sum_blocks(src, partial):
        n = src.size
        blocks = partial.size
        size = -(-n // blocks)
        for k in prange(blocks):
            s = src[min(k * size, n):min((k + 1) * size, n)]
            acc = np.float32(0.0)
            for j in range(s.size):
                acc += s[j]
            partial[k] = acc
        return partial.sum()

    _KERNELS.update(copy_flat=copy_flat, copy_blocks=copy_blocks, sum_flat=sum_flat,
                    sum_blocks=sum_blocks, numba=numba)
    return _KERNELS


# Roofline tasks: name -> (what it measures, the op whose traffic it moves: "copy" or "read").
ROOFLINE = {
    "copy flat": "copy",          # prange(n) over the flat array, into a preallocated array
    "copy blocks": "copy",        # prange over contiguous slices, into a preallocated array
    "alloc+copy": "copy",         # np.empty + the blocked parallel copy: a fresh output
    "np.copy": "copy",            # NumPy's own (single-threaded) allocation + copy
    "read flat": "read",          # prange(n) sum
    "read blocks": "read",        # sum of contiguous slices
}


def roofline_tasks(x):
    k = _roofline_kernels()
    flat = x.reshape(-1)
    dst = np.empty_like(flat)
    partial = np.empty(min(ROOFLINE_BLOCKS, max(flat.size, 1)), np.float32)
    blocks = partial.size

    def alloc_copy():
        out = np.empty_like(flat)
        k["copy_blocks"](flat, out, blocks)
        return out

    return {
        "copy flat": lambda: k["copy_flat"](flat, dst),
        "copy blocks": lambda: k["copy_blocks"](flat, dst, blocks),
        "alloc+copy": alloc_copy,
        "np.copy": lambda: np.copy(flat),
        "read flat": lambda: k["sum_flat"](flat),
        "read blocks": lambda: k["sum_blocks"](flat, partial),
    }


def floors(roof):
    """Memory floors (seconds) per op from roofline medians: best copy and best read kernels.

    Returns ``(floor, floor_alloc)``: the second counts each output written as a fresh allocation.
    """
    copy = min(roof["copy flat"], roof["copy blocks"])
    read = min(roof["read flat"], roof["read blocks"])
    return traffic.floors(copy, read), traffic.floors(roof["alloc+copy"], read)


# ------------------------------------------------------------------------------------------------
# timing


@dataclasses.dataclass
class Task:
    key: str                  # "roofline:copy flat" or "numbabn:train"
    fn: Callable
    inner: int = 1


def time_tasks(tasks, reps, gap, progress=None, done=0, label=""):
    """Round-robin timing: ``reps`` rounds, each sampling every task once (order rotated).

    Returns ``({key: [seconds per call, ...]}, done)``.
    """
    samples = {t.key: [] for t in tasks}
    for rep in range(reps):
        shift = rep % len(tasks)
        for task in tasks[shift:] + tasks[:shift]:
            if gap:
                time.sleep(gap)
            samples[task.key].append(timing.sample(task.fn, task.inner))
        done += 1
        if progress is not None:
            progress.update(done, label)
    return samples, done


class OtherLoad:
    """CPU time that other processes used while a block ran, in cores (0 on an idle machine).

    The machine's busy time (/proc/stat) minus this process's own CPU time, over the wall time:
    what the load average says, but only for the measured interval.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / ticks
        own = os.times()
        return busy, own.user + own.system + own.children_user + own.children_system, \
            time.perf_counter()

    def cores(self):
        end = self._sample()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        other = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(other, 0.0) / (end[2] - self.start[2])


# ------------------------------------------------------------------------------------------------
# agreement: every implementation computes the same outputs as numbabn


def relative_error(actual, expected):
    """max |a - e| / max(1, max |e|): about float32 rounding (1e-6) when they agree."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    return float(np.max(np.abs(actual - expected))) / scale if expected.size else 0.0


# Outputs further apart than this (relative, see relative_error) are reported as disagreeing.
AGREEMENT_TOL = 1e-4


def check_outputs(funcs, impl, ops):
    """Run each op once from fresh state, infer first (before train moves the statistics)."""
    out = {}
    for op in ("infer", "train", "step"):
        if op in ops and op in funcs:
            out[op] = impl.as_numpy(funcs[op]())
    return out


# ------------------------------------------------------------------------------------------------
# the run


@dataclasses.dataclass
class Options:
    threads: int
    reps: int
    small_reps: int
    gap: float
    ops: tuple
    quiet: bool = False


@dataclasses.dataclass
class CaseResult:
    case: Case
    roofline: Dict[str, dict]
    floor: Dict[str, float]
    floor_alloc: Dict[str, float]
    cells: Dict[str, Dict[str, dict]]      # op -> impl key -> summary
    agreement: Dict[str, Dict[str, float]]  # impl key -> op -> relative error vs numbabn
    skipped: Dict[str, str]                # impl key -> why
    notes: List[str]
    other_load: Optional[float]            # cores used by other processes meanwhile


def run_case(case, impls, options, progress=None, done=0):
    other_load = OtherLoad()
    data = make_data(case)
    funcs, skipped, agreement, notes = {}, {}, {}, []
    reference = None
    for impl in impls:
        try:
            f = impl.setup(case, data)
        except Skip as why:
            skipped[impl.key] = str(why)
            continue
        f = {op: fn for op, fn in f.items() if op in options.ops}
        if not impl.only_numbabn:
            outputs = check_outputs(f, impl, options.ops)
            if reference is None:             # numbabn comes first
                reference = outputs
            else:
                agreement[impl.key] = {op: relative_error(outputs[op], reference[op])
                                       for op in outputs if op in reference}
            del outputs
        if isinstance(impl, Torch) and case.layout == "NHWC" and len(case.shape) == 4:
            formats = {op: impl.memory_format(fn()) for op, fn in f.items()}
            if any(fmt != "channels_last" for fmt in formats.values()):
                notes.append(f"PyTorch returned {formats} for a channels-last input")
        funcs[impl.key] = (impl, f)
    reference = None

    inner = SMALL_INNER if case.small else 1
    tasks = [Task(f"roofline:{name}", fn, inner) for name, fn in roofline_tasks(data.x).items()]
    for key, (impl, f) in funcs.items():
        tasks += [Task(f"{key}:{op}", fn, inner) for op, fn in f.items()]
    for task in tasks:                        # warm-up: compile, load caches, touch pages
        for _ in range(2):
            task.fn()
    reps = options.small_reps if case.small else options.reps
    samples, done = time_tasks(tasks, reps, options.gap, progress, done, case.name)
    summary = {k: timing.summarize(v) for k, v in samples.items()}
    roof = {name: summary[f"roofline:{name}"] for name in ROOFLINE}
    floor, floor_alloc = floors({k: v["median"] for k, v in roof.items()})
    cells = {op: {key: summary[f"{key}:{op}"] for key in funcs if f"{key}:{op}" in summary}
             for op in options.ops}
    return CaseResult(case, roof, floor, floor_alloc, cells, agreement, skipped, notes,
                      other_load.cores()), done


# ------------------------------------------------------------------------------------------------
# start-up: import + first training step in a fresh interpreter

STARTUP_SHAPE = CASES["small"].shape
STARTUP_SCRIPT = f"""\
import json, time
t0 = time.perf_counter()
import numpy as np
import numbabn
t1 = time.perf_counter()
x = np.random.default_rng(0).normal(size={STARTUP_SHAPE}).astype(np.float32)
layer = numbabn.BatchNormalization()
y = layer(x, training=True)
dx = layer.backward(np.ones_like(y))
t2 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "first_step": t2 - t1}}))
"""


def startup_once(threads, cache_dir=None):
    """Seconds for: the whole process, ``import numbabn``, and the first training step."""
    import numbabn
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(numbabn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["NUMBA_NUM_THREADS"] = str(threads)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"start-up measurement failed: {proc.stderr.strip()[-500:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"process": wall, **out}


def measure_startup(threads):
    """Warm cache (second of two runs) and cold cache (a fresh ``NUMBA_CACHE_DIR``)."""
    startup_once(threads)
    warm = startup_once(threads)
    with tempfile.TemporaryDirectory(prefix="numbabn-cold-cache-") as cold_dir:
        cold = startup_once(threads, cold_dir)
    return {"warm": warm, "cold": cold}


# ------------------------------------------------------------------------------------------------
# reporting


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision():
    import numbabn
    root = os.path.dirname(os.path.dirname(os.path.abspath(numbabn.__file__)))
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(options, impls, unavailable):
    """The run's setting: machine, versions, thread counts (``unavailable``: key -> why)."""
    import numba
    info = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": options.threads,
        "python": platform.python_version(),
        "numbabn": Numbabn().version(),
        "numbabn revision": _git_revision(),
        "numba": f"{numba.__version__} (threading layer {_threading_layer()})",
        "numpy": np.__version__,
    }
    for impl in impls:
        if impl.peer:
            why = unavailable.get(impl.key)
            info[impl.label] = impl.version() if why is None else f"skipped: {why}"
        if isinstance(impl, Torch) and impl.torch is not None and impl.key not in unavailable:
            info["PyTorch settings"] = (
                f"{impl.torch.get_num_threads()} threads, torch.nn.functional.batch_norm, "
                "channels_last memory format for NHWC")
        if isinstance(impl, TensorFlow) and impl.threads is not None:
            sync = impl.tf.config.experimental.get_synchronous_execution()
            info["TensorFlow settings"] = (
                f"{impl.onednn_setting()}, intra-op threads {impl.threads[0]}, inter-op "
                f"{impl.threads[1]}, fused_batch_norm inside tf.function, "
                f"{'synchronous' if sync else 'ASYNCHRONOUS'} execution")
    info["reps"] = f"{options.reps} (small cases: {options.small_reps} x {SMALL_INNER} calls)"
    info["gap before each sample"] = f"{options.gap * 1e3:g} ms"
    return {k: v for k, v in info.items() if v is not None}


def _threading_layer():
    import numba
    try:
        return numba.threading_layer()
    except ValueError:                     # no parallel kernel has run yet
        return "not initialized"


def _fmt_time(seconds, small):
    return f"{seconds * 1e6:.1f} µs" if small else f"{seconds * 1e3:.2f} ms"


def _fmt_ratio(r):
    return "—" if r is None else (f"{r:.2f}" if r < 10 else f"{r:.1f}")


def result_rows(results, impls):
    """The main table: one row per (case, op, implementation)."""
    labels = {i.key: i.label for i in impls}
    peers = [i.key for i in impls if i.peer]
    only = {i.key for i in impls if i.only_numbabn}
    rows = []
    for res in results:
        case = res.case
        for op, cells in res.cells.items():
            peer_times = [cells[k]["median"] for k in peers if k in cells]
            best_peer = min(peer_times) if peer_times else None
            numpy_time = cells.get("numpy", {}).get("median")
            for key, cell in cells.items():
                t = cell["median"]
                noisy = cell["spread"] > NOISY
                rows.append({
                    "case": case.label(), "op": op, "impl": labels[key], "key": key,
                    "time": _fmt_time(t, case.small) + (" ~" if noisy else ""),
                    "GB/s": f"{traffic.gb_per_s(op, case.nbytes, t):.1f}",
                    "x floor": _fmt_ratio(t / res.floor[op]),
                    "x floor+alloc": _fmt_ratio(t / res.floor_alloc[op]),
                    "x best peer": _fmt_ratio(None if best_peer is None or key in only
                                              else t / best_peer),
                    "x NumPy": _fmt_ratio(None if numpy_time is None or key in only
                                          else t / numpy_time),
                })
    return rows


ROW_COLUMNS = ("case", "op", "impl", "time", "GB/s", "x floor", "x floor+alloc", "x best peer",
               "x NumPy")
ROW_HEADERS = ("case", "op", "implementation", "time", "GB/s", "× floor", "× floor+alloc",
               "× best peer", "× NumPy")


def roofline_rows(results):
    rows = []
    for res in results:
        case, roof = res.case, res.roofline
        size = case.nbytes

        def gbs(name, passes):
            return f"{passes * size / roof[name]['median'] / 1e9:.1f}"

        rows.append({
            "case": case.label(), "MB": f"{size / 1e6:.2f}",
            "other": "?" if res.other_load is None else f"{res.other_load:.2f}",
            "read": f"{gbs('read flat', READ_PASSES)} / {gbs('read blocks', READ_PASSES)}",
            "copy": f"{gbs('copy flat', COPY_PASSES)} / {gbs('copy blocks', COPY_PASSES)}",
            "alloc+copy": gbs("alloc+copy", COPY_PASSES), "np.copy": gbs("np.copy", COPY_PASSES),
            "floor": " / ".join(_fmt_time(res.floor[op], case.small) for op in res.floor),
            "floor+alloc": " / ".join(_fmt_time(res.floor_alloc[op], case.small)
                                      for op in res.floor_alloc),
        })
    return rows


ROOF_COLUMNS = ("case", "MB", "read", "copy", "alloc+copy", "np.copy", "floor", "floor+alloc",
                "other")


def roof_headers(ops):
    ops = "/".join(ops)
    return ("case", "MB", "read GB/s (flat / blocks)", "copy GB/s r+w (flat / blocks)",
            "alloc+copy GB/s", "np.copy GB/s", f"floor {ops}", f"floor+alloc {ops}",
            "other load (cores)")


def summary_rows(results, impls):
    """Time ÷ memory floor: one row per (case, op), one column per implementation."""
    rows = []
    for res in results:
        for op, cells in res.cells.items():
            row = {"case": res.case.label(), "op": op}
            for impl in impls:
                cell = cells.get(impl.key)
                ratio = None if cell is None else cell["median"] / res.floor[op]
                row[impl.key] = _fmt_ratio(ratio)
            rows.append(row)
    return rows


def agreement_rows(results, impls):
    rows = []
    labels = {i.key: i.label for i in impls}
    for res in results:
        for key, per_op in res.agreement.items():
            row = {"case": res.case.label(), "impl": labels[key]}
            for op in OPS:
                err = per_op.get(op)
                row[op] = "—" if err is None else (
                    f"{err:.1e}" + ("" if err <= AGREEMENT_TOL else " DISAGREES"))
            rows.append(row)
    return rows


def format_table(rows, columns, headers, markdown=False):
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def observations(results, impls):
    """Findings worth a look, computed from the numbers: a peer faster than numbabn, a time
    under its floor, outputs that disagree, noisy cells."""
    labels = {i.key: i.label for i in impls}
    notes = []
    for res in results:
        case = res.case.label()
        # Floors of cache-sized arrays are kernel launch costs, not memory traffic.
        big = not res.case.small and res.case.nbytes >= BIG_BYTES
        noisy = []
        for op, cells in res.cells.items():
            ours = cells.get("numbabn")
            for key, cell in cells.items():
                impl = next(i for i in impls if i.key == key)
                if ours is not None and impl.peer and cell["median"] < 0.95 * ours["median"]:
                    notes.append(f"{case} {op}: {labels[key]} is faster than numbabn "
                                 f"({ours['median'] / cell['median']:.2f}x)")
                if big and cell["median"] < 0.9 * res.floor[op]:
                    ratio = cell["median"] / res.floor[op]
                    notes.append(f"{case} {op}: {labels[key]} runs at {ratio:.2f} x the memory "
                                 "floor: it moves less data than the floor counts, or the "
                                 "roofline was measured slow")
                if cell["spread"] > NOISY:
                    noisy.append(f"{labels[key]} {op} {cell['spread']:.0%}")
        if noisy:
            notes.append(f"{case}: spread samples (interquartile range over {NOISY:.0%} of the "
                         f"median): {', '.join(noisy)}")
        if res.other_load is not None and res.other_load > OTHER_LOAD:
            notes.append(f"{case}: other processes used {res.other_load:.2f} cores on average "
                         "while it ran; rerun on an idle machine")
        for key, per_op in res.agreement.items():
            for op, err in per_op.items():
                if err > AGREEMENT_TOL:
                    notes.append(f"{case} {op}: {labels[key]} differs from numbabn by {err:.1e} "
                                 "(relative): its times are not comparable")
        for key, why in res.skipped.items():
            notes.append(f"{case}: {labels[key]} skipped ({why})")
        notes += [f"{case}: {note}" for note in res.notes]
    return notes


def startup_text(startup):
    if startup is None:
        return ""
    lines = []
    for kind in ("warm", "cold"):
        s = startup[kind]
        lines.append(f"{kind} cache: process {s['process']:.2f} s = `import numbabn` "
                     f"{s['import']:.2f} s + first training step "
                     f"({'x'.join(map(str, STARTUP_SHAPE))}, forward + backward) "
                     f"{s['first_step']:.2f} s + interpreter start-up")
    return lines


def write_markdown(path, info, results, impls, startup, notes, ops):
    lines = ["# numbabn benchmark", ""]
    lines += ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "## Memory roofline (measured in the same run)", "",
              "Parallel Numba kernels on the bench's threads, on an array of the input's size. "
              f"Copy bandwidth counts bytes read + written. Floors: {traffic.legend()} (best "
              "of the flat and blocked kernels); "
              "floor+alloc copies into a freshly allocated array instead. Other load: cores "
              "that other processes kept busy while the case ran (0 on an idle machine).", "",
              format_table(roofline_rows(results), ROOF_COLUMNS, roof_headers(ops), True)]
    lines += ["", "## Time ÷ memory floor", "",
              "\\* numbabn-only features (renorm=True; virtual_batch_size="
              f"{GHOST_BATCH}): the peers have no equivalent.", "",
              format_table(summary_rows(results, impls), ("case", "op") + tuple(
                  i.key for i in impls), ("case", "op") + tuple(i.label for i in impls), True)]
    lines += ["", "## Results", "",
              "Medians. GB/s = bytes the op must move ("
              + ", ".join(f"{op} {traffic.TRAFFIC[op].passes}" for op in OPS)
              + " times the input) ÷ time. × best peer: ÷ the faster of PyTorch and TensorFlow. "
              f"`~`: noisy (interquartile range > {NOISY:.0%} of the median).", "",
              format_table(result_rows(results, impls), ROW_COLUMNS, ROW_HEADERS, True)]
    agreement = agreement_rows(results, impls)
    if agreement:
        lines += ["", "## Agreement with numbabn", "",
                  "max |output − numbabn's| ÷ max(1, max |numbabn's|), per op (dx for step).",
                  "",
                  format_table(agreement, ("case", "impl") + OPS,
                               ("case", "implementation") + OPS, True)]
    if startup is not None:
        lines += ["", "## Start-up", ""] + [f"- {line}" for line in startup_text(startup)]
    if notes:
        lines += ["", "## Observations", ""] + [f"- {n}" for n in notes]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def write_json(path, info, results, impls, startup):
    data = {"machine": info, "startup": startup, "cases": {}}
    for res in results:
        data["cases"][res.case.name] = {
            "shape": list(res.case.shape), "axis": res.case.axis, "bytes": res.case.nbytes,
            "roofline_s": {k: v["median"] for k, v in res.roofline.items()},
            "roofline_samples_s": {k: v["samples"] for k, v in res.roofline.items()},
            "floor_s": res.floor, "floor_alloc_s": res.floor_alloc,
            "median_s": {op: {k: v["median"] for k, v in cells.items()}
                         for op, cells in res.cells.items()},
            "spread": {op: {k: v["spread"] for k, v in cells.items()}
                       for op, cells in res.cells.items()},
            "samples_s": {op: {k: v["samples"] for k, v in cells.items()}
                          for op, cells in res.cells.items()},
            "agreement": res.agreement, "skipped": res.skipped,
            "other_load_cores": res.other_load,
        }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def plot(path, results, impls, info):
    """Bar chart of time ÷ memory floor per (case, op); False if matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    groups = [(res, op) for res in results for op in res.cells]
    keys = [i.key for i in impls if any(i.key in res.cells[op] for res, op in groups)]
    labels = {i.key: i.label for i in impls}
    only = {i.key for i in impls if i.only_numbabn}
    fig = Figure(figsize=(max(8, 0.9 * len(groups) + 2), 5))
    ax = fig.add_subplot()
    width = 0.8 / max(len(keys), 1)
    ratios = []
    for j, key in enumerate(keys):
        xs, ys = [], []
        for g, (res, op) in enumerate(groups):
            cell = res.cells[op].get(key)
            if cell is not None:
                xs.append(g - 0.4 + width * (j + 0.5))
                ys.append(cell["median"] / res.floor[op])
        ratios += ys
        ax.bar(xs, ys, width, label=labels[key], hatch="//" if key in only else None)
    ax.axhline(1.0, color="black", linewidth=1, linestyle=":", label="memory floor")
    if ratios and max(ratios) / max(min(ratios), 1e-9) > 20:
        ax.set_yscale("log")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{res.case.name}\n{op}" for res, op in groups])
    ax.set_ylabel("time ÷ memory floor (lower is better)")
    ax.set_title(f"BatchNormalization, float32, {info['threads']} threads — {info['cpu']}",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# ------------------------------------------------------------------------------------------------
# command line


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _name_list(choices):
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}; got {text!r}")
        return names
    return parse


def add_arguments(parser, cases=None):
    """The ``bench`` subcommand's options."""
    cases = CASES if cases is None else cases
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="threads for numbabn and every peer (default: the cores available, "
                             f"{default_threads()} here)")
    parser.add_argument("--cases", type=_name_list(tuple(cases)), default=None, metavar="LIST",
                        help=f"cases to run, comma-separated (default all: {','.join(cases)})")
    parser.add_argument("--ops", type=_name_list(OPS), default=None, metavar="LIST",
                        help=f"ops to time, comma-separated (default all: {','.join(OPS)})")
    parser.add_argument("--skip", type=_name_list(IMPL_KEYS), default=[], metavar="LIST",
                        help=f"implementations to leave out, from {','.join(IMPL_KEYS)}")
    parser.add_argument("--renorm", action=argparse.BooleanOptionalAction, default=True,
                        help="also time numbabn with renorm=True (numbabn-only rows; default on)")
    parser.add_argument("--ghost", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also time numbabn with virtual_batch_size={GHOST_BATCH} "
                             "(numbabn-only rows; default on)")
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer repetitions ({QUICK_REPS}, small case {QUICK_SMALL_REPS})")
    parser.add_argument("--reps", type=positive_int, default=None, metavar="N",
                        help=f"samples per cell (default {DEFAULT_REPS})")
    parser.add_argument("--small-reps", type=positive_int, default=None, metavar="N",
                        help=f"samples per cell of small cases, {SMALL_INNER} calls each "
                             f"(default {SMALL_REPS})")
    parser.add_argument("--gap", type=float, default=GAP * 1e3, metavar="MS",
                        help=f"idle milliseconds before each sample (default {GAP * 1e3:g})")
    parser.add_argument("--no-startup", action="store_true",
                        help="skip the start-up measurement (it compiles every kernel once)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a PNG bar chart of time ÷ memory floor (needs matplotlib)")
    parser.add_argument("--json", metavar="PATH", help="write the medians as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


@contextlib.contextmanager
def numba_threads(n):
    """Run numbabn's and the roofline's kernels on ``n`` threads inside the block."""
    if "numba" not in sys.modules and n > int(os.environ.get("NUMBA_NUM_THREADS", "0") or 0):
        os.environ["NUMBA_NUM_THREADS"] = str(n)   # the pool's size is fixed at import
    import numba
    if n > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"--threads {n} is more than Numba's pool of "
                         f"{numba.config.NUMBA_NUM_THREADS} threads (set NUMBA_NUM_THREADS)")
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def bench(args, cases=None, out=None):
    """Run the benchmark from parsed arguments; returns the exit status."""
    out = sys.stdout if out is None else out
    cases = CASES if cases is None else cases
    selected = [cases[name] for name in (args.cases or cases)]
    ops = tuple(args.ops or OPS)
    threads = args.threads or default_threads()
    reps = args.reps or (QUICK_REPS if args.quick else DEFAULT_REPS)
    small_reps = args.small_reps or (QUICK_SMALL_REPS if args.quick else SMALL_REPS)
    options = Options(threads, reps, small_reps, max(args.gap, 0.0) / 1e3, ops, args.quiet)

    every = [i for i in implementations(args.renorm, args.ghost) if i.key not in args.skip]
    unavailable = {i.key: why for i in every if (why := i.available()) is not None}
    impls = [i for i in every if i.key not in unavailable]

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(numba_threads(threads))
        except ValueError as err:
            print(f"numbabn bench: {err}", file=sys.stderr)
            return 2
        for impl in impls:
            if hasattr(impl, "set_threads"):
                impl.set_threads(threads)
            if hasattr(impl, "restore_threads"):
                stack.callback(impl.restore_threads)
        load_before = os.getloadavg()
        print(f"numbabn bench: {len(selected)} cases x {len(ops)} ops, {threads} threads, "
              f"{reps} reps ({small_reps} for small cases); load average {load_before[0]:.2f}",
              file=out, flush=True)
        for key, why in unavailable.items():
            print(f"  {key}: skipped, {why} (to install the peers: {INSTALL_HINT})", file=out,
                  flush=True)
        total = sum(small_reps if c.small else reps for c in selected)
        progress = None if args.quiet else ProgressBar(total)
        results, done = [], 0
        try:
            for case in selected:
                res, done = run_case(case, impls, options, progress, done)
                results.append(res)
        finally:
            if progress is not None:
                progress.close()
        load_after = os.getloadavg()
        info = machine_info(options, every, unavailable)
        info["load average (start / end)"] = f"{load_before[0]:.2f} / {load_after[0]:.2f}"
        startup = None if args.no_startup else measure_startup(threads)

    report(out, info, results, impls, startup, ops)
    status = 0
    notes = observations(results, impls)
    if args.markdown:
        write_markdown(args.markdown, info, results, impls, startup, notes, ops)
        print(f"Markdown written to {args.markdown}", file=out)
    if args.json:
        write_json(args.json, info, results, impls, startup)
        print(f"JSON written to {args.json}", file=out)
    if args.plot:
        if plot(args.plot, results, impls, info):
            print(f"plot written to {args.plot}", file=out)
        else:
            print(f"no plot: matplotlib is not installed ({INSTALL_HINT})", file=sys.stderr)
            status = 1
    return status


def report(out, info, results, impls, startup, ops):
    """The plain-text report on ``out``."""
    print(file=out)
    print("Memory roofline (same run; copy GB/s counts read + write):", file=out)
    print(format_table(roofline_rows(results), ROOF_COLUMNS, roof_headers(ops)), file=out)
    print("\nTime ÷ memory floor (* numbabn-only):", file=out)
    print(format_table(summary_rows(results, impls), ("case", "op") + tuple(
        i.key for i in impls), ("case", "op") + tuple(i.label for i in impls)), file=out)
    print("\nResults (medians; ~ = noisy):", file=out)
    print(format_table(result_rows(results, impls), ROW_COLUMNS, ROW_HEADERS), file=out)
    agreement = agreement_rows(results, impls)
    if agreement:
        print("\nAgreement with numbabn (max relative difference):", file=out)
        print(format_table(agreement, ("case", "impl") + OPS, ("case", "implementation") + OPS),
              file=out)
    if startup is not None:
        print("\nStart-up:", file=out)
        for line in startup_text(startup):
            print("  " + line.replace("`", ""), file=out)
    notes = observations(results, impls)
    if notes:
        print("\nObservations:", file=out)
        for note in notes:
            print("  - " + note, file=out)
    print("\n" + "; ".join(f"{k}: {v}" for k, v in info.items()), file=out)


def run(args):
    """Entry point of ``python -m numbabn bench``."""
    return bench(args)


def main(argv=None, cases=None, out=None):
    """Parse ``argv`` (bench options only) and run; ``cases`` replaces :data:`CASES` (tests)."""
    parser = argparse.ArgumentParser(prog="python -m numbabn bench", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, cases)
    return bench(parser.parse_args(argv), cases=cases, out=out)

"""Every backend x dtype x layout x operation against the float64 reference, from one table.

The model is numpy-groupies' ``test_compare``: one parametrized table runs each engine through
the public API (``numbabn.functional`` and ``numbabn.BatchNormalization``) and compares it with
``numbabn.reference``, at the tolerances of ``conftest.TOLERANCE``. Combinations that cannot
exist are left out of the table (deselected, never skipped):

* inference has no ghost batches, so the ghost layout has no inference operations;
* on a GPU the kernels are compiled with the launch constants they were first called with, so
  only the native launch shape runs there.

Backends:

    cpu-serial      shapes below ``SERIAL_ELEMENTS``: the kernels' serial twins
    cpu-parallel    shapes above it, with the parallel twins forced (no timing-based choice)
    cuda-<launch>   small shapes; ``launch`` is the tile and grid geometry (simulator only:
                    ``sim`` is its default small tiles, ``tiny`` makes every reduction cross many
                    blocks and units, ``production`` is a GPU's 32 x 8 / 256-thread tiles)

Under Numba's CUDA simulator every kernel thread is a Python thread, so the CUDA shapes are
small; the default suite runs every case with the tiny launch shape, float32 with the simulator's
own, and the float32 training step of the rows and planes views with the production one (on
shapes that cross its tiles); ``-m long`` runs every case with each.
"""
import contextlib
import itertools
import math

import numpy as np
import pytest
from conftest import SIMULATOR, SIMULATOR_LAUNCHES, STATS_RTOL, assert_close, simulator_launch

import numbabn
from numbabn import functional as F
from numbabn import reference as R

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:                      # bfloat16 cases are skipped without it
    BF16 = None

EPSILON = 1e-3
MOMENTUM = 0.9                           # 1 - momentum is not a float32 number: Keras rounds it

# name: axis, virtual batch size, shape on the CUDA simulator and on the serial CPU twins,
# shape above the CPU's serial threshold
LAYOUTS = {
    "NC": (-1, None, (37, 11), (3001, 11)),
    "NHWC": (-1, None, (4, 3, 5, 6), (16, 12, 12, 15)),
    "NCHW": (1, None, (3, 4, 10, 7), (8, 6, 30, 30)),           # planes of 70: 2 chunks
    "axes13": ([1, 3], None, (5, 4, 6, 3), (40, 4, 70, 3)),     # a permuting gather
    "ghost": (-1, 2, (8, 3, 2, 5), (64, 6, 7, 14)),             # 4 ghost groups
}
# Shapes for the production launch: 40 features cross a 32-feature tile, 300-value planes a
# 256-thread block.
PRODUCTION_SHAPES = {"NC": (12, 40), "NHWC": (2, 2, 3, 40), "NCHW": (2, 2, 15, 20),
                     "axes13": (2, 5, 3, 8), "ghost": (8, 1, 2, 40)}
OPERATIONS = ["moments", "train_forward", "infer_forward", "train_backward", "infer_backward",
              "moving_update"]
DTYPES = ["float16", "bfloat16", "float32", "float64"]



class Backend:
    """An engine and the conditions it runs under: array placement, CPU policy, CUDA launch."""

    def __init__(self, device, variant):
        self.device, self.variant = device, variant

    def __repr__(self):
        return f"{self.device}-{self.variant}"

    @property
    def large(self):
        return self.variant == "parallel"

    def shape(self, layout):
        _, _, small, large = LAYOUTS[layout]
        if self.variant == "production":
            return PRODUCTION_SHAPES[layout]
        return large if self.large else small

    def to(self, a):
        if self.device == "cpu":
            return a
        from numba import cuda
        return cuda.to_device(np.ascontiguousarray(a))

    def host(self, a):
        return a if isinstance(a, np.ndarray) else a.copy_to_host()

    @contextlib.contextmanager
    def active(self, monkeypatch):
        if self.device == "cpu":
            from numbabn.cpu import threads
            old = threads.set_policy("parallel" if self.large else "auto")
            try:
                yield
            finally:
                threads.set_policy(old)
            return
        if self.variant in SIMULATOR_LAUNCHES:
            simulator_launch(monkeypatch, self.variant)
        yield


def _backends():
    """``(backend, in_default_suite(dtype, layout, op))``; the others run under -m long."""
    yield Backend("cpu", "serial"), lambda dtype, layout, op: True
    yield Backend("cpu", "parallel"), lambda dtype, layout, op: True
    if not SIMULATOR:
        yield Backend("cuda", "native"), lambda dtype, layout, op: True
        return
    # The simulator's time goes with the threads a launch starts: the tiny tiles (4 threads a
    # block, few blocks, long grid-stride loops) cost a third of its default ones (32 a block,
    # which every other CUDA test runs), and the production ones (256) seconds a case.
    yield Backend("cuda", "tiny"), lambda dtype, layout, op: True
    yield Backend("cuda", "sim"), lambda dtype, layout, op: dtype == "float32"
    # the training forward and backward (every kernel but the inference and moving-average
    # ones) on the rows and the planes view
    yield Backend("cuda", "production"), lambda dtype, layout, op: (
        dtype == "float32" and layout in ("NC", "NCHW") and op == "train_backward")


def _cases():
    for (backend, in_default), dtype, layout, op in itertools.product(
            _backends(), DTYPES, LAYOUTS, OPERATIONS):
        if LAYOUTS[layout][1] is not None and op in ("infer_forward", "infer_backward"):
            continue                                    # inference has no ghost batches
        marks = []
        if not in_default(dtype, layout, op):
            marks.append(pytest.mark.long)
        if dtype == "bfloat16" and BF16 is None:
            marks.append(pytest.mark.skip(reason="bfloat16 needs ml_dtypes"))
        yield pytest.param(backend, dtype, layout, op, marks=marks,
                           id=f"{backend}-{dtype}-{layout}-{op}")


def _dtype(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


def _compute(dtype):
    """The dtype the engines compute in: float32 for the half types."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


class Problem:
    """Input, upstream gradient and per-feature values of one case, with reference shapes."""

    def __init__(self, layout, backend, dtype, rng):
        axis, self.vbs, _, _ = LAYOUTS[layout]
        self.axis, self.shape, self.dtype = axis, backend.shape(layout), dtype
        ndim = len(self.shape)
        self.axes = tuple(sorted(a % ndim for a in ([axis] if isinstance(axis, int) else axis)))
        self.fshape = tuple(self.shape[a] for a in self.axes)
        self.n = math.prod(self.shape) // math.prod(self.fshape)     # values per feature
        self.x = rng.normal(2.0, 3.0, size=self.shape).astype(dtype)
        self.dy = rng.normal(size=self.shape).astype(dtype)
        self.x64, self.dy64 = self.x.astype(np.float64), self.dy.astype(np.float64)
        self.gamma = rng.uniform(0.5, 1.5, size=self.fshape)
        self.beta = rng.normal(size=self.fshape)
        self.moving_mean = rng.normal(size=self.fshape)
        self.moving_var = rng.uniform(0.5, 2.0, size=self.fshape)

    def broadcast(self, v):
        """A per-feature array shaped to broadcast against the input."""
        return np.asarray(v).reshape(
            [self.shape[a] if a in self.axes else 1 for a in range(len(self.shape))])


@pytest.mark.parametrize("backend, dtype, layout, op", list(_cases()))
def test_matrix(backend, dtype, layout, op, rng, monkeypatch):
    dtype = _dtype(dtype)
    p = Problem(layout, backend, dtype, rng)
    if backend.device == "cpu":               # each CPU backend on its side of the threshold
        from numbabn.cpu.engine import SERIAL_ELEMENTS
        assert (p.x.size > SERIAL_ELEMENTS) == backend.large
    with backend.active(monkeypatch):
        CHECKS[op](backend, p)


def _check_moments(backend, p):
    mean, var = F.moments(backend.to(p.x), axis=p.axis, virtual_batch_size=p.vbs)
    mean_ref, var_ref = R.moments(p.x64, p.axes, p.vbs)
    mean, var = backend.host(mean), backend.host(var)
    groups = () if p.vbs is None else (p.shape[0] // p.vbs,)
    assert mean.dtype == np.float64 and mean.shape == groups + p.fshape == var.shape
    # statistics accumulate in float64 from the input's own values, whatever its dtype
    rtol = STATS_RTOL[_compute(p.dtype)]
    np.testing.assert_allclose(mean, mean_ref.reshape(mean.shape), rtol=rtol, atol=rtol * 3)
    np.testing.assert_allclose(var, var_ref.reshape(var.shape), rtol=rtol, atol=rtol * 9)


def _train(backend, p):
    return F.batch_norm_train(backend.to(p.x), p.gamma, p.beta, axis=p.axis, epsilon=EPSILON,
                              virtual_batch_size=p.vbs)


def _infer(backend, p):
    return F.batch_norm_infer(backend.to(p.x), p.moving_mean, p.moving_var, p.gamma, p.beta,
                              axis=p.axis, epsilon=EPSILON)


def _check_train_forward(backend, p):
    y, _ = _train(backend, p)
    y = backend.host(y)
    want, _, _ = R.forward_train(p.x64, p.axes, EPSILON, p.broadcast(p.gamma),
                                 p.broadcast(p.beta), p.vbs)
    assert y.dtype == p.dtype and y.shape == p.shape
    assert_close(y, want, p.dtype)


def _check_infer_forward(backend, p):
    y, _ = _infer(backend, p)
    y = backend.host(y)
    want = R.forward_infer(p.x64, p.broadcast(p.moving_mean), p.broadcast(p.moving_var), EPSILON,
                           p.broadcast(p.gamma), p.broadcast(p.beta))
    assert y.dtype == p.dtype and y.shape == p.shape
    assert_close(y, want, p.dtype)


def _check_gradients(p, got, want):
    dx, dgamma, dbeta = got
    dx_want, dgamma_want, dbeta_want = want
    assert dx.dtype == p.dtype and dx.shape == p.shape
    assert dgamma.dtype == dbeta.dtype == np.float64
    assert dgamma.shape == dbeta.shape == p.fshape
    assert_close(dx, dx_want, p.dtype, scale=4)
    # sums of n terms of order 1, each computed at the compute dtype's precision
    assert_close(dgamma, dgamma_want.reshape(p.fshape), _compute(p.dtype), scale=4 * p.n)
    assert_close(dbeta, dbeta_want.reshape(p.fshape), _compute(p.dtype), scale=p.n)


def _check_train_backward(backend, p):
    _, cache = _train(backend, p)
    got = [backend.host(a) for a in F.batch_norm_backward(backend.to(p.dy), cache)]
    _check_gradients(p, got, R.backward_train(p.dy64, p.x64, p.axes, EPSILON,
                                              p.broadcast(p.gamma), p.vbs))


def _check_infer_backward(backend, p):
    _, cache = _infer(backend, p)
    got = [backend.host(a) for a in F.batch_norm_backward(backend.to(p.dy), cache)]
    _check_gradients(p, got, R.backward_infer(
        p.dy64, p.x64, p.axes, p.broadcast(p.moving_mean), p.broadcast(p.moving_var), EPSILON,
        p.broadcast(p.gamma)))


def _check_moving_update(backend, p):
    """One training step of the layer: its output and the moving averages it leaves, and the
    functional moving average of the same statistics."""
    # the layer policy named after a half type keeps float32 weights, as in Keras
    layer = numbabn.BatchNormalization(axis=p.axis, momentum=MOMENTUM, epsilon=EPSILON,
                                       virtual_batch_size=p.vbs, dtype=p.dtype.name)
    layer.build(p.shape)
    shapes = [w.shape for w in layer.get_weights()]
    layer.set_weights([np.reshape(v, s) for v, s in
                       zip((p.gamma, p.beta, p.moving_mean, p.moving_var), shapes)])
    y = backend.host(layer(backend.to(p.x), training=True))
    want, mean, var = R.forward_train(p.x64, p.axes, EPSILON, p.broadcast(p.gamma),
                                      p.broadcast(p.beta), p.vbs)
    assert y.dtype == p.dtype
    assert_close(y, want, p.dtype)

    if p.vbs is not None:                 # the moving statistics average the ghost groups
        mean, var = mean.mean(axis=1), var.mean(axis=1)
    mean, var = mean.reshape(p.fshape), var.reshape(p.fshape)
    # V1 Keras' fused kernel tracks the Bessel-corrected variance; the other path the biased one
    bessel = p.n / max(p.n - 1, 1) if layer.fused else 1.0
    decay = float(np.float32(1.0 - MOMENTUM))              # as Keras stores it
    weights = layer.get_weights()
    weight_dtype = weights[2].dtype
    assert weight_dtype == (np.float64 if p.dtype == np.float64 else np.float32)
    assert_close(weights[2].reshape(p.fshape),
                 R.moving_update(p.moving_mean, mean, 1.0 - decay), weight_dtype,
                 err_msg="moving_mean")
    assert_close(weights[3].reshape(p.fshape),
                 R.moving_update(p.moving_var, var * bessel, 1.0 - decay), weight_dtype,
                 err_msg="moving_variance")

    moving = p.moving_mean.astype(weight_dtype)
    got = backend.host(F.moving_average(backend.to(moving), backend.to(mean), MOMENTUM))
    assert got.dtype == weight_dtype and got.shape == p.fshape
    assert_close(got, R.moving_update(moving.astype(np.float64), mean, MOMENTUM), weight_dtype)


CHECKS = {"moments": _check_moments, "train_forward": _check_train_forward,
          "infer_forward": _check_infer_forward, "train_backward": _check_train_backward,
          "infer_backward": _check_infer_backward, "moving_update": _check_moving_update}
assert sorted(CHECKS) == sorted(OPERATIONS)

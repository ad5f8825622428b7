"""The CPU engine (through the functional API) against the float64 reference.

A hypothesis-driven matrix covers ranks 1-5, every kind of axis set (single, several, adjacent or
not, negative), odd sizes and batch 1, float32 and float64, with and without ghost batches. The
engine's work-unit sizes are shrunk in some runs so that tiny shapes still split into many units
and exercise the cross-unit merges.
"""
import contextlib

import ml_dtypes
import numba
import numpy as np
import pytest
from conftest import STATS_RTOL, assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

from numbabn import _ops
from numbabn import functional as F
from numbabn import reference as R
from numbabn.cpu import engine


@contextlib.contextmanager
def unit_sizes(unit, task):
    saved = engine.UNIT_ELEMENTS, engine.TASK_ELEMENTS
    engine.UNIT_ELEMENTS, engine.TASK_ELEMENTS = unit, task
    try:
        yield
    finally:
        engine.UNIT_ELEMENTS, engine.TASK_ELEMENTS = saved


@st.composite
def problems(draw):
    ndim = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    negative = draw(st.booleans())
    axis = [a - ndim if negative else a for a in axes]
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    vbs = None
    if 0 not in axes and draw(st.booleans()):
        divisors = [v for v in range(1, shape[0] + 1) if shape[0] % v == 0]
        vbs = draw(st.sampled_from(divisors))
    units = draw(st.sampled_from([(1 << 16, 1 << 14), (4, 3), (1, 1)]))
    seed = draw(st.integers(0, 2**31))
    return shape, axis, tuple(sorted(axes)), dtype, vbs, units, seed


def per_feature(v, shape, axes):
    return np.asarray(v).reshape(tuple(shape[a] if a in axes else 1 for a in range(len(shape))))


@settings(max_examples=120, deadline=None)
@given(problems())
def test_train_forward_backward_match_reference(problem):
    shape, axis, axes, dtype, vbs, units, seed = problem
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    fshape = tuple(shape[a] for a in axes)
    gamma = rng.uniform(0.5, 1.5, size=fshape)
    beta = rng.normal(size=fshape)
    with unit_sizes(*units):
        y, cache = F.batch_norm_train(x, gamma, beta, axis=axis, epsilon=1e-3,
                                      virtual_batch_size=vbs)
        dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
    g, b = per_feature(gamma, shape, axes), per_feature(beta, shape, axes)
    y_ref, mean_ref, var_ref = R.forward_train(x, axes, 1e-3, g, b, vbs)
    dx_ref, dg_ref, db_ref = R.backward_train(dy, x, axes, 1e-3, g, vbs)
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, y_ref, dtype)
    assert_close(dx, dx_ref, dtype, scale=4)
    assert_close(dgamma, dg_ref.reshape(fshape), dtype, scale=4 * x.size)
    assert_close(dbeta, db_ref.reshape(fshape), dtype, scale=x.size)
    # statistics accumulate in float64 whatever the input dtype
    rtol = STATS_RTOL[np.dtype(dtype)]
    np.testing.assert_allclose(cache.mean, mean_ref.reshape(cache.mean.shape), rtol=rtol,
                               atol=rtol * 3.0)
    np.testing.assert_allclose(cache.variance, var_ref.reshape(cache.variance.shape), rtol=rtol,
                               atol=rtol * 9.0)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_infer_forward_backward_match_reference(problem):
    shape, axis, axes, dtype, _, units, seed = problem
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    fshape = tuple(shape[a] for a in axes)
    mm, mv = rng.normal(size=fshape), rng.uniform(0.5, 2.0, size=fshape)
    gamma, beta = rng.uniform(0.5, 1.5, size=fshape), rng.normal(size=fshape)
    with unit_sizes(*units):
        y, cache = F.batch_norm_infer(x, mm, mv, gamma, beta, axis=axis, epsilon=1e-3)
        dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
    pf = [per_feature(v, shape, axes) for v in (mm, mv, gamma, beta)]
    assert_close(y, R.forward_infer(x, pf[0], pf[1], 1e-3, pf[2], pf[3]), dtype)
    dx_ref, dg_ref, db_ref = R.backward_infer(dy, x, axes, pf[0], pf[1], 1e-3, pf[2])
    assert_close(dx, dx_ref, dtype)
    assert_close(dgamma, dg_ref.reshape(fshape), dtype, scale=x.size)
    assert_close(dbeta, db_ref.reshape(fshape), dtype, scale=x.size)


@pytest.mark.parametrize("shape, axis", [((20000, 3), -1), ((16, 3, 40, 40), 1),
                                         ((64, 8, 8, 16), -1)])
def test_large_offset_variance_is_exact_in_float32(shape, axis, rng):
    """|mean| / std = 1e4: E[x^2] - E[x]^2 in float32 would lose every digit."""
    x = (rng.normal(size=shape) + 1e4).astype(np.float32)
    mean, var = F.moments(x, axis=axis)
    axes = (len(shape) - 1,) if axis == -1 else (axis,)
    mean_ref, var_ref = R.moments(x, axes)
    # the mean of float32 values summed in float64 is closer than STATS_RTOL
    np.testing.assert_allclose(mean, mean_ref.ravel(), rtol=1e-12)
    np.testing.assert_allclose(var, var_ref.ravel(), rtol=STATS_RTOL[np.dtype(np.float32)])
    y, _ = F.batch_norm_train(x, axis=axis, epsilon=0.0)
    assert_close(y, R.forward_train(x, axes, 0.0)[0], np.float32)


@pytest.mark.parametrize("shape, axis", [((4096, 96), -1), ((8, 24, 33, 33), 1),
                                         ((12, 40, 2), [0, 2])])
def test_results_do_not_depend_on_thread_count(shape, axis, rng):
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)

    def run():
        y, cache = F.batch_norm_train(x, axis=axis)
        return (y, cache.mean, cache.variance) + F.batch_norm_backward(dy, cache)

    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
        numba.set_num_threads(saved)
        many = run()
    finally:
        numba.set_num_threads(saved)
    assert saved >= 2
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


def test_no_race_on_many_units(rng):
    """Many units, many threads: partials must not be shared (a race is wrong by tens of %)."""
    x = rng.normal(3.0, 2.0, size=(100_000, 17)).astype(np.float32)
    for _ in range(3):
        mean, var = F.moments(x)
        # the mean of float32 values summed in float64 is closer than STATS_RTOL
        np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-10)
        np.testing.assert_allclose(var, x.astype(np.float64).var(0),
                                   rtol=STATS_RTOL[np.dtype(np.float32)])


def test_moving_average_matches_reference(rng):
    moving = rng.normal(size=5).astype(np.float32)
    stat = rng.normal(size=5)
    out = F.moving_average(moving, stat, 0.9)
    assert out.dtype == np.float32
    assert_close(out, R.moving_update(moving.astype(np.float64), stat, 0.9), np.float32)
    np.testing.assert_allclose(F.moving_average(moving, 0.5, 0.9),
                               R.moving_update(moving.astype(np.float64), 0.5, 0.9), rtol=1e-6)
    np.testing.assert_allclose(F.moving_average([1, 2], [3.0, 4.0], 0.5), [2.0, 3.0])
    with pytest.raises(ValueError, match="batch_stat"):
        F.moving_average(moving, np.zeros(2), 0.9)


def test_float16_input_computes_in_float32(rng):
    x = rng.normal(1.0, 2.0, size=(64, 5)).astype(np.float16)
    y, cache = F.batch_norm_train(x)
    assert y.dtype == np.float16
    assert_close(y, R.forward_train(x.astype(np.float64), (1,), 1e-3)[0], np.float16)


@pytest.mark.parametrize("layout", ["rows", "planes"])
def test_statistics_survive_huge_values_and_outliers(layout, rng):
    """No float32 intermediate overflows or cancels: huge spreads and an outlying first row."""
    huge = rng.normal(0, 5e18, size=(32, 4, 4, 8)).astype(np.float32)   # var 2.5e37 < FLT_MAX
    outlier = rng.normal(0, 1, size=(4096, 2, 2, 4)).astype(np.float32)
    outlier[0] = 1000.0
    for x in (huge, outlier):
        if layout == "planes":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        axis = -1 if layout == "rows" else 1
        mean, var = F.moments(x, axis=axis)
        ref = x.astype(np.float64)
        red = tuple(a for a in range(4) if a != (3 if layout == "rows" else 1))
        np.testing.assert_allclose(var, ref.var(axis=red), rtol=STATS_RTOL[np.dtype(np.float32)])
        y, cache = F.batch_norm_train(x, axis=axis)
        assert np.isfinite(y).all()
        dx, dgamma, _ = F.batch_norm_backward(x, cache)
        assert np.isfinite(dx).all() and np.isfinite(dgamma).all()


def test_one_value_per_feature_has_exactly_zero_input_gradient(rng):
    """n = 1: y is beta and dx is exactly 0, as TensorFlow gives."""
    for x in (rng.normal(size=(1, 5)).astype(np.float32),
              rng.normal(size=(3, 4)).astype(np.float32)):
        axis = -1 if x.shape[0] == 1 else [0, 1]
        _, cache = F.batch_norm_train(x, gamma=np.full(x.shape[-1] if x.shape[0] == 1 else x.shape,
                                                        3.0), axis=axis)
        dx, _, _ = F.batch_norm_backward(rng.normal(size=x.shape).astype(np.float32), cache)
        np.testing.assert_array_equal(dx, 0.0)


def test_non_native_byte_order_is_computed_in_its_precision(rng):
    x = 1e4 + rng.normal(size=(64, 3))
    y_native, _ = F.batch_norm_train(x)
    y_swapped, _ = F.batch_norm_train(x.astype(">f8"))
    assert y_swapped.dtype == np.float64
    # the same float64 computation on the same values: tighter than the float64 TOLERANCE row
    np.testing.assert_allclose(y_swapped, y_native, rtol=1e-12, atol=1e-12)


def test_the_cache_is_isolated_from_the_callers_arrays(rng):
    x = rng.normal(size=(32, 4))
    dy = rng.normal(size=(32, 4))
    gamma, mean, var = rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.uniform(0.5, 2, 4)
    for forward in (lambda: F.batch_norm_train(x, gamma), lambda: F.batch_norm_infer(
            x, mean, var, gamma)):
        _, cache = forward()
        want = F.batch_norm_backward(dy, cache)
        for a in (gamma, mean, var, cache.mean, cache.variance):
            a += 1.0
        for got, expected in zip(F.batch_norm_backward(dy, cache), want):
            np.testing.assert_array_equal(got, expected)


def test_small_ghost_groups_accumulate_in_float64():
    """Many small ghost groups are reduced whole; their shifted values must be taken in float64
    (a float32 difference rounded the mean by up to half an ulp)."""
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 1, 64, 3)).astype(np.float32)
    mean, var = F.moments(x, axis=[1, 3], virtual_batch_size=1)
    ref_mean, ref_var = R.moments(x, (1, 3), 1)
    # the mean of float32 values summed in float64 is closer than STATS_RTOL
    np.testing.assert_allclose(mean, ref_mean.reshape(mean.shape), rtol=1e-12)
    np.testing.assert_allclose(var, ref_var.reshape(var.shape),
                               rtol=STATS_RTOL[np.dtype(np.float32)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 7, 256, 511, 520])
def test_small_inputs_take_one_fused_kernel_with_the_general_paths_results(dtype, rows, rng):
    """(rows, 64): up to 511 rows one fused serial kernel runs each pass (train, infer,
    backward); 520 rows are past engine.SERIAL_ELEMENTS and take the separate kernels. Both
    against the reference, and the fused results against the separate kernels'."""
    x = rng.normal(3.0, 2.0, size=(rows, 64)).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    gamma, beta = rng.normal(size=64), rng.normal(size=64)
    fused = rows * 64 <= engine.SERIAL_ELEMENTS
    assert (engine.train_small(x, 1e-3, _ops.compose(engine, 64, x)) is not None) == fused
    y, cache = F.batch_norm_train(x, gamma, beta)
    dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
    ref_y, _, _ = R.forward_train(x, (1,), 1e-3, gamma, beta)
    ref_dx, ref_dgamma, ref_dbeta = R.backward_train(dy, x, (1,), 1e-3, gamma)
    assert_close(y, ref_y)
    assert_close(dx, ref_dx, scale=10)
    assert_close(dgamma, ref_dgamma.reshape(-1), dtype=dtype, scale=10)
    assert_close(dbeta, ref_dbeta.reshape(-1), dtype=dtype, scale=10)
    # the separate kernels, as a larger input would run them
    with fused_kernels_off():
        y2, cache2 = F.batch_norm_train(x, gamma, beta)
        dx2, dgamma2, _ = F.batch_norm_backward(dy, cache2)
    assert_close(y, y2, scale=2)
    assert_close(dx, dx2, scale=10)
    y_inf, cache_inf = F.batch_norm_infer(x, cache.mean, cache.variance, gamma, beta)
    dx_inf, dgamma_inf, _ = F.batch_norm_backward(dy, cache_inf)
    with fused_kernels_off():
        y_inf2, cache_inf2 = F.batch_norm_infer(x, cache.mean, cache.variance, gamma, beta)
        dx_inf2, dgamma_inf2, _ = F.batch_norm_backward(dy, cache_inf2)
    np.testing.assert_array_equal(y_inf, y_inf2)
    np.testing.assert_array_equal(dx_inf, dx_inf2)
    assert_close(dgamma_inf, dgamma_inf2, dtype=np.float64, scale=1e3)


@contextlib.contextmanager
def fused_kernels_off():
    saved = engine.train_small, engine.infer_small, engine.backward_small
    engine.train_small = engine.infer_small = engine.backward_small = (
        lambda *args, **kwargs: None)
    try:
        yield
    finally:
        engine.train_small, engine.infer_small, engine.backward_small = saved


def test_an_inference_backward_uses_the_statistics_of_its_forward_call(rng):
    """The layer's cache keeps the moving statistics it normalized with: assigning the weights
    between the call and ``backward`` changes neither dx nor the gradients."""
    import numbabn
    x = rng.normal(2.0, 3.0, size=(64, 3)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    layer = numbabn.BatchNormalization(momentum=0.0)
    layer(x, training=True)
    layer(x, training=False)
    dx, grads = layer.backward(dy), dict(layer.grads)
    layer(x, training=False)
    layer.moving_mean.assign(layer.moving_mean.numpy() + 1.0)
    layer.moving_variance.assign(layer.moving_variance.numpy() * 2.0)
    layer.gamma.assign(layer.gamma.numpy() * 3.0)
    np.testing.assert_array_equal(layer.backward(dy), dx)
    for key in grads:
        np.testing.assert_array_equal(layer.grads[key], grads[key])


def test_an_infinite_gradient_gives_tensorflows_infinite_dgamma_in_inference():
    x = np.array([[1.0], [2.0]], np.float32)
    dy = np.array([[np.inf], [1.0]], np.float32)
    _, cache = F.batch_norm_infer(x, mean=[0.1], variance=[1.0])
    _, dgamma, _ = F.batch_norm_backward(dy, cache)
    _, want, _ = R.backward_infer(dy, x, (1,), np.array([[0.1]]), np.array([[1.0]]), 1e-3)
    np.testing.assert_array_equal(dgamma, want.reshape(-1))
    assert np.isposinf(dgamma[0])


@pytest.mark.parametrize("shape", [(16, 8), (256, 64)])
def test_one_ghost_group_has_the_statistics_of_moments(shape, rng):
    """virtual_batch_size == batch: one ghost group, merged per sample as moments() merges it."""
    x = rng.normal(1000.0, 1.0, size=shape).astype(np.float32)
    mean, var = F.moments(x, virtual_batch_size=shape[0])
    _, cache = F.batch_norm_train(x, virtual_batch_size=shape[0])
    np.testing.assert_array_equal(cache.mean, mean)
    np.testing.assert_array_equal(cache.variance, var)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("channels", [3, 64, 128, 129, 256, 257, 512, 513])
@pytest.mark.parametrize("rows", [1, 3, 6, 1027])
def test_channels_last_statistics_of_every_row_width(dtype, channels, rows, rng):
    """The statistics loop takes four, two or one row per step by the row's width in bytes, and
    asks for rows further ahead on wide ones: every width, with row counts that leave each
    remainder, in one unit (the small path) and in many, matches the float64 reference."""
    x = rng.normal(3.0, 2.0, size=(rows, channels)).astype(np.float32)
    x = x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    ref = x.astype(np.float64)
    for units in [(1 << 16, 1 << 14), (4096, 1024)]:
        with unit_sizes(*units):
            mean, var = F.moments(x)
        rtol = STATS_RTOL[np.dtype(np.float64 if dtype == "float64" else np.float32)]
        np.testing.assert_allclose(mean, ref.mean(axis=0), rtol=rtol, atol=1e-12,
                                   err_msg=f"mean, units {units}")
        np.testing.assert_allclose(var, ref.var(axis=0), rtol=rtol, atol=1e-12,
                                   err_msg=f"var, units {units}")


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("channels", [128, 129, 256, 513])
def test_wide_rows_train_and_backward_match_the_reference(dtype, channels, rng):
    """The row passes that ask for their input ahead (rows of 512 B and more) past the small
    fused path: forward and backward against the float64 reference."""
    x = rng.normal(-2.0, 3.0, size=(301, channels)).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    y, cache = F.batch_norm_train(x)
    dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
    want_y, _, _ = R.forward_train(x, [1], 1e-3)
    want_dx, want_dgamma, want_dbeta = R.backward_train(dy, x, [1], 1e-3)
    assert_close(y, want_y, scale=4)
    assert_close(dx, want_dx, scale=4)
    assert_close(dgamma, want_dgamma.ravel(), dtype=np.float32, scale=4)
    assert_close(dbeta, want_dbeta.ravel(), dtype=np.float32, scale=4)

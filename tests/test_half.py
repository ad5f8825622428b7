"""Half-precision layers: float16 and bfloat16 inputs and outputs, float32 weights and
arithmetic, against the float64 reference at the half type's own rounding."""
import numpy as np
import pytest
from conftest import assert_close

import numbabn
from numbabn import functional as F
from numbabn import reference as R

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
BN = numbabn.BatchNormalization


@pytest.mark.parametrize("policy, half", [("float16", np.float16), ("mixed_float16", np.float16),
                                          ("bfloat16", BF16), ("mixed_bfloat16", BF16)])
@pytest.mark.parametrize("shape, axis", [((64, 8), -1), ((4, 6, 5, 5), 1)])
def test_half_layers_against_float64(policy, half, shape, axis, rng):
    x = rng.normal(3.0, 2.0, size=shape).astype(half)
    dy = rng.normal(size=shape).astype(half)
    layer = BN(axis=axis, dtype=policy, momentum=0.5)
    y = layer(x, training=True)
    dx = layer.backward(dy)
    assert y.dtype == half and dx.dtype == half
    assert layer.moving_mean.dtype == np.float32 and layer.grads["gamma"].dtype == np.float32
    axes = (len(shape) + axis if axis < 0 else axis,)
    y_ref, mean, var = R.forward_train(x.astype(np.float64), axes, 1e-3)
    dx_ref, _, _ = R.backward_train(dy.astype(np.float64), x.astype(np.float64), axes, 1e-3)
    assert_close(y.astype(np.float64), y_ref, half)
    assert_close(dx.astype(np.float64), dx_ref, half, scale=4)
    n = x.size // x.shape[axis]
    assert_close(layer.moving_mean.value, 0.5 * mean.reshape(-1), np.float32, scale=10)
    assert_close(layer.moving_variance.value, 0.5 + 0.5 * var.reshape(-1) * n / (n - 1)
                 if len(shape) == 4 else 0.5 + 0.5 * var.reshape(-1), np.float32, scale=10)
    inference = layer(x)
    assert inference.dtype == half


def test_float32_layer_keeps_float32_for_half_input(rng):
    x = rng.normal(size=(32, 4)).astype(BF16)
    y = BN()(x, training=True)
    assert y.dtype == np.float32
    assert_close(y, R.forward_train(x.astype(np.float64), (1,), 1e-3)[0], np.float32)


def test_functional_bfloat16_round_trip(rng):
    x = rng.normal(2.0, 1.0, size=(50, 3)).astype(BF16)
    y, cache = F.batch_norm_train(x)
    dx, _, _ = F.batch_norm_backward(np.ones_like(y), cache)
    assert y.dtype == BF16 and dx.dtype == BF16
    assert_close(y.astype(np.float64), R.forward_train(x.astype(np.float64), (1,), 1e-3)[0], BF16)


def test_bfloat16_config_round_trips_and_saves(rng, tmp_path):
    layer = BN(dtype="mixed_bfloat16")
    layer(rng.normal(size=(8, 3)).astype(BF16), training=True)
    assert BN.from_config(layer.get_config()).compute_dtype == "bfloat16"
    layer.save(tmp_path / "bf.npz")
    assert numbabn.load(tmp_path / "bf.npz").compute_dtype == "bfloat16"


@pytest.mark.parametrize("policy, half", [("mixed_float16", np.float16), ("bfloat16", BF16),
                                          ("mixed_bfloat16", BF16)])
@pytest.mark.parametrize("shape, axis", [((40, 6), -1), ((3, 4, 5, 6), [1, 3])])
def test_half_layers_on_the_cuda_engine(policy, half, shape, axis, rng):
    """Half arrays in and out on the CUDA engine too (permuted layouts included), agreeing with
    the CPU engine to the half type's rounding; float32 input is rounded to half first."""
    from conftest import Backend
    gpu = Backend("cuda")
    x = rng.normal(3.0, 2.0, size=shape).astype(half)
    dy = rng.normal(size=shape).astype(half)
    cpu_layer, gpu_layer = BN(axis=axis, dtype=policy), BN(axis=axis, dtype=policy)
    y_cpu, y_gpu = cpu_layer(x, training=True), gpu.host(gpu_layer(gpu.to(x), training=True))
    assert y_gpu.dtype == half
    assert_close(y_gpu.astype(np.float64), y_cpu.astype(np.float64), half)
    dx_gpu = gpu.host(gpu_layer.backward(gpu.to(dy)))
    assert dx_gpu.dtype == half
    assert_close(dx_gpu.astype(np.float64), cpu_layer.backward(dy).astype(np.float64), half)
    assert_close(gpu_layer.moving_variance.value, cpu_layer.moving_variance.value, np.float32)
    x32 = rng.normal(size=shape).astype(np.float32)
    y_round = gpu.host(gpu_layer(gpu.to(x32)))
    assert_close(y_round.astype(np.float64),
                 gpu.host(gpu_layer(gpu.to(x32.astype(half)))).astype(np.float64), half)
    y16, _ = F.batch_norm_train(gpu.to(x), axis=axis)
    assert gpu.host(y16).dtype == half


@pytest.mark.parametrize("shape, axis, masked", [((40, 6), -1, False), ((3, 4, 5, 6), 1, False),
                                                 ((3, 4, 5, 6), [1, 3], False),
                                                 ((6, 5, 4), -1, True)])
def test_float16_on_the_cuda_engine_equals_the_float32_route(shape, axis, masked, rng):
    """The CUDA kernels read and write float16 as it is, computing in float32: bitwise the
    results of casting to float32 first."""
    from conftest import Backend
    gpu = Backend("cuda")
    x = rng.normal(3.0, 2.0, size=shape).astype(np.float16)
    dy = rng.normal(size=shape).astype(np.float16)
    mask = rng.random(shape[:-1]) < 0.7 if masked else None
    kw = dict(axis=axis) if mask is None else dict(axis=axis, mask=gpu.to(mask))
    y, cache = F.batch_norm_train(gpu.to(x), **kw)
    y32, cache32 = F.batch_norm_train(gpu.to(x.astype(np.float32)), **kw)
    y, y32 = gpu.host(y), gpu.host(y32)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y.view(np.uint16), y32.astype(np.float16).view(np.uint16))
    dx, dgamma, _ = F.batch_norm_backward(gpu.to(dy), cache)
    dx32, dgamma32, _ = F.batch_norm_backward(gpu.to(dy.astype(np.float32)), cache32)
    dx, dx32 = gpu.host(dx), gpu.host(dx32)
    assert dx.dtype == np.float16
    np.testing.assert_array_equal(dx.view(np.uint16), dx32.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(gpu.host(dgamma), gpu.host(dgamma32))

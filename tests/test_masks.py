"""Masked batch statistics: only the marked positions make the statistics, every position is
normalized, and the backward pass is exact (both engines against the float64 reference)."""
import pathlib

import numpy as np
import pytest
from conftest import STATS_RTOL, assert_close, numeric_grad

import numbabn
from numbabn import functional as F
from numbabn import reference as R

BN = numbabn.BatchNormalization

# input shape, feature axis, mask shape (the input's shape without the feature axes, or one that
# broadcasts with size 1 on them)
CASES = [
    ((6, 5, 4), -1, (6, 5)),             # (N, T, C) with an (N, T) mask, as Keras gives
    ((4, 3, 70), 1, (4, 70)),            # channels first: planes with 2 chunks on the simulator
    ((5, 4, 6, 3), [1, 3], (5, 1, 6, 1)),  # non-adjacent feature axes
    ((37, 11), -1, (37, 1)),             # rows, several units and feature tiles
    ((4, 2, 3, 5), -1, (1, 2, 3, 1)),    # the same mask for every sample, broadcast
]


def axes_of(axis, ndim):
    return tuple(sorted(a % ndim for a in ([axis] if isinstance(axis, int) else axis)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis, mask_shape", CASES)
def test_masked_statistics_forward_and_backward(shape, axis, mask_shape, dtype, backend, rng):
    axes = axes_of(axis, len(shape))
    x = rng.normal(2.0, 3.0, size=shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    mask = rng.random(mask_shape) < 0.6
    mask.reshape(-1)[0] = True
    keep = mask if len(mask_shape) == len(shape) else np.expand_dims(mask, axes)
    y, cache = F.batch_norm_train(backend.to(x), axis=axis, mask=backend.to(mask))
    dx, dgamma, dbeta = F.batch_norm_backward(backend.to(dy), cache)
    y_ref, mean_ref, var_ref, count = R.forward_train_masked(x, axes, 1e-3, keep)
    dx_ref, dg_ref, db_ref = R.backward_train_masked(dy, x, axes, 1e-3, keep)
    assert cache.count == int(count.reshape(-1)[0])
    assert_close(backend.host(y), y_ref, dtype)
    assert_close(backend.host(dx), dx_ref, dtype, scale=4)
    fshape = tuple(shape[a] for a in axes)
    assert_close(backend.host(dgamma), dg_ref.reshape(fshape), dtype, scale=4 * x.size)
    assert_close(backend.host(dbeta), db_ref.reshape(fshape), dtype, scale=x.size)
    # the statistics are those of the kept values alone (the masked ones dropped)
    last = range(len(shape) - len(axes), len(shape))
    values = np.moveaxis(x.astype(np.float64), axes, last)          # (positions..., features...)
    kept_at = np.moveaxis(np.broadcast_to(keep, shape), axes, last)[(...,) + (0,) * len(axes)]
    kept = values[kept_at]                                            # (n, features...)
    tol = STATS_RTOL[np.dtype(dtype)]
    np.testing.assert_allclose(backend.host(cache.mean).reshape(-1), kept.mean(axis=0).reshape(-1),
                               rtol=tol, atol=tol)
    np.testing.assert_allclose(backend.host(cache.variance).reshape(-1),
                               kept.var(axis=0).reshape(-1), rtol=tol, atol=tol)


def test_masked_reference_gradient_matches_finite_differences(rng):
    x = rng.normal(size=(5, 4, 3))
    dy = rng.normal(size=x.shape)
    mask = rng.random((5, 4, 1)) < 0.5
    mask[0, 0, 0] = mask[1, 1, 0] = True

    def loss(v):
        return float((dy * R.forward_train_masked(v, (2,), 1e-3, mask, 1.3)[0]).sum())
    dx, _, _ = R.backward_train_masked(dy, x, (2,), 1e-3, mask, 1.3)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)


def test_layer_moving_statistics_use_the_masked_count(backend, rng):
    x = rng.normal(5.0, 2.0, size=(6, 8, 3, 4)).astype(np.float32)   # fused path (rank 4)
    mask = rng.random((6, 8, 3)) < 0.5
    layer = BN(momentum=0.0)
    y = backend.host(layer(backend.to(x), training=True, mask=backend.to(mask)))
    kept = x[mask].astype(np.float64)                               # (n, C): the kept positions
    n = len(kept)
    assert_close(layer.moving_mean.value, kept.mean(axis=0), scale=5)
    assert_close(layer.moving_variance.value, kept.var(axis=0) * n / (n - 1), scale=5)
    assert_close(y, (x - kept.mean(axis=0)) / np.sqrt(kept.var(axis=0) + 1e-3), scale=5)
    dx = backend.host(layer.backward(backend.to(np.ones_like(x))))
    dx_ref, _, _ = R.backward_train_masked(np.ones_like(x), x, (3,), 1e-3, mask[..., None])
    assert_close(dx, dx_ref, np.float32, scale=4)
    plain = backend.host(layer(backend.to(x), training=False, mask=backend.to(mask)))
    assert_close(plain, backend.host(layer(backend.to(x), training=False)))   # ignored


def test_mask_errors_change_nothing(rng):
    x = rng.normal(size=(8, 4)).astype(np.float32)
    layer = BN()
    layer(x, training=True)
    before = layer.get_weights()
    with pytest.raises(ValueError, match="Received: mask with shape"):
        layer(x, training=True, mask=np.ones((8, 4), bool))          # varies along features
    with pytest.raises(ValueError, match="Received: mask with shape"):
        layer(x, training=True, mask=np.ones(5, bool))
    with pytest.raises(ValueError, match="selects no position"):
        layer(x, training=True, mask=np.zeros(8, bool))
    with pytest.raises(TypeError, match="mask"):
        layer(x, training=True, mask="yes")
    with pytest.raises(ValueError, match="virtual_batch_size"):
        BN(virtual_batch_size=2)(x, training=True, mask=np.ones(8, bool))
    with pytest.raises(ValueError, match="virtual_batch_size"):
        F.batch_norm_train(x, virtual_batch_size=2, mask=np.ones(8, bool))
    for a, b in zip(layer.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    fresh = BN()
    with pytest.raises(ValueError):
        fresh(x, training=True, mask=np.ones(3, bool))
    assert not fresh.built                                            # a failed first call


def test_a_host_mask_for_device_input_is_a_type_error(rng):
    from conftest import Backend
    gpu = Backend("cuda")
    x = rng.normal(size=(8, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="mask"):
        F.batch_norm_train(gpu.to(x), mask=np.ones(8, bool))
    with pytest.raises(TypeError, match="mask"):
        F.batch_norm_train(x, mask=gpu.to(np.ones(8, bool)))


KERAS3 = sorted((pathlib.Path(__file__).parent / "golden" / "keras3").glob("*.npz"))


@pytest.mark.parametrize("path", KERAS3, ids=lambda p: p.stem)
def test_matches_keras3_masked_batch_norm(path, backend):
    """Fixtures from Keras 3's own masked BatchNormalization (generate_keras3_masked.py in
    tests/golden). Keras 3 has no fused-path correction of the moving variance: fused=False."""
    data = np.load(path)
    layer = BN(axis=int(data["axis"]), momentum=0.5, fused=False)
    for step in range(2):
        y = layer(backend.to(data[f"x{step}"]), training=True, mask=backend.to(data[f"mask{step}"]))
        assert_close(backend.host(y), data[f"y{step}"], scale=5)
        dx = layer.backward(backend.to(data[f"dy{step}"]))
        assert_close(backend.host(dx), data[f"dx{step}"], scale=5)
        assert_close(layer.moving_mean.value, data[f"moving_mean{step}"], scale=5)
        assert_close(layer.moving_variance.value, data[f"moving_variance{step}"], scale=5)


def test_keras3_fixtures_present():
    assert len(KERAS3) == 2

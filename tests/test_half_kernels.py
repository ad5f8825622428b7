"""Half-precision storage on the CPU engine: the 16-bit conversions are exact (and round as NumPy
and ml_dtypes round), and kernels that read and write float16/bfloat16 in place give bitwise the
results of casting to float32, computing, and casting back."""
import numpy as np
import pytest
from numba import njit

import numbabn
from numbabn import functional as F
from numbabn.cpu import kernels as K

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
HALVES = [np.dtype(np.float16), BF16]


@njit
def _map_f16_to_f32(bits, out, portable):
    for i in range(bits.size):
        out[i] = K.f16_to_f32_portable(bits[i]) if portable else K.f16_to_f32(bits[i])


@njit
def _map_f32_to_f16(values, out, portable):
    for i in range(values.size):
        out[i] = K.f32_to_f16_portable(values[i]) if portable else K.f32_to_f16(values[i])


@njit
def _map_bf16(bits, widened, values, narrowed):
    for i in range(bits.size):
        widened[i] = K.bf16_to_f32(bits[i])
    for i in range(values.size):
        narrowed[i] = K.f32_to_bf16(values[i])


def _rounding_probes(half, rng):
    """float32 values where rounding to ``half`` can go wrong: every midpoint between adjacent
    half values and its float32 neighbours, the overflow and subnormal ranges, the specials,
    and random bit patterns."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = bits.view(half).astype(np.float32)
    finite = np.sort(finite[np.isfinite(finite)])
    mids = (finite[:-1].astype(np.float64) + finite[1:]) / 2
    mids = mids.astype(np.float32)             # exact: a half midpoint needs few bits
    near = [mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))]
    info = ml_dtypes.finfo(half)
    big, tiny = float(info.max), float(info.tiny)
    ranges = [np.linspace(big * 0.999, big * 1.001, 4001, dtype=np.float32),
              np.linspace(-2 * tiny, 2 * tiny, 40001, dtype=np.float32)]
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45,
                         3.4e38, -3.4e38], np.float32)
    noise = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate(near + ranges + [specials, noise])


def _same_bits(actual, expected, half):
    """Equal bit patterns, except that NaNs need only be NaNs of the same sign."""
    a_nan = np.isnan(actual.view(half).astype(np.float32))
    e_nan = np.isnan(expected.view(half).astype(np.float32))
    np.testing.assert_array_equal(a_nan, e_nan)
    np.testing.assert_array_equal(actual[~a_nan], expected[~e_nan])
    np.testing.assert_array_equal(actual[a_nan] >> 15, expected[e_nan] >> 15)


@pytest.mark.parametrize("portable", [False, True], ids=["target", "portable"])
def test_float16_widening_is_exact_for_every_value(portable):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(bits.size, np.float32)
    _map_f16_to_f32(bits, out, portable)
    expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(out.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])


@pytest.mark.parametrize("portable", [False, True], ids=["target", "portable"])
def test_float16_narrowing_rounds_like_numpy(portable, rng):
    values = _rounding_probes(np.float16, rng)
    out = np.empty(values.size, np.uint16)
    _map_f32_to_f16(values, out, portable)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    _same_bits(out, expected, np.float16)


def test_bfloat16_conversions_match_ml_dtypes(rng):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.int16)
    values = _rounding_probes(BF16, rng)
    widened = np.empty(bits.size, np.float32)
    narrowed = np.empty(values.size, np.int16)
    _map_bf16(bits, widened, values, narrowed)
    expected = bits.view(BF16).astype(np.float32)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(widened), nan)
    np.testing.assert_array_equal(widened.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = values.astype(BF16).view(np.uint16)
    _same_bits(narrowed.view(np.uint16), rounded, BF16)


# ------------------------------------------------------------------------------------------------
# kernels reading and writing half precision == the float32 route


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


CASES = {
    "rows": dict(shape=(4096, 24), axis=-1),                # parallel rows kernels
    "rows-small": dict(shape=(40, 5), axis=-1),             # serial twins
    "planes": dict(shape=(6, 10, 33, 40), axis=1),          # parallel planes kernels
    "ghost": dict(shape=(64, 7, 5), axis=-1, virtual_batch_size=4),     # per-group kernels
    "ghost-planes": dict(shape=(16, 3, 9, 9), axis=1, virtual_batch_size=4),
    "two-axes": dict(shape=(8, 6, 7, 9), axis=[1, 3]),      # a transposed canonical view
}


def _assert_half_equals_float32_route(forward, x, dy):
    """``forward(x) -> (y, cache)`` on half ``x`` and the backward through it with half ``dy``
    give bitwise the results of the same calls on float32 copies, rounded to the half type."""
    half = x.dtype
    y, cache = forward(x)
    y32, cache32 = forward(x.astype(np.float32))
    assert y.dtype == half
    assert _bits(y).tobytes() == _bits(y32.astype(half)).tobytes()
    np.testing.assert_array_equal(cache.mean, cache32.mean)
    np.testing.assert_array_equal(cache.variance, cache32.variance)
    dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
    dx32, dgamma32, dbeta32 = F.batch_norm_backward(dy.astype(np.float32), cache32)
    assert dx.dtype == half
    assert _bits(dx).tobytes() == _bits(dx32.astype(half)).tobytes()
    np.testing.assert_array_equal(dgamma, dgamma32)
    np.testing.assert_array_equal(dbeta, dbeta32)


@pytest.mark.parametrize("half", HALVES, ids=lambda d: d.name)
@pytest.mark.parametrize("case", list(CASES))
def test_functional_half_equals_float32_route_bitwise(half, case, rng):
    spec = dict(CASES[case])
    shape = spec.pop("shape")
    x = rng.normal(3.0, 2.0, size=shape).astype(half)
    dy = rng.normal(size=shape).astype(half)
    C = [shape[a] for a in np.atleast_1d(spec["axis"])]
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.normal(size=C)
    _assert_half_equals_float32_route(lambda v: F.batch_norm_train(v, gamma, beta, **spec), x, dy)


@pytest.mark.parametrize("half", HALVES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape, axis, mask_shape", [((512, 9, 6), -1, (512, 9)),
                                                     ((8, 6, 70, 3), 1, (8, 1, 70, 3))])
def test_masked_half_equals_float32_route_bitwise(half, shape, axis, mask_shape, rng):
    x = rng.normal(1.0, 3.0, size=shape).astype(half)
    dy = rng.normal(size=shape).astype(half)
    mask = rng.random(mask_shape) < 0.7
    _assert_half_equals_float32_route(lambda v: F.batch_norm_train(v, axis=axis, mask=mask),
                                      x, dy)


@pytest.mark.parametrize("half", HALVES, ids=lambda d: d.name)
def test_inference_half_equals_float32_route_bitwise(half, rng):
    x = rng.normal(size=(300, 70)).astype(half)
    dy = rng.normal(size=x.shape).astype(half)
    stats = dict(mean=rng.normal(size=70), variance=rng.uniform(0.5, 2.0, 70),
                 gamma=rng.normal(size=70), beta=rng.normal(size=70))
    _assert_half_equals_float32_route(lambda v: F.batch_norm_infer(v, **stats), x, dy)


@pytest.mark.parametrize("half", HALVES, ids=lambda d: d.name)
def test_mixed_storage_dtypes(half, rng):
    """Half input with a float32 gradient and the reverse: each array is read in its own
    format, and dx comes back in x's dtype (as the layer's does)."""
    x = rng.normal(size=(2000, 12)).astype(half)
    dy = rng.normal(size=x.shape).astype(np.float32)
    _, cache = F.batch_norm_train(x)
    _, cache32 = F.batch_norm_train(x.astype(np.float32))
    dx, _, _ = F.batch_norm_backward(dy, cache)
    dx32, _, _ = F.batch_norm_backward(dy, cache32)
    assert dx.dtype == half
    assert _bits(dx).tobytes() == _bits(dx32.astype(half)).tobytes()
    _, cache = F.batch_norm_train(x.astype(np.float32))
    dx, _, _ = F.batch_norm_backward(dy.astype(half), cache)
    dx32, _, _ = F.batch_norm_backward(dy.astype(half).astype(np.float32), cache)
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, dx32)


@pytest.mark.parametrize("policy, half", [("mixed_float16", np.dtype(np.float16)),
                                          ("mixed_bfloat16", BF16)])
def test_half_layer_rounds_float32_input_first(policy, half, rng):
    """Keras casts the input to the compute dtype before the layer's math: float32 input to a
    half layer gives exactly what the input rounded to half gives."""
    x = rng.normal(3.0, 2.0, size=(256, 10)).astype(np.float32)
    a, b = (numbabn.BatchNormalization(dtype=policy) for _ in range(2))
    ya = a(x, training=True)
    yb = b(x.astype(half), training=True)
    assert ya.dtype == half
    assert _bits(ya).tobytes() == _bits(yb).tobytes()
    np.testing.assert_array_equal(a.moving_mean.value, b.moving_mean.value)
    np.testing.assert_array_equal(a.moving_variance.value, b.moving_variance.value)


def test_float32_layer_reads_half_input_exactly(rng):
    x = rng.normal(size=(64, 8, 8, 16)).astype(np.float16)
    dy = rng.normal(size=x.shape).astype(np.float16)
    a, b = numbabn.BatchNormalization(), numbabn.BatchNormalization()
    ya, yb = a(x, training=True), b(x.astype(np.float32), training=True)
    assert ya.dtype == np.float32
    np.testing.assert_array_equal(ya, yb)
    dxa, dxb = a.backward(dy), b.backward(dy.astype(np.float32))
    assert dxa.dtype == np.float16          # the input's dtype
    assert _bits(dxa).tobytes() == _bits(dxb.astype(np.float16)).tobytes()


def test_non_native_half_input(rng):
    x = rng.normal(size=(100, 6)).astype(np.float16)
    y, _ = F.batch_norm_train(x.astype(">f2"))
    y_native, _ = F.batch_norm_train(x)
    np.testing.assert_array_equal(y.astype(np.float16), y_native)

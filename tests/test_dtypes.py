"""The dtype table (numbabn/_dtypes.py) is what the layer, the functional API and the engines do.

Every pair of input and gradient dtypes: the functional API returns y and dx in the table's
result dtype of the input, the layer returns dx in the input's floating dtype (its compute
dtype otherwise), and for a float32 layer the two agree.
"""
import itertools

import ml_dtypes
import numpy as np
import pytest

import numbabn
from numbabn import _dtypes
from numbabn import functional as F
from numbabn.cpu import engine

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64),
          np.dtype(">f4"), np.dtype(np.int32), np.dtype(np.uint8)]


def _data(dtype, shape=(64, 5), seed=0):
    values = np.random.default_rng(seed).normal(2.0, 3.0, size=shape)
    if dtype.kind in "iu":
        values = np.abs(values) * 10
    return values.astype(dtype)


@pytest.mark.parametrize("x_dtype, dy_dtype", list(itertools.product(DTYPES, DTYPES)),
                         ids=lambda d: str(d))
def test_layer_and_functional_agree_on_result_dtypes(x_dtype, dy_dtype):
    x, dy = _data(x_dtype), _data(dy_dtype, seed=1)
    want = _dtypes.result(x_dtype)
    y, cache = F.batch_norm_train(x)
    dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
    assert (y.dtype, dx.dtype, dgamma.dtype, dbeta.dtype) == (want, want, np.float64,
                                                                np.float64)
    layer = numbabn.BatchNormalization()
    assert layer(x, training=True).dtype == np.float32       # Keras: the compute dtype
    layer_dx = layer.backward(dy)
    assert layer_dx.dtype == dx.dtype
    assert layer.grads["gamma"].dtype == np.float32          # the weights' dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_table_rows(dtype):
    rule = _dtypes.rule(dtype)
    if dtype.kind == "f" or dtype == BF16:
        assert rule.result == dtype.newbyteorder("=")
        assert rule.arithmetic == (np.float64 if dtype.itemsize == 8 else np.float32)
    else:
        assert rule == _dtypes.Rule(*[np.dtype(np.float32)] * 4)
    assert F.compute_dtype(dtype) == rule.arithmetic
    if (dtype.kind == "f" or dtype == BF16) and dtype.isnative:
        # the CPU kernels see the stored bits as the table says
        assert engine._raw(np.zeros(3, dtype)).dtype == rule.cpu_view
    assert _dtypes.is_half(dtype) == (dtype.itemsize == 2 and dtype.kind in "fV")

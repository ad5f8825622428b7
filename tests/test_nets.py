"""The NumPy networks of the training-loop benchmark.

The convolution (against its definition, and its backward by finite differences in float64) and
the softmax cross-entropy are checked here; numbabn's and the NumPy batch norm must train a
network alike. The whole networks' backward passes are checked against PyTorch's autograd by
``python -m numbabn loop``, which refuses to time networks whose losses over the first steps
differ from PyTorch's (``tests/test_training_loop.py`` runs it without PyTorch in CI).
"""
import numpy as np
import pytest
from conftest import assert_close

from numbabn.tools import nets


def direct_conv3x3(x, kernel, stride, layout):
    """The convolution by its definition: a sum over the 3x3 window, padding 1."""
    if layout == "NCHW":
        x = x.transpose(0, 2, 3, 1)
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    y = np.zeros((n, ho, wo, kernel.shape[3]))
    for i in range(3):
        for j in range(3):
            patch = xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :]
            y += patch @ kernel[i, j]
    return y if layout == "NHWC" else y.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("stride, size", [(1, 5), (2, 6), (2, 5)])
def test_conv_forward_and_backward(layout, stride, size, rng):
    conv = nets.Conv3x3(rng, 2, 3, stride, layout)
    conv.w = conv.w.astype(np.float64)
    conv.kernel = conv.kernel.astype(np.float64)
    shape = (2, size, size, 2) if layout == "NHWC" else (2, 2, size, size)
    x = rng.normal(size=shape)
    y = conv.forward(x)
    assert_close(y, direct_conv3x3(x, conv.kernel, stride, layout), np.float64)
    u = rng.normal(size=y.shape)
    dx = conv.backward(u)
    h = 1e-6
    for flat in [0, 7, x.size // 2 + 3, x.size - 1]:
        idx = np.unravel_index(flat, shape)
        e = np.zeros(shape)
        e[idx] = h
        numeric = (np.sum(conv.forward(x + e) * u) - np.sum(conv.forward(x - e) * u)) / (2 * h)
        assert dx[idx] == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    conv.forward(x)
    conv.backward(u)
    dw = conv.grads[0]
    for k in [0, dw.size // 2, dw.size - 1]:
        e = np.zeros(conv.w.size)
        e[k] = h
        w0 = conv.w.copy()
        conv.w = w0 + e.reshape(w0.shape)
        plus = np.sum(conv.forward(x) * u)
        conv.w = w0 - e.reshape(w0.shape)
        minus = np.sum(conv.forward(x) * u)
        conv.w = w0
        assert dw.reshape(-1)[k] == pytest.approx((plus - minus) / (2 * h), rel=1e-6)


def test_softmax_cross_entropy_gradient(rng):
    logits = rng.normal(size=(4, 5))
    labels = np.array([0, 3, 4, 1])
    _, grad = nets.softmax_cross_entropy(logits, labels)
    h = 1e-6
    for idx in [(0, 0), (1, 3), (3, 2)]:
        e = np.zeros_like(logits)
        e[idx] = h
        numeric = (nets.softmax_cross_entropy(logits + e, labels)[0]
                   - nets.softmax_cross_entropy(logits - e, labels)[0]) / (2 * h)
        assert grad[idx] == pytest.approx(numeric, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("name", list(nets.NETWORKS))
def test_numbabn_and_numpy_batch_norm_train_a_network_alike(name):
    x, labels = nets.make_batch(name)
    losses = {}
    for norm in ("numbabn", "numpy"):
        net = nets.NETWORKS[name]["make"](norm)
        losses[norm] = [net.step(x, labels) for _ in range(4)]
        assert net.timer.seconds > 0
    # losses after 4 SGD steps of two float32 networks: roundings grow with the steps, beyond
    # the float32 TOLERANCE row (loopbench.LOSS_RTOL is the same notion after 3)
    np.testing.assert_allclose(losses["numbabn"], losses["numpy"], rtol=2e-4)
    assert losses["numbabn"][-1] < losses["numbabn"][0]       # it learns the (random) labels


def test_unknown_norm_and_layout_are_refused():
    with pytest.raises(ValueError, match="Received: impl='torch'"):
        nets.MLP("torch")
    with pytest.raises(ValueError, match="Received: layout='NDHWC'"):
        nets.ResidualCNN("numpy", layout="NDHWC")

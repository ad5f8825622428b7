"""Small networks written in NumPy, forward and backward by hand: what a NumPy training loop is.

These are the workloads of ``python -m numbabn loop`` and of the asv ``loop`` benchmarks: batch
normalization timed where its users run it, between matrix products, convolutions by im2col and
ReLUs, not alone. Every batch norm of a network is one object with the small interface of
:class:`Norm`, so the same network runs with numbabn's layer or with a plain NumPy batch norm.

Networks (float32):

* ``mlp``: 256 -> dense 512 -> BN -> ReLU -> dense 512 -> BN -> ReLU -> dense 10, softmax
  cross-entropy, batch 128.
* ``cnn``: 32x32x3 images -> conv3x3 16 -> BN -> ReLU -> conv3x3/2 32 -> BN -> ReLU ->
  conv3x3 32 + residual -> BN -> ReLU -> global average pool -> dense 10, batch 64, in NHWC or
  NCHW.

One training step is forward, softmax cross-entropy, backward and an SGD update of every weight.
Dense and convolution layers have no bias before a batch norm (its beta is the bias).
"""
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MOMENTUM = 0.99
EPSILON = 1e-3
LEARNING_RATE = 0.05


class Timer:
    """Seconds spent inside batch normalization, summed over the calls since the last reset."""

    def __init__(self):
        self.seconds = 0.0

    def reset(self):
        self.seconds = 0.0


class Norm:
    """A batch norm inside a network: ``forward(x, training)``, ``backward(dy) -> dx``, and its
    ``params`` / ``grads`` (gamma, beta) for the update. ``impl``: ``"numbabn"`` or ``"numpy"``."""

    def __init__(self, impl, channels, axis, ndim, timer):
        self.timer = timer
        if impl == "numbabn":
            from ..layer import BatchNormalization
            self.layer = BatchNormalization(axis=axis, momentum=MOMENTUM, epsilon=EPSILON)
            self.layer.build((1,) * axis + (channels,) + (1,) * (ndim - axis - 1))
            self.params = [self.layer.gamma.value, self.layer.beta.value]
            self._forward, self._backward = self._numbabn_forward, self._numbabn_backward
        elif impl == "numpy":
            from .bench import NumpyBatchNorm
            ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
            self.layer = NumpyBatchNorm(ndim, axis, ones, zeros, zeros, ones, MOMENTUM, EPSILON)
            self.params = [self.layer.gamma, self.layer.beta]
            self._forward, self._backward = self._numpy_forward, self._numpy_backward
        else:
            raise ValueError(f"`impl` must be 'numbabn' or 'numpy'. Received: impl={impl!r}")
        self.grads = None

    def forward(self, x, training=True):
        start = time.perf_counter()
        y = self._forward(x, training)
        self.timer.seconds += time.perf_counter() - start
        return y

    def backward(self, dy):
        start = time.perf_counter()
        dx = self._backward(dy)
        self.timer.seconds += time.perf_counter() - start
        return dx

    def _numbabn_forward(self, x, training):
        return self.layer(x, training=training)

    def _numbabn_backward(self, dy):
        dx = self.layer.backward(dy)
        self.grads = [self.layer.grads["gamma"], self.layer.grads["beta"]]
        return dx

    def _numpy_forward(self, x, training):
        return self.layer.train(x) if training else self.layer.infer(x)

    def _numpy_backward(self, dy):
        dx = self.layer.backward(dy)
        self.grads = [self.layer.grads["gamma"], self.layer.grads["beta"]]
        return dx


def relu(x):
    return np.maximum(x, 0, out=x)          # x is a fresh output nobody else holds


def relu_backward(dy, y):
    return np.multiply(dy, y > 0, out=dy)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy and its gradient with respect to ``logits``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    loss = float(np.mean(np.log(total[:, 0]) - shifted[np.arange(n), labels]))
    grad = exp / total
    grad[np.arange(n), labels] -= 1
    grad /= n
    return loss, grad


def he_normal(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


class Conv3x3:
    """A 3x3 convolution with padding 1 by im2col and one matrix product.

    ``kernel`` is kept in Keras' (3, 3, in, out) order; the product uses it as a (9*in, out)
    matrix for NHWC (patches as rows) and an (out, 9*in) one for NCHW (patches as columns of each
    sample), so both layouts run without transposing the activations.
    """

    def __init__(self, rng, c_in, c_out, stride, layout):
        self.stride, self.layout = stride, layout
        self.kernel = he_normal(rng, (3, 3, c_in, c_out), 9 * c_in)
        self.c_in, self.c_out = c_in, c_out
        if layout == "NHWC":
            self.w = self.kernel.reshape(9 * c_in, c_out).copy()
        else:                               # columns ordered (in, kh, kw)
            self.w = self.kernel.transpose(3, 2, 0, 1).reshape(c_out, c_in * 9).copy()
        self.params = [self.w]

    def forward(self, x):
        s, nhwc = self.stride, self.layout == "NHWC"
        spatial = (1, 2) if nhwc else (2, 3)
        pad = [(0, 0)] * 4
        for a in spatial:
            pad[a] = (1, 1)
        xp = np.pad(x, pad)
        win = sliding_window_view(xp, (3, 3), axis=spatial)
        if nhwc:                            # (N, Ho, Wo, C, 3, 3) -> rows (kh, kw, C)
            win = win[:, ::s, ::s]
            n, ho, wo = win.shape[:3]
            cols = np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n * ho * wo, -1)
            y = (cols @ self.w).reshape(n, ho, wo, self.c_out)
        else:                               # (N, C, Ho, Wo, 3, 3) -> columns (C, kh, kw)
            win = win[:, :, ::s, ::s]
            n, _, ho, wo = win.shape[:4]
            cols = np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3)).reshape(n, -1, ho * wo)
            y = np.matmul(self.w, cols).reshape(n, self.c_out, ho, wo)
        self.cache = (x.shape, cols, ho, wo)
        return y

    def backward(self, dy, need_dx=True):
        shape, cols, ho, wo = self.cache
        s, n = self.stride, shape[0]
        if self.layout == "NHWC":
            d2 = dy.reshape(-1, self.c_out)
            self.grads = [cols.T @ d2]
            if not need_dx:
                return None
            dcols = (d2 @ self.w.T).reshape(n, ho, wo, 3, 3, self.c_in)
            dxp = np.zeros((n, shape[1] + 2, shape[2] + 2, self.c_in), dcols.dtype)
            for i in range(3):
                for j in range(3):
                    dxp[:, i:i + s * ho:s, j:j + s * wo:s, :] += dcols[:, :, :, i, j, :]
            return dxp[:, 1:-1, 1:-1, :]
        d3 = dy.reshape(n, self.c_out, ho * wo)
        self.grads = [np.matmul(d3, cols.transpose(0, 2, 1)).sum(axis=0)]
        if not need_dx:
            return None
        dcols = np.matmul(self.w.T, d3).reshape(n, self.c_in, 3, 3, ho, wo)
        dxp = np.zeros((n, self.c_in, shape[2] + 2, shape[3] + 2), dcols.dtype)
        for i in range(3):
            for j in range(3):
                dxp[:, :, i:i + s * ho:s, j:j + s * wo:s] += dcols[:, :, i, j]
        return dxp[:, :, 1:-1, 1:-1]


class Dense:
    def __init__(self, rng, n_in, n_out, bias):
        self.w = he_normal(rng, (n_in, n_out), n_in)
        self.b = np.zeros(n_out, np.float32) if bias else None
        self.params = [self.w] + ([self.b] if bias else [])

    def forward(self, x):
        self.x = x
        y = x @ self.w
        if self.b is not None:
            y += self.b
        return y

    def backward(self, dy, need_dx=True):
        self.grads = [self.x.T @ dy] + ([dy.sum(axis=0)] if self.b is not None else [])
        return dy @ self.w.T if need_dx else None


class Network:
    """Layers in order; ``step(x, labels)`` trains once and returns the loss."""

    def __init__(self):
        self.timer = Timer()

    def parameters(self):
        for layer in self.layers:
            yield from zip(layer.params, layer.grads)

    def step(self, x, labels, lr=LEARNING_RATE):
        loss, dlogits = softmax_cross_entropy(self.forward(x), labels)
        self.backward(dlogits)
        for p, g in self.parameters():
            p -= lr * g.reshape(p.shape)
        return loss


class MLP(Network):
    """256 -> 512 -> BN -> ReLU -> 512 -> BN -> ReLU -> 10."""

    def __init__(self, norm, seed=0, widths=(256, 512, 512, 10)):
        super().__init__()
        rng = np.random.default_rng(seed)
        n_in, h1, h2, n_out = widths
        self.d1 = Dense(rng, n_in, h1, bias=False)
        self.bn1 = Norm(norm, h1, 1, 2, self.timer)
        self.d2 = Dense(rng, h1, h2, bias=False)
        self.bn2 = Norm(norm, h2, 1, 2, self.timer)
        self.d3 = Dense(rng, h2, n_out, bias=True)
        self.layers = [self.d1, self.bn1, self.d2, self.bn2, self.d3]

    def forward(self, x, training=True):
        self.h1 = relu(self.bn1.forward(self.d1.forward(x), training))
        self.h2 = relu(self.bn2.forward(self.d2.forward(self.h1), training))
        return self.d3.forward(self.h2)

    def backward(self, dlogits):
        d = relu_backward(self.d3.backward(dlogits), self.h2)
        d = relu_backward(self.d2.backward(self.bn2.backward(d)), self.h1)
        self.d1.backward(self.bn1.backward(d), need_dx=False)


class ResidualCNN(Network):
    """conv 16 -> BN -> ReLU -> conv/2 32 -> BN -> ReLU -> conv 32 + residual -> BN -> ReLU ->
    global average pool -> dense 10, on (N, 32, 32, 3) or (N, 3, 32, 32) images."""

    def __init__(self, norm, layout="NHWC", seed=0, channels=(3, 16, 32), classes=10):
        super().__init__()
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"`layout` must be 'NHWC' or 'NCHW'. Received: layout={layout!r}")
        rng = np.random.default_rng(seed)
        c0, c1, c2 = channels
        self.layout = layout
        axis = 3 if layout == "NHWC" else 1
        self.conv1 = Conv3x3(rng, c0, c1, 1, layout)
        self.bn1 = Norm(norm, c1, axis, 4, self.timer)
        self.conv2 = Conv3x3(rng, c1, c2, 2, layout)
        self.bn2 = Norm(norm, c2, axis, 4, self.timer)
        self.conv3 = Conv3x3(rng, c2, c2, 1, layout)
        self.bn3 = Norm(norm, c2, axis, 4, self.timer)
        self.dense = Dense(rng, c2, classes, bias=True)
        self.layers = [self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3,
                       self.dense]
        self.spatial = (1, 2) if layout == "NHWC" else (2, 3)

    def forward(self, x, training=True):
        self.h1 = relu(self.bn1.forward(self.conv1.forward(x), training))
        self.h2 = relu(self.bn2.forward(self.conv2.forward(self.h1), training))
        s3 = self.conv3.forward(self.h2)
        s3 += self.h2
        self.h3 = relu(self.bn3.forward(s3, training))
        return self.dense.forward(self.h3.mean(axis=self.spatial))

    def backward(self, dlogits):
        dpool = self.dense.backward(dlogits)
        hw = self.h3.shape[self.spatial[0]] * self.h3.shape[self.spatial[1]]
        expand = (slice(None), None, None, slice(None)) if self.layout == "NHWC" else \
            (slice(None), slice(None), None, None)
        d = np.broadcast_to(dpool[expand] / np.float32(hw), self.h3.shape).copy()
        ds3 = self.bn3.backward(relu_backward(d, self.h3))
        dh2 = self.conv3.backward(ds3)
        dh2 += ds3
        d = self.conv2.backward(self.bn2.backward(relu_backward(dh2, self.h2)))
        self.conv1.backward(self.bn1.backward(relu_backward(d, self.h1)), need_dx=False)


NETWORKS = {
    "mlp": dict(make=lambda norm, seed=0: MLP(norm, seed), input=(128, 256), classes=10),
    "cnn_nhwc": dict(make=lambda norm, seed=0: ResidualCNN(norm, "NHWC", seed),
                     input=(64, 32, 32, 3), classes=10),
    "cnn_nchw": dict(make=lambda norm, seed=0: ResidualCNN(norm, "NCHW", seed),
                     input=(64, 3, 32, 32), classes=10),
}


def make_batch(name, seed=0):
    """A float32 input batch and integer labels for network ``name`` (random, fixed by seed)."""
    spec = NETWORKS[name]
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal(spec["input"]).astype(np.float32)
    labels = rng.integers(0, spec["classes"], size=spec["input"][0])
    return x, labels

"""Stateless batch normalization ops over the engines.

These functions hold no state and know nothing about moving statistics policy: they are what
:class:`numbabn.BatchNormalization` is built from, and what a training loop that keeps its own
state can call directly.

Conventions (see ``docs/numerics.md``):

* statistics are the mean and the **biased** variance, accumulated in float64;
* per-feature arrays have the shape ``feature_shape = tuple(x.shape[a] for a in axes)``, e.g.
  ``(C,)`` for ``axis=-1``; under ghost batching group statistics gain a leading ``G`` axis;
* outputs and input gradients have the input's (floating) dtype; float16 and bfloat16 input is
  computed in float32 and returned in its own dtype (read and written as 16-bit values: half
  the memory traffic of float32).

Examples
--------
>>> import numpy as np
>>> from numbabn import functional as F
>>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(128, 4)).astype(np.float32)
>>> y, cache = F.batch_norm_train(x, gamma=np.ones(4), beta=np.zeros(4), epsilon=1e-3)
>>> bool(np.allclose(y.mean(axis=0), 0.0, atol=1e-5))
True
>>> dx, dgamma, dbeta = F.batch_norm_backward(np.ones_like(y), cache)
>>> bool(np.allclose(dx, 0.0, atol=1e-5))
True
"""
import numpy as np

from . import _dispatch, _dtypes, _ops, _validate
from ._layout import Layout
from ._ops import BatchNormCache, compute_dtype

__all__ = ["moments", "batch_norm_train", "batch_norm_infer", "batch_norm_backward",
           "moving_average", "BatchNormCache"]

# BatchNormCache is made by the shared operations; it is documented as part of this module
BatchNormCache.__module__ = __name__


def _prepare(x, axis, virtual_batch_size=None):
    """Validate ``x`` and ``axis``. Returns the canonical compute-dtype input, its layout, its
    engine, the dtype results are returned in (``x``'s, native, when floating; float32
    otherwise) and the function that turns engine arrays into ``x``'s kind."""
    x, device, eng, wrap = _ops.adopt(x, "x")
    result_dtype = _dtypes.result(np.dtype(x.dtype))
    # a loop calls with the same shape and arguments: their checks and layout are memoized,
    # for the plain types only (an exact int is never a bool, whose key would equal 0 or 1's)
    key = ((x.shape, axis, virtual_batch_size) if type(axis) is int
           and type(virtual_batch_size) in (int, type(None)) else None)
    layout = _LAYOUTS.get(key) if key is not None else None
    if layout is None:
        axes = _validate.resolve_axes(axis, x.ndim)
        virtual_batch_size = _validate.check_virtual_batch_size(virtual_batch_size)
        if virtual_batch_size is not None:
            _validate.check_ghost_axes(axes, list(axes))
            _validate.check_ghost_batch(virtual_batch_size, x.shape)
        layout = Layout(x.shape, axes, virtual_batch_size)
        if key is not None:
            if len(_LAYOUTS) > 64:
                _LAYOUTS.clear()
            _LAYOUTS[key] = layout
    return (_ops.canonical(eng, x, layout, compute_dtype(x.dtype)), layout, eng, result_dtype,
            wrap)


_LAYOUTS = {}                # (shape, axis, virtual_batch_size) -> Layout of a checked call


def _check_not_empty(layout):
    if layout.count == 0:
        raise ValueError("Cannot compute batch statistics of an empty batch. "
                         f"Received: x with shape {layout.shape}")


def as_compute(x):
    """A NumPy input cast to :func:`compute_dtype`."""
    dtype = compute_dtype(x.dtype)
    return x if x.dtype == dtype else x.astype(dtype)


def _per_feature_vector(value, channels, name, default, eng, like):
    """A per-feature argument as a flat float64 ``(C,)`` vector on ``like``'s device
    (``default`` when ``None``). Host values are copied to the device (on ``like``'s stream);
    CUDA arrays must go with a CUDA input."""
    device = eng.DEVICE
    if value is None:
        return eng.constant(channels, default)
    if _dispatch.device_of(value) == _dispatch.CUDA:
        _dispatch.check_same_device(device, [(name, value)])
        v, _ = eng.adopt(value)
        size, shape = v.size, tuple(v.shape)
        _validate.as_real_dtype(v.dtype, name)
        if size not in (1, channels):
            raise ValueError(f"`{name}` must have one value per feature ({channels}). "
                             f"Received: {name} with shape {shape}")
        v = eng.copy(eng.astype(v.reshape(-1), np.float64))   # later writes cannot reach it
        if size == channels:
            return v
        return eng.to_device(np.full(channels, eng.to_host(v)[0]), like)   # reads one value
    v = _validate.as_real_array(value, name)          # a copy: later writes cannot reach it
    if v.size == 1:
        return eng.to_device(np.full(channels, float(v.reshape(()))), like)
    if v.size != channels:
        raise ValueError(
            f"`{name}` must have one value per feature ({channels}). "
            f"Received: {name} with shape {v.shape}")
    return eng.to_device(v.reshape(-1), like)


def moments(x, axis=-1, virtual_batch_size=None):
    """Per-feature mean and biased variance.

    Parameters
    ----------
    x : array
        Input of any rank: a NumPy array (or an array-like), or a CUDA array (CuPy, Numba
        device array); results are arrays of the same kind.
    axis : int or list of int
        Feature axes; every other axis is reduced.
    virtual_batch_size : int, optional
        Compute one set of statistics per ghost batch (samples ``j, j+G, ...``).

    Returns
    -------
    mean, variance : ndarray
        float64 arrays of shape ``feature_shape`` (``(G,) + feature_shape`` with ghost batches).

    Raises
    ------
    ValueError
        Bad ``axis``, an empty batch, or a ``virtual_batch_size`` that does not divide the batch.
    TypeError
        Non-numeric input.

    Examples
    --------
    >>> import numpy as np
    >>> from numbabn.functional import moments
    >>> mean, var = moments(np.array([[1.0, 2.0], [3.0, 6.0]]), axis=-1)
    >>> mean.tolist(), var.tolist()
    ([2.0, 4.0], [1.0, 4.0])

    Ghost batches of 2 samples: group 0 is samples 0 and 2, group 1 is samples 1 and 3.

    >>> mean, var = moments(np.array([[0.0], [10.0], [2.0], [20.0]]), virtual_batch_size=2)
    >>> mean.tolist(), var.tolist()
    ([[1.0], [15.0]], [[1.0], [25.0]])
    """
    xc, layout, eng, _, wrap = _prepare(x, axis, virtual_batch_size)
    _check_not_empty(layout)
    mean, var, _ = _ops.statistics(eng, xc, layout)
    fshape = tuple(layout.shape[a] for a in layout.axes)
    shape = fshape if virtual_batch_size is None else (layout.groups,) + fshape
    return wrap(mean.reshape(shape)), wrap(var.reshape(shape))


def batch_norm_train(x, gamma=None, beta=None, *, axis=-1, epsilon=1e-3, virtual_batch_size=None,
                     mask=None):
    """Normalize ``x`` by its own batch statistics.

    ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta``, with the mean and the biased
    variance of this batch (of each ghost batch with ``virtual_batch_size``; of the kept
    positions with ``mask``).

    Parameters
    ----------
    x : array
        Input of any rank.
    gamma, beta : array-like, optional
        Per-feature scale and offset (``feature_shape`` or any shape with that many values);
        ``None`` means 1 and 0.
    axis : int or list of int
        Feature axes.
    epsilon : float
        Added to the variance.
    virtual_batch_size : int, optional
        Ghost batch size; must divide ``x.shape[0]``.
    mask : array of bool, optional
        Which positions make the statistics: the input's shape without the feature axes (e.g.
        ``(N, T)`` for ``(N, T, C)``), or any shape that broadcasts to the input with size 1 on
        the feature axes. Every position is normalized; the backward pass differentiates the
        masked statistics exactly. Not with ``virtual_batch_size``.

    Returns
    -------
    y : ndarray
        Same shape as ``x``; float32 for integer input, float16 for float16 input.
    cache : BatchNormCache
        For :func:`batch_norm_backward`; ``cache.mean`` and ``cache.variance`` are the batch
        statistics.

    Raises
    ------
    ValueError
        Bad ``axis``, a ``virtual_batch_size`` that does not divide the batch, per-feature
        arguments of the wrong size, a negative ``epsilon``, or a mask of the wrong shape, with
        no true value, or with ``virtual_batch_size``. (An empty batch gives an empty ``y``,
        NaN statistics in the cache, and zero ``dgamma``/``dbeta`` in the backward pass.)
    TypeError
        Non-numeric input or mask, or arrays on different devices.

    Examples
    --------
    >>> import numpy as np
    >>> from numbabn.functional import batch_norm_train
    >>> x = np.random.default_rng(0).normal(4.0, 2.0, size=(8, 3, 5, 5))      # NCHW
    >>> y, cache = batch_norm_train(x, gamma=[1.0, 2.0, 3.0], beta=0.5, axis=1)
    >>> y.std(axis=(0, 2, 3)).round(3).tolist(), cache.mean.shape
    ([1.0, 2.0, 3.0], (3,))

    Statistics from the first 3 of 5 time steps only (the rest is padding):

    >>> seq = np.random.default_rng(0).normal(size=(2, 5, 4))
    >>> mask = np.arange(5) < 3                                     # broadcasts to (2, 5)
    >>> y, cache = batch_norm_train(seq, mask=np.broadcast_to(mask, (2, 5)))
    >>> bool(np.allclose(cache.mean, seq[:, :3].mean(axis=(0, 1))))
    True
    """
    xc, layout, eng, dtype_in, wrap = _prepare(x, axis, virtual_batch_size)
    epsilon = _validate.check_epsilon(epsilon)
    weights = None
    if mask is not None:
        if virtual_batch_size is not None:
            raise ValueError("`mask` cannot be combined with `virtual_batch_size`. "
                             f"Received: virtual_batch_size={virtual_batch_size}")
        weights = _ops.mask_weights(mask, layout, eng.DEVICE)
    C = layout.channels
    affine = _ops.compose(eng, C, xc, _per_feature_vector(gamma, C, "gamma", 1.0, eng, xc),
                          _per_feature_vector(beta, C, "beta", 0.0, eng, xc))
    if weights is None:
        y, cache = _ops.train(eng, xc, layout, epsilon, affine, dx_dtype=dtype_in,
                              dtype=dtype_in, wrap=wrap)
        return wrap(y), cache
    mean, var, count = _ops.statistics(eng, xc, layout, weights)
    _ops.check_masked_count(count, layout)
    y, cache = _ops.normalize(eng, xc, layout, mean, var, epsilon, affine, training=True,
                              dx_dtype=dtype_in, count=count, weights=weights, dtype=dtype_in,
                              wrap=wrap)
    return wrap(y), cache


def batch_norm_infer(x, mean, variance, gamma=None, beta=None, *, axis=-1, epsilon=1e-3):
    """Normalize ``x`` by given statistics (e.g. moving averages).

    ``y = gamma * (x - mean) / sqrt(variance + epsilon) + beta``, with the statistics as
    constants: the gradient through the returned cache does not flow into them.

    Parameters
    ----------
    x : array
        Input of any rank.
    mean, variance : array-like
        Per-feature statistics (``feature_shape`` or any shape with that many values, or one
        value for every feature).
    gamma, beta : array-like, optional
        Per-feature scale and offset; ``None`` means 1 and 0.
    axis : int or list of int
        Feature axes.
    epsilon : float
        Added to the variance.

    Returns
    -------
    y : ndarray
        Same shape and kind as ``x``, in ``x``'s floating dtype (float32 for integer input).
    cache : BatchNormCache
        For :func:`batch_norm_backward`.

    Raises
    ------
    ValueError
        Bad ``axis``, per-feature arguments of the wrong size, or a negative ``epsilon``.
    TypeError
        Non-numeric input, or arrays on different devices.

    Examples
    --------
    >>> import numpy as np
    >>> from numbabn.functional import batch_norm_infer
    >>> y, _ = batch_norm_infer(np.array([[2.0, 4.0]]), mean=[1.0, 2.0], variance=[4.0, 1.0],
    ...                         epsilon=0.0)
    >>> y.tolist()
    [[0.5, 2.0]]
    """
    xc, layout, eng, dtype_in, wrap = _prepare(x, axis)
    epsilon = _validate.check_epsilon(epsilon)
    C = layout.channels

    def vector(value, name, default):
        return _per_feature_vector(value, C, name, default, eng, xc)
    affine = _ops.compose(eng, C, xc, vector(gamma, "gamma", 1.0), vector(beta, "beta", 0.0))
    y, cache = _ops.normalize(eng, xc, layout, vector(mean, "mean", 0.0).reshape(1, C),
                              vector(variance, "variance", 1.0).reshape(1, C), epsilon, affine,
                              training=False, dx_dtype=dtype_in, dtype=dtype_in, wrap=wrap)
    return wrap(y), cache


def batch_norm_backward(dy, cache):
    """Gradients of a :func:`batch_norm_train` / :func:`batch_norm_infer` call.

    The cache refers to the forward input without copying it: do not write into that array
    before the backward call. Every result is an array of the forward input's kind (NumPy,
    CuPy, ...).

    Parameters
    ----------
    dy : array
        Gradient of the loss with respect to the forward output (the input's shape).
    cache : BatchNormCache
        The second result of the forward call.

    Returns
    -------
    dx : ndarray
        Same shape and dtype as the forward output: the forward input's floating dtype
        (float32 for integer input), whatever ``dy``'s dtype.
    dgamma, dbeta : array
        float64, ``feature_shape``: the gradients of the scale and the offset.

    Raises
    ------
    ValueError
        ``dy`` does not have the forward input's shape.
    TypeError
        ``dy`` is not numeric, or is not on the forward input's device, or ``cache`` is not a
        :class:`BatchNormCache`.

    Examples
    --------
    >>> import numpy as np
    >>> from numbabn import functional as F
    >>> x = np.random.default_rng(0).normal(size=(10, 3))
    >>> y, cache = F.batch_norm_train(x, gamma=np.full(3, 2.0))
    >>> dy = np.random.default_rng(1).normal(size=(10, 3))
    >>> dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
    >>> bool(np.allclose(dbeta, dy.sum(axis=0))), bool(np.allclose(dx.sum(axis=0), 0.0))
    (True, True)

    In inference the statistics are constants, so ``dx`` is ``dy`` times
    ``gamma / sqrt(variance + epsilon)``:

    >>> y, cache = F.batch_norm_infer(x, mean=0.0, variance=3.0, epsilon=1.0)
    >>> dx, _, _ = F.batch_norm_backward(dy, cache)
    >>> bool(np.allclose(dx, dy / 2.0))
    True
    """
    if not isinstance(cache, BatchNormCache):
        raise TypeError("`cache` must be the BatchNormCache of a batch_norm_train or "
                        f"batch_norm_infer call. {_validate.received('cache', cache)}")
    dy, _, eng, _ = _ops.adopt(dy, "dy", cache.device)
    expected = cache.layout.shape
    if tuple(dy.shape) != expected:
        raise ValueError(f"`dy` must have the shape of the forward input {expected}. "
                         f"Received: dy with shape {tuple(dy.shape)}")
    dx, dgamma, dbeta = _ops.backward(eng, dy, cache)
    wrap = cache.wrap
    return (wrap(dx), wrap(dgamma.reshape(cache.feature_shape)),
            wrap(dbeta.reshape(cache.feature_shape)))


def moving_average(moving, batch_stat, momentum):
    """Return one step of the exponential moving average, as a new array.

    ``moving - (moving - batch_stat) * (1 - momentum)``, that is
    ``momentum * moving + (1 - momentum) * batch_stat`` (Keras' convention: ``momentum`` is the
    weight of the old value). Computed in ``moving``'s dtype when it is floating (float64
    otherwise). The layer rounds ``1 - momentum`` to float32 first, as Keras does; this
    function does not.

    Parameters
    ----------
    moving : array
        The current average (not changed).
    batch_stat : array
        The new statistic; broadcasts to ``moving``'s shape. On CUDA arrays both must be on
        the device and of one shape.
    momentum : float
        Weight of the current average.

    Returns
    -------
    array
        The updated average, an array of ``moving``'s kind.

    Raises
    ------
    ValueError
        ``batch_stat`` does not fit ``moving``, or ``momentum`` is not finite.
    TypeError
        Non-numeric arrays, or arrays on different devices.

    Examples
    --------
    >>> import numpy as np
    >>> from numbabn.functional import moving_average
    >>> moving_average(np.array([0.0, 1.0]), np.array([10.0, 3.0]), momentum=0.75).tolist()
    [2.5, 1.5]
    """
    momentum = _validate.check_momentum(momentum, "momentum")
    if _dispatch.CUDA in (_dispatch.device_of(moving), _dispatch.device_of(batch_stat)):
        return _moving_average_on_device(moving, batch_stat, momentum)
    out = _validate.as_real_array(moving, "moving", None)
    out = as_compute(out) if out.dtype.kind == "f" else out.astype(np.float64)
    out = np.array(out, copy=True)
    stat = _validate.as_real_array(batch_stat, "batch_stat", out.dtype)
    try:
        stat = np.ascontiguousarray(np.broadcast_to(stat, out.shape))
    except ValueError:
        raise ValueError(f"`batch_stat` must broadcast to the shape of `moving` {out.shape}. "
                         f"Received: batch_stat with shape {stat.shape}") from None
    _ops.moving_average(_dispatch.engine(_dispatch.CPU), out, stat, 1.0 - momentum)
    return out


def _moving_average_on_device(moving, batch_stat, momentum):
    _dispatch.check_same_device(_dispatch.CUDA, [("moving", moving), ("batch_stat", batch_stat)])
    eng = _dispatch.engine(_dispatch.CUDA)
    m, wrap = eng.adopt(moving)
    s, _ = eng.adopt(batch_stat)
    _validate.as_real_dtype(m.dtype, "moving")
    _validate.as_real_dtype(s.dtype, "batch_stat")
    if tuple(s.shape) != tuple(m.shape):
        raise ValueError(f"`batch_stat` must have the shape of `moving` {tuple(m.shape)} on a "
                         f"CUDA device. Received: batch_stat with shape {tuple(s.shape)}")
    dtype = compute_dtype(m.dtype) if m.dtype.kind == "f" else np.dtype(np.float64)
    out = eng.copy(eng.astype(m, dtype))
    _ops.moving_average(eng, out, eng.astype(s, np.float64), 1.0 - momentum)
    return wrap(out)

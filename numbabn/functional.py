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

from . import _dispatch, _validate
from ._layout import Layout

__all__ = ["moments", "batch_norm_train", "batch_norm_infer", "batch_norm_backward",
           "moving_average", "BatchNormCache"]


class BatchNormCache:
    """What :func:`batch_norm_backward` needs from a forward call.

    :func:`batch_norm_train` and :func:`batch_norm_infer` make one (as does the layer, for
    :meth:`~numbabn.BatchNormalization.backward`); there is no need to construct one directly.
    The cache refers to the forward input without copying it.

    Parameters
    ----------
    x : array
        The forward input in the engine's canonical view, in the compute dtype.
    layout : numbabn._layout.Layout
        How the input's shape and feature axes map onto that view.
    device : {"cpu", "cuda"}
        The engine that ran the forward pass.
    training : bool
        Whether the forward pass used batch statistics.
    mean, var, inv_std : array
        The float64 statistics the forward pass used, ``(G, C)``, and ``1 / sqrt(var + eps)``.
    gamma, adj_scale, adj_bias, r, d : array
        The per-feature ``(C,)`` factors of the forward pass (ones and zeros where absent).
    epsilon : float
        The forward pass's epsilon.
    dtype : numpy.dtype
        The forward computation's dtype.
    wrap : callable, optional
        Turns engine arrays back into arrays of the input's kind.

    Attributes
    ----------
    mean, variance : array
        The statistics the forward pass normalized with (float64, ``feature_shape``, or
        ``(G,) + feature_shape`` under ghost batching), as arrays of the input's kind. In
        inference these are the moving statistics that were passed in.
    count : int
        Elements averaged into each statistic (over every process, for a synchronized layer).
    training : bool
        Whether the gradient flows through the batch statistics.

    Examples
    --------
    >>> import numpy as np
    >>> from numbabn import functional as F
    >>> x = np.random.default_rng(0).normal(size=(6, 4, 2))
    >>> _, cache = F.batch_norm_train(x, axis=-1, virtual_batch_size=3)
    >>> cache.training, cache.count, cache.mean.shape
    (True, 12, (2, 2))
    """

    def __init__(self, *, x, layout, device, training, mean, var, inv_std, gamma, adj_scale,
                 adj_bias, r, d, epsilon, dtype, wrap=None):
        self.x, self.layout, self.device, self.training = x, layout, device, training
        self._mean, self._var, self._inv_std = mean, var, inv_std
        self._gamma, self._adj_scale, self._adj_bias, self._r, self._d = (
            gamma, adj_scale, adj_bias, r, d)
        self.epsilon, self.dtype = epsilon, dtype
        self.wrap = wrap or _identity
        self.feature_shape = layout.feature_shape
        self.count = layout.count
        # synchronized batch norm: adds the backward sums of the other processes
        self.reduce_sums = None
        # a masked training call: the positions that made the statistics
        self.weights = None

    def _per_feature(self, a):
        eng = _dispatch.engine(self.device)
        ghost = self.training and self.layout.ghost
        shape = (a.shape[0],) + self.feature_shape if ghost else self.feature_shape
        # the cache keeps its own for the backward pass
        return self.wrap(eng.copy(eng.astype(a, np.float64)).reshape(shape))

    @property
    def mean(self):
        """A copy of the mean the forward pass normalized with (float64).

        ``feature_shape``, or ``(G,) + feature_shape`` for a ghost-batch training call; an
        array of the input's kind.

        Examples
        --------
        >>> import numpy as np
        >>> from numbabn import functional as F
        >>> _, cache = F.batch_norm_train(np.array([[1.0, 2.0], [3.0, 6.0]]))
        >>> cache.mean.tolist()
        [2.0, 4.0]
        """
        return self._per_feature(self._mean)

    @property
    def variance(self):
        """A copy of the (biased) variance the forward pass normalized with (float64).

        Same shape as :attr:`mean`; in inference the variance that was passed in.

        Examples
        --------
        >>> import numpy as np
        >>> from numbabn import functional as F
        >>> _, cache = F.batch_norm_train(np.array([[1.0, 2.0], [3.0, 6.0]]))
        >>> cache.variance.tolist()
        [1.0, 4.0]
        """
        return self._per_feature(self._var)


def _identity(a):
    return a


def _prepare(x, axis, virtual_batch_size=None):
    """Validate ``x`` and ``axis``. Returns the canonical compute-dtype input, its layout, its
    device, the dtype results are returned in (``x``'s, native, when floating; float32
    otherwise) and the function that turns engine arrays into ``x``'s kind."""
    x, device = _validate.as_input_array(x, "x")
    result_dtype = (np.dtype(x.dtype).newbyteorder("=") if _validate.is_float(x.dtype)
                    else np.dtype(np.float32))
    axes = _validate.resolve_axes(axis, x.ndim)
    virtual_batch_size = _validate.check_virtual_batch_size(virtual_batch_size)
    if virtual_batch_size is not None:
        _validate.check_ghost_axes(axes, list(axes))
        _validate.check_ghost_batch(virtual_batch_size, x.shape)
    layout = Layout(x.shape, axes, virtual_batch_size)
    eng = _dispatch.engine(device)
    x, wrap = eng.adopt(x)
    return eng.canonical(x, layout, compute_dtype(x.dtype)), layout, device, result_dtype, wrap


def check_masked_count(count, layout):
    """A mask must keep some position of a non-empty batch (an empty batch has none to keep)."""
    if count == 0 and layout.count:
        raise ValueError("Cannot compute batch statistics: the mask selects no position. "
                         f"Received: a mask with no true value for inputs with shape "
                         f"{layout.shape}")


def _check_not_empty(layout):
    if layout.count == 0:
        raise ValueError("Cannot compute batch statistics of an empty batch. "
                         f"Received: x with shape {layout.shape}")


def compute_dtype(dtype):
    """The dtype the kernels compute in for input of ``dtype``: float64 (of any byte order)
    stays float64, everything else becomes float32; always native byte order."""
    return np.dtype(np.float64 if (dtype.kind == "f" and dtype.itemsize == 8) else np.float32)


def as_compute(x):
    """A NumPy input cast to :func:`compute_dtype`."""
    dtype = compute_dtype(x.dtype)
    return x if x.dtype == dtype else x.astype(dtype)


def _per_feature_vector(value, channels, name, default, device=_dispatch.CPU, like=None):
    """A per-feature argument as a flat float64 ``(C,)`` vector on ``device`` (``default`` when
    ``None``). Host values are copied to the device (on ``like``'s stream); CUDA arrays must go
    with a CUDA input."""
    eng = _dispatch.engine(device)
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
    xc, layout, device, _, wrap = _prepare(x, axis, virtual_batch_size)
    _check_not_empty(layout)
    mean, var = _dispatch.engine(device).moments(xc, layout.rows_per_sample, layout.groups)
    fshape = tuple(layout.shape[a] for a in layout.axes)
    shape = fshape if virtual_batch_size is None else (layout.groups,) + fshape
    return wrap(mean.reshape(shape)), wrap(var.reshape(shape))


def normalize_batch(xc, layout, device, mean, var, epsilon, gamma=None, beta=None, r=None, d=None,
                    adj_scale=None, adj_bias=None, out=None, dtype=None):
    """Training normalization of a canonical compute-dtype ``xc`` with given group statistics.

    ``y = gamma * (adj_scale * (r * xhat + d) + adj_bias) + beta`` where ``xhat`` uses
    ``mean``/``var`` (float64, ``(G, C)``) and every per-feature factor is a ``(C,)`` vector or
    ``None`` (absent). Returns ``(y, cache)``. This is the building block the layer uses after
    it has computed the statistics (and from them, renorm's ``r`` and ``d``). ``y`` is in
    ``dtype`` (default: the computation's dtype, see :func:`compute_dtype`); ``out``: an array of
    the input's shape and that dtype to write ``y`` into (only for layouts without a
    transposition).
    """
    C = layout.channels

    def vector(value, name, default):
        return _per_feature_vector(value, C, name, default, device, xc)
    return normalize_vectors(
        xc, layout, device, mean, var, epsilon, vector(gamma, "gamma", 1.0),
        vector(beta, "beta", 0.0), vector(r, "r", 1.0), vector(d, "d", 0.0),
        vector(adj_scale, "adj_scale", 1.0), vector(adj_bias, "adj_bias", 0.0), out, dtype)


def normalize_vectors(xc, layout, device, mean, var, epsilon, gamma, beta, r, d, adj_scale,
                      adj_bias, out=None, dtype=None):
    """:func:`normalize_batch` for factors that are already ``(C,)`` vectors on the device.

    No checks: for callers that built the vectors themselves (the layer, on every call).
    Returns ``y`` in the canonical layout's compute dtype, restored to the input's shape.
    """
    eng = _dispatch.engine(device)
    y, inv_std = eng.normalize(
        xc, layout.rows_per_sample, layout.groups, mean, var, epsilon, gamma, beta, r, d,
        adj_scale, adj_bias, out=_canonical_out(out, layout), dtype=dtype)
    cache = BatchNormCache(x=xc, layout=layout, device=device, training=True, mean=mean,
                           var=var, inv_std=inv_std, gamma=gamma, adj_scale=adj_scale,
                           adj_bias=adj_bias, r=r, d=d, epsilon=epsilon,
                           dtype=compute_dtype(xc.dtype))
    return _result(eng, y, out, layout), cache


def _canonical_out(out, layout):
    return None if out is None else out.reshape(layout.canonical_shape)


def _result(eng, y, out, layout):
    return eng.restore(y, layout, y.dtype) if out is None else out


def normalize_moving(xc, layout, device, moving_mean, moving_var, epsilon, gamma=None, beta=None,
                     out=None, dtype=None):
    """Inference normalization of a canonical compute-dtype ``xc`` by moving statistics.

    The per-feature arguments are ``(C,)`` vectors already on ``xc``'s device (``None``: the
    identity); no checks.
    """
    C = layout.channels
    eng = _dispatch.engine(device)
    mm = _vector_or_default(moving_mean, C, 0.0, eng).reshape(1, C)
    mv = _vector_or_default(moving_var, C, 1.0, eng).reshape(1, C)
    g = _vector_or_default(gamma, C, 1.0, eng)
    b = _vector_or_default(beta, C, 0.0, eng)
    ones, zeros = eng.constant(C, 1.0), eng.constant(C, 0.0)
    y, inv_std = eng.normalize(
        xc, layout.rows_per_sample, 1, mm, mv, epsilon, g, b, ones, zeros, ones, zeros,
        out=_canonical_out(out, layout), dtype=dtype)
    cache = BatchNormCache(x=xc, layout=layout, device=device, training=False, mean=mm,
                           var=mv, inv_std=inv_std, gamma=g, adj_scale=ones, adj_bias=zeros, r=ones,
                           d=zeros, epsilon=epsilon, dtype=compute_dtype(xc.dtype))
    return _result(eng, y, out, layout), cache


def _vector_or_default(v, channels, default, eng):
    return eng.constant(channels, default) if v is None else v


def mask_weights(mask, layout, device):
    """Validate ``mask`` for inputs of ``layout`` and return the engine's canonical weights.

    The mask marks the positions whose values make the statistics (true: counted); see
    :meth:`numbabn._layout.Layout.mask_dims` for the shapes it may have.
    """
    original = mask
    if device == _dispatch.CPU:
        if _dispatch.device_of(mask) == _dispatch.CUDA:
            _dispatch.check_same_device(device, [("mask", mask)])
        try:
            mask = np.asarray(mask)
        except Exception:
            mask = None
    else:
        _dispatch.check_same_device(device, [("mask", mask)])
        mask, _ = _dispatch.engine(device).adopt(mask)
    if mask is None or np.dtype(mask.dtype).kind not in "biuf":
        what = ("" if mask is None else
                f" with dtype {np.dtype(mask.dtype)} and shape {tuple(mask.shape)}")
        raise TypeError("`mask` must be a boolean (or 0/1 numeric) array. "
                        f"Received: mask of type {type(original).__name__}{what}")
    layout.mask_dims(tuple(mask.shape))
    eng = _dispatch.engine(device)
    if np.dtype(mask.dtype).kind != "b":
        # a numeric mask is a count of 0 or 1 per position; 0.5, 2 or NaN would be read as true
        values = np.asarray(eng.to_host(mask))
        bad = values[(values != 0) & (values != 1)]
        if bad.size:
            raise ValueError("`mask` values must be booleans, or 0 and 1. Received: a mask of "
                             f"shape {tuple(mask.shape)} holding {bad.flat[0]!r}")
    return eng.mask_weights(mask, layout)


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
    xc, layout, device, dtype_in, wrap = _prepare(x, axis, virtual_batch_size)
    epsilon = _validate.check_epsilon(epsilon)
    eng = _dispatch.engine(device)
    weights = None
    if mask is not None:
        if virtual_batch_size is not None:
            raise ValueError("`mask` cannot be combined with `virtual_batch_size`. "
                             f"Received: virtual_batch_size={virtual_batch_size}")
        weights = mask_weights(mask, layout, device)
        mean, var, count = eng.masked_moments(xc, weights)
        check_masked_count(count, layout)
    else:
        mean, var = eng.moments(xc, layout.rows_per_sample, layout.groups)
    y, cache = normalize_batch(xc, layout, device, mean, var, epsilon, gamma, beta, dtype=dtype_in)
    if weights is not None:
        cache.count, cache.weights = count, weights
    cache.wrap = wrap
    return wrap(eng.astype(y, dtype_in)), cache


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
    xc, layout, device, dtype_in, wrap = _prepare(x, axis)
    epsilon = _validate.check_epsilon(epsilon)
    C = layout.channels

    def vector(value, name, default):
        return _per_feature_vector(value, C, name, default, device, xc)
    y, cache = normalize_moving(xc, layout, device, vector(mean, "mean", 0.0),
                                vector(variance, "variance", 1.0), epsilon,
                                vector(gamma, "gamma", 1.0), vector(beta, "beta", 0.0),
                                dtype=dtype_in)
    cache.wrap = wrap
    return wrap(_dispatch.engine(device).astype(y, dtype_in)), cache


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
        Same shape as the forward input; in ``dy``'s dtype when that is floating, else in the
        forward computation's dtype.
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
    dy, device = _validate.as_input_array(dy, "dy")
    _dispatch.check_same_device(cache.device, [("dy", dy)])
    expected = cache.layout.shape
    if tuple(dy.shape) != expected:
        raise ValueError(f"`dy` must have the shape of the forward input {expected}. "
                         f"Received: dy with shape {tuple(dy.shape)}")
    eng = _dispatch.engine(device)
    dy, _ = eng.adopt(dy)
    dtype_out = (np.dtype(dy.dtype).newbyteorder("=") if _validate.is_float(dy.dtype)
                 else cache.dtype)
    dx, dgamma, dbeta = backward(dy, cache, dtype=dtype_out)
    wrap = cache.wrap
    return (wrap(eng.astype(dx, dtype_out)), wrap(dgamma.reshape(cache.feature_shape)),
            wrap(dbeta.reshape(cache.feature_shape)))


def backward(dy, cache, out=None, dtype=None):
    """Gradients for an engine array ``dy`` of the forward input's shape (any dtype):
    ``(dx, dgamma (C,), dbeta (C,))``, ``dx`` in ``dtype`` (default: the forward computation's).

    ``out``: as in :func:`normalize_batch`, an array to write ``dx`` into.
    """
    layout = cache.layout
    groups = layout.groups if cache.training else 1
    eng = _dispatch.engine(cache.device)
    dx, dgamma, dbeta = eng.backward(
        cache.x, eng.canonical(dy, layout, cache.dtype), layout.rows_per_sample, groups,
        cache._mean, cache._inv_std, cache.count, cache.training, cache._gamma, cache._r,
        cache._d, cache._adj_scale, cache._adj_bias, out=_canonical_out(out, layout),
        reduce_sums=cache.reduce_sums if cache.training else None,
        weights=cache.weights if cache.training else None, dtype=dtype)
    if cache.training and cache.count == 0:
        # an empty batch: zero sums met NaN statistics; nothing flows back
        dgamma = eng.copy(eng.constant(layout.channels, 0.0, like=dgamma))
        dbeta = eng.copy(dgamma)
    return _result(eng, dx, out, layout), dgamma, dbeta


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
    none = out.reshape(-1)[:0]           # the engine updates two weights at once; one here
    _dispatch.engine(_dispatch.CPU).moving_averages(out, stat, none, none, 1.0 - momentum)
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
    flat = out.reshape(-1)
    eng.moving_averages(flat, eng.astype(s, np.float64).reshape(-1), flat[:0], flat[:0],
                        1.0 - momentum)
    return wrap(out)

"""The operations a batch-norm call is made of, written once.

The layer (state and policy) and the public functional API (validation, documentation) both run
these; they run the engine's primitives (``numbabn/_engine.py`` lists them) on canonical views
(``numbabn/_layout.py``), on the engine of the input's kind. Nothing here validates user input:
callers have done that.

A training forward pass is :func:`statistics`, then the policy's work on them (collectives,
batch renormalization's ``r`` and ``d``), then :func:`normalize`; :func:`backward` inverts it
from the :class:`BatchNormCache` that :func:`normalize` returns.
"""
from typing import NamedTuple

import numpy as np

from . import _dispatch, _dtypes, _validate


class Affine(NamedTuple):
    """What follows the normalization, per feature: ``y = gamma * (scale * xhat + shift) + beta``.

    ``gamma`` and ``beta`` are the trainable scale and offset (ones and zeros when absent).
    ``scale`` and ``shift`` are constants composed once (:func:`compose`) from batch
    renormalization's ``r``, ``d`` and the ``adjustment``'s scale and bias:
    ``adj_scale * (r * xhat + d) + adj_bias`` is ``scale = adj_scale * r``,
    ``shift = adj_scale * d + adj_bias``. No gradient flows into them, as in TensorFlow.
    Every field is a flat ``(C,)`` vector on the input's device.
    """
    gamma: object
    beta: object
    scale: object
    shift: object


def _identity(a):
    return a


def compute_dtype(dtype):
    """The dtype the kernels compute in for data of ``dtype``: float64 (of any byte order)
    stays float64, everything else becomes float32; always native byte order (the
    arithmetic column of ``numbabn/_dtypes.py``)."""
    return _dtypes.arithmetic(np.dtype(dtype))


def compose(eng, channels, like, gamma=None, beta=None, r=None, d=None, adj_scale=None,
            adj_bias=None):
    """The :class:`Affine` of these factors (``None``: absent). ``gamma``, ``beta``, ``r`` and
    ``d`` are vectors on ``like``'s device; ``adj_scale`` and ``adj_bias`` host vectors."""
    ones = eng.constant(channels, 1.0, like)
    zeros = eng.constant(channels, 0.0, like)
    if adj_scale is None:
        scale, shift = (ones, zeros) if r is None else (r, d)
    elif r is None:
        scale, shift = eng.to_device(adj_scale, like), eng.to_device(adj_bias, like)
    else:                                # both: rare, composed on the host
        r_h = np.asarray(eng.to_host(r), np.float64)
        d_h = np.asarray(eng.to_host(d), np.float64)
        scale = eng.to_device(adj_scale * r_h, like)
        shift = eng.to_device(adj_scale * d_h + adj_bias, like)
    return Affine(ones if gamma is None else gamma, zeros if beta is None else beta, scale, shift)


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
        The statistics the forward pass used, ``(G, C)`` (float64, or in inference the
        weights' dtype), and ``1 / sqrt(var + eps)`` (float64).
    m_hi : array
        The mean in the input's arithmetic dtype: the centre of the backward's sums.
    affine : Affine
        The per-feature factors of the forward pass.
    count : int
        Values behind each statistic.
    dx_dtype : numpy.dtype
        The dtype the backward pass returns ``dx`` in.
    weights : array, optional
        A masked training call's canonical mask weights.
    reduce_sums : callable, optional
        Synchronized batch norm: adds the backward sums of the other processes.
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
    feature_shape : tuple of int
        The shape of the per-feature parameters and gradients.

    Examples
    --------
    >>> import numpy as np
    >>> from numbabn import functional as F
    >>> x = np.random.default_rng(0).normal(size=(6, 4, 2))
    >>> _, cache = F.batch_norm_train(x, axis=-1, virtual_batch_size=3)
    >>> cache.training, cache.count, cache.mean.shape
    (True, 12, (2, 2))
    """

    __slots__ = ("x", "layout", "device", "training", "_mean", "_var", "_inv_std", "m_hi",
                 "affine", "count", "dx_dtype", "weights", "reduce_sums", "wrap", "feature_shape")

    def __init__(self, x, layout, device, training, mean, var, inv_std, m_hi, affine, count,
                 dx_dtype, weights=None, reduce_sums=None, wrap=_identity):
        self.x, self.layout, self.device, self.training = x, layout, device, training
        self._mean, self._var, self._inv_std, self.m_hi = mean, var, inv_std, m_hi
        self.affine, self.count, self.dx_dtype = affine, count, dx_dtype
        self.weights, self.reduce_sums, self.wrap = weights, reduce_sums, wrap
        self.feature_shape = layout.feature_shape

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


# ------------------------------------------------------------------------------------------------
# input and output


def adopt(x, name, device=None):
    """``(array, device, engine, wrap)`` for an input: checked to be numeric (and to be on
    ``device`` when given), on its engine (``wrap`` turns engine arrays back into arrays of the
    input's kind)."""
    x, found = _validate.as_input_array(x, name)
    if device is not None:
        _dispatch.check_same_device(device, [(name, x)])
    device = found
    eng = _dispatch.engine(device)       # an unavailable engine fails before any state change
    x, wrap = eng.adopt(x)
    return x, device, eng, wrap


def canonical(eng, x, layout, dtype):
    """``x`` as the kernels read it for a computation in ``dtype`` (a view where it can be)."""
    return eng.canonical(x, layout, dtype)


def vector(eng, a, copy_for=None):
    """A per-feature array (a weight) as the flat vector the kernels take: a view, or with
    ``copy_for`` (the call's input) a copy, ordered with that call's work, that later updates
    of the weight do not reach (what a cache keeps)."""
    v = eng.as_vector(a)
    return v if copy_for is None else eng.copy(v, copy_for)


def to_device(eng, values, like):
    """Host ``values`` as an array on ``like``'s device."""
    return eng.to_device(values, like)


def as_weight(eng, a, dtype, shape):
    """A per-feature result (a gradient) in a weight's dtype and shape."""
    return eng.astype(a, dtype).reshape(shape)


def _canonical_out(out, layout):
    return None if out is None else out.reshape(layout.canonical_shape)


def _restored(eng, y, out, layout):
    return eng.restore(y, layout, y.dtype) if out is None else out


# ------------------------------------------------------------------------------------------------
# the forward pass


def statistics(eng, xc, layout, weights=None):
    """``(mean, var, count)``: float64 ``(G, C)`` per-group mean and biased variance of ``xc``,
    and the values behind each. ``weights``: a mask's canonical weights (:func:`mask_weights`),
    one group."""
    if weights is not None:
        return eng.masked_moments(xc, weights)
    mean, var = eng.moments(xc, layout.rows_per_sample, layout.groups)
    return mean, var, layout.count


def group_average(eng, mean, var):
    """The per-feature average over groups of ``(G, C)`` statistics: two ``(C,)`` vectors."""
    return eng.group_average(mean, var)


def renorm_correction(eng, mean, var, renorm_mean, renorm_stddev, epsilon, clipping):
    """Batch renormalization's ``r`` and ``d`` from the batch's ``(C,)`` statistics and the
    renorm statistics before this step; ``clipping`` may hold ``rmin``, ``rmax``, ``dmax``."""
    return eng.renorm_correction(mean, var, renorm_mean, renorm_stddev, epsilon,
                                 clipping.get("rmin"), clipping.get("rmax"), clipping.get("dmax"))


def normalize(eng, xc, layout, mean, var, epsilon, affine, *, training, dx_dtype, count=None,
              weights=None, reduce_sums=None, out=None, dtype=None, wrap=_identity):
    """``y = affine(xhat)`` of the canonical ``xc`` with ``mean``/``var`` (``(G, C)`` in
    training, ``(1, C)`` in inference), and its :class:`BatchNormCache`.

    ``y`` has the input's shape, in ``dtype`` (default: the arithmetic dtype), written into
    ``out`` when given (an array of the input's shape, for layouts without a transposition).
    ``dx_dtype`` is the dtype of the backward pass's ``dx``; ``count``, ``weights`` and
    ``reduce_sums`` describe the statistics (see :func:`statistics` and the Synchronizer).
    In inference the cache keeps copies of ``mean`` and ``var`` (weights that later updates
    change in place).
    """
    groups = layout.groups if training else 1
    canonical_out = _canonical_out(out, layout)
    fused = None if training else eng.infer_small(xc, mean, var, epsilon, affine, canonical_out,
                                                  dtype)
    if fused is None:
        inv_std, m_hi, a, b = eng.forward_coefficients(xc, mean, var, epsilon, affine)
        y = eng.affine(xc, layout.rows_per_sample, groups, m_hi, a, b, canonical_out, dtype)
        if not training:                 # the cache keeps this call's statistics
            mean, var = eng.copy(mean, xc), eng.copy(var, xc)
    else:
        y, mean, var, inv_std, m_hi = fused
    return _restored(eng, y, out, layout), _cache(
        eng, xc, layout, training, mean, var, inv_std, m_hi, affine, count, dx_dtype, weights,
        reduce_sums, wrap)


def train(eng, xc, layout, epsilon, affine, *, dx_dtype, out=None, dtype=None, wrap=_identity):
    """:func:`statistics` then :func:`normalize` of a training call whose statistics are this
    batch's own (no mask, no collective, no renormalization): one fused kernel where the engine
    has one. Returns ``(y, cache)``; the statistics are ``cache._mean``, ``cache._var``."""
    if not layout.ghost:                 # a ghost group's statistics merge per sample
        fused = eng.train_small(xc, epsilon, affine, _canonical_out(out, layout), dtype)
        if fused is not None:
            y, mean, var, inv_std, m_hi = fused
            return _restored(eng, y, out, layout), _cache(
                eng, xc, layout, True, mean, var, inv_std, m_hi, affine, None, dx_dtype, None,
                None, wrap)
    mean, var, _ = statistics(eng, xc, layout)
    return normalize(eng, xc, layout, mean, var, epsilon, affine, training=True,
                     dx_dtype=dx_dtype, out=out, dtype=dtype, wrap=wrap)


def _cache(eng, xc, layout, training, mean, var, inv_std, m_hi, affine, count, dx_dtype, weights,
           reduce_sums, wrap):
    return BatchNormCache(xc, layout, eng.DEVICE, training, mean, var, inv_std, m_hi, affine,
                          layout.count if count is None else count, dx_dtype,
                          weights if training else None, reduce_sums if training else None, wrap)


# ------------------------------------------------------------------------------------------------
# the backward pass


def backward(eng, dy, cache, out=None):
    """``(dx, dgamma, dbeta)`` for an engine array ``dy`` of the forward input's shape (any
    dtype): ``dx`` in ``cache.dx_dtype`` (into ``out`` when given), the others float64
    ``(C,)``."""
    layout = cache.layout
    training = cache.training
    groups = layout.groups if training else 1
    P = layout.rows_per_sample
    x = cache.x
    dyc = eng.canonical(dy, layout, compute_dtype(x.dtype))
    canonical_out = _canonical_out(out, layout)
    if (groups == 1 and not (training and layout.ghost) and cache.weights is None
            and cache.reduce_sums is None):
        fused = eng.backward_small(x, dyc, cache._mean, cache.m_hi, cache._inv_std, cache.count,
                                   training, cache.affine, canonical_out, cache.dx_dtype)
        if fused is not None:
            dx, dgamma, dbeta = fused
            return _restored(eng, dx, out, layout), dgamma, dbeta
    sum_dy, sum_dyxc = eng.grad_sums(x, dyc, P, groups, cache.m_hi)
    if cache.reduce_sums is not None:
        sum_dy, sum_dyxc = cache.reduce_sums(sum_dy, sum_dyxc)
    dy_mean, k_dy, k_xc, k_0, dgamma, dbeta = eng.gradient_coefficients(
        x, sum_dy, sum_dyxc, cache._mean, cache.m_hi, cache._inv_std, cache.count, training,
        cache.affine)
    if training:
        dx = eng.grad_input(x, dyc, P, groups, cache.weights, cache.m_hi, dy_mean, k_dy, k_xc,
                            k_0, canonical_out, cache.dx_dtype)
        if cache.count == 0:
            # an empty batch: zero sums met NaN statistics; nothing flows back
            dgamma = eng.copy(eng.constant(layout.channels, 0.0, like=dgamma))
            dbeta = eng.copy(dgamma)
    else:                                # dx = dy * k: the affine pass with m = b = 0
        dx = eng.affine(dyc, P, 1, k_xc, k_dy, k_0, canonical_out, cache.dx_dtype)
    return _restored(eng, dx, out, layout), dgamma, dbeta


# ------------------------------------------------------------------------------------------------
# masks


def check_masked_count(count, layout):
    """A mask must keep some position of a non-empty batch (an empty batch has none to keep)."""
    if count == 0 and layout.count:
        raise ValueError("Cannot compute batch statistics: the mask selects no position. "
                         f"Received: a mask with no true value for inputs with shape "
                         f"{layout.shape}")


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


# ------------------------------------------------------------------------------------------------
# moving statistics


def moving_average(eng, moving, stat, decay):
    """In place ``moving -= (moving - stat) * decay`` for one array (``stat`` of its shape)."""
    flat = moving.reshape(-1)
    none = flat[:0]                      # the engine updates two weights at once; one here
    eng.moving_averages(flat, stat.reshape(-1), none, none, decay)


def update_moving(eng, moving_mean, moving_variance, mean, var, decay, variance_scale=1.0):
    """In place ``moving -= (moving - stat) * decay`` for the mean and the variance (the
    variance's statistic times ``variance_scale`` first: the fused path's Bessel correction)."""
    eng.moving_averages(moving_mean, mean, moving_variance, var, decay, second_scale=variance_scale)


def update_renorm(eng, renorm_mean, renorm_stddev, mean, var, epsilon, decay, moving=None):
    """Batch renormalization's updates: the renorm statistics, and with ``moving =
    (moving_mean, moving_stddev, moving_variance, decay)`` the moving statistics, whose
    variance follows the averaged standard deviation."""
    stddev = eng.stddev(var, epsilon)
    eng.moving_averages(renorm_mean, mean, renorm_stddev, stddev, decay)
    if moving is None:
        return
    moving_mean, moving_stddev, moving_variance, moving_decay = moving
    eng.moving_averages(moving_mean, mean, moving_stddev, stddev, moving_decay)
    eng.variance_from_stddev(moving_variance, moving_stddev, epsilon)

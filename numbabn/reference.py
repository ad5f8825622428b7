"""Plain NumPy float64 batch normalization: the oracle the fast engines are tested against.

Everything here is written for clarity, never for speed. Arrays keep their natural layout: ``axes``
are the (resolved, non-negative) feature axes, statistics are reduced over every other axis and
kept with ``keepdims`` so that they broadcast against the input.

Shape legend: ``x`` has any shape; a "per-feature" array has the shape of ``x`` with every reduced
axis set to 1. Under ghost batching (``virtual_batch_size=V``) the batch axis ``B`` is split
row-major into ``(V, B // V)``, so ghost group ``j`` holds the samples ``j, j + G, j + 2G, ...``
(strided, with ``G = B // V``), and statistics gain a leading group axis.
"""
import numpy as np

__all__ = [
    "reduction_axes", "ghost_split", "moments", "normalize", "forward_train", "forward_infer",
    "backward_train", "backward_infer", "moving_update", "moving_update_fused", "renorm_correction",
    "masked_moments", "forward_train_masked", "backward_train_masked",
]


def reduction_axes(ndim, axes):
    """The axes that are averaged over: every axis not in ``axes``, ascending."""
    return tuple(a for a in range(ndim) if a not in axes)


def ghost_split(x, virtual_batch_size):
    """Reshape ``(B, ...)`` to ``(V, G, ...)``: group ``j`` is samples ``j, j+G, ...``."""
    return x.reshape((virtual_batch_size, -1) + x.shape[1:])


def _grouped_reduction_axes(ndim, axes, virtual_batch_size):
    """Reduction axes of ``x``, or of ``ghost_split(x)`` (where axis 1, the group, is kept)."""
    if virtual_batch_size is None:
        return reduction_axes(ndim, axes)
    return reduction_axes(ndim + 1, tuple(a + 1 for a in axes) + (1,))


def moments(x, axes, virtual_batch_size=None):
    """Mean and biased variance per feature (and per ghost group), two-pass, float64.

    Returns arrays that broadcast against ``x`` (or against ``ghost_split(x)`` when
    ``virtual_batch_size`` is given, with axis 1 indexing the ghost group).
    """
    x = np.asarray(x, dtype=np.float64)
    red = _grouped_reduction_axes(x.ndim, axes, virtual_batch_size)
    if virtual_batch_size is not None:
        x = ghost_split(x, virtual_batch_size)
    mean = x.mean(axis=red, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=red, keepdims=True)
    return mean, var


def normalize(x, mean, var, epsilon, gamma=1.0, beta=0.0):
    """gamma * (x - mean) / sqrt(var + epsilon) + beta."""
    return gamma * (np.asarray(x, np.float64) - mean) / np.sqrt(var + epsilon) + beta


def forward_train(x, axes, epsilon, gamma=1.0, beta=0.0, virtual_batch_size=None,
                  r=1.0, d=0.0, adj_scale=1.0, adj_bias=0.0):
    """Training output: ``gamma * (adj_scale * (r * xhat + d) + adj_bias) + beta``.

    ``xhat`` uses this batch's statistics (per ghost group under ghost batching). ``r`` and ``d``
    are the batch-renormalization corrections, ``adj_*`` the adjustment outputs; all of them and
    ``gamma``/``beta`` broadcast against ``x``. Returns ``(y, mean, var)`` with the statistics as
    :func:`moments` returns them.
    """
    x = np.asarray(x, np.float64)
    mean, var = moments(x, axes, virtual_batch_size)
    xg = x if virtual_batch_size is None else ghost_split(x, virtual_batch_size)
    xhat = ((xg - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    y = gamma * (adj_scale * (r * xhat + d) + adj_bias) + beta
    return y, mean, var


def forward_infer(x, moving_mean, moving_var, epsilon, gamma=1.0, beta=0.0):
    """Inference output: normalization by the moving statistics."""
    return normalize(x, moving_mean, moving_var, epsilon, gamma, beta)


def backward_train(dy, x, axes, epsilon, gamma=1.0, virtual_batch_size=None,
                   r=1.0, d=0.0, adj_scale=1.0, adj_bias=0.0):
    """Gradients of :func:`forward_train` with ``r``, ``d`` held constant.

    Per feature (and ghost group), over its ``n`` reduced elements, with ``A = gamma*adj_scale*r``::

        dx     = A / sigma * (dy - mean(dy) - xhat * mean(dy * xhat))
        dgamma = sum(dy * (adj_scale * (r * xhat + d) + adj_bias))
        dbeta  = sum(dy)

    Returns ``(dx, dgamma, dbeta)``; the parameter gradients are summed over every reduced axis
    (and over ghost groups) and keep ``keepdims`` shape.
    """
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    mean, var = moments(x, axes, virtual_batch_size)
    group = (lambda a: a) if virtual_batch_size is None else (
        lambda a: ghost_split(a, virtual_batch_size))
    red = _grouped_reduction_axes(x.ndim, axes, virtual_batch_size)

    def expand(stat):                       # group statistics back to the shape of x
        return np.broadcast_to(stat, group(x).shape).reshape(x.shape)

    inv_sigma = expand(1.0 / np.sqrt(var + epsilon))
    xhat = (x - expand(mean)) * inv_sigma
    dy_mean = expand(group(dy).mean(axis=red, keepdims=True))
    dy_xhat_mean = expand(group(dy * xhat).mean(axis=red, keepdims=True))
    dx = gamma * adj_scale * r * inv_sigma * (dy - dy_mean - xhat * dy_xhat_mean)
    red_x = reduction_axes(x.ndim, axes)
    dgamma = (dy * (adj_scale * (r * xhat + d) + adj_bias)).sum(axis=red_x, keepdims=True)
    dbeta = dy.sum(axis=red_x, keepdims=True)
    return dx, dgamma, dbeta


def backward_infer(dy, x, axes, moving_mean, moving_var, epsilon, gamma=1.0):
    """Gradients of :func:`forward_infer`; the moving statistics are constants."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    inv_sigma = 1.0 / np.sqrt(moving_var + epsilon)
    red = reduction_axes(x.ndim, axes)
    dx = dy * gamma * inv_sigma
    dgamma = (dy * (x - moving_mean) * inv_sigma).sum(axis=red, keepdims=True)
    dbeta = dy.sum(axis=red, keepdims=True)
    return dx, dgamma, dbeta


def moving_update(moving, batch_stat, momentum):
    """Exponential moving average: ``moving - (moving - batch_stat) * (1 - momentum)``."""
    return moving - (moving - batch_stat) * (1.0 - momentum)


def moving_update_fused(moving_mean, moving_var, mean, biased_var, n, momentum):
    """The fused kernel's update: the variance average tracks the Bessel-corrected variance.

    ``n`` is the number of elements per feature; ``n - 1`` is replaced by 1 when ``n == 1``.
    """
    bessel = n / max(n - 1, 1)
    return (moving_update(moving_mean, mean, momentum),
            moving_update(moving_var, biased_var * bessel, momentum))


def renorm_correction(mean, var, renorm_mean, renorm_stddev, epsilon,
                      rmin=None, rmax=None, dmax=None):
    """Batch renormalization's ``(r, d)`` from the batch statistics and pre-update renorm stats.

    ``r = sqrt(var + eps) / rs`` and ``d = (mean - renorm_mean) / rs`` with
    ``rs = max(renorm_stddev, sqrt(eps))``; ``r`` is clipped to ``rmin`` then ``rmax``, and ``d``
    to ``[-dmax, dmax]``.
    """
    rs = np.maximum(renorm_stddev, np.sqrt(epsilon))
    r = np.sqrt(var + epsilon) / rs
    d = (mean - renorm_mean) / rs
    if rmin is not None:
        r = np.maximum(r, rmin)
    if rmax is not None:
        r = np.minimum(r, rmax)
    if dmax is not None:
        d = np.clip(d, -dmax, dmax)
    return r, d


def masked_moments(x, axes, mask):
    """Mean and biased variance per feature over the positions where ``mask`` (broadcast to
    ``x``) is true: the statistics of the kept values alone. Returns ``(mean, var, count)``."""
    x = np.asarray(x, np.float64)
    red = reduction_axes(x.ndim, axes)
    keep = np.broadcast_to(np.asarray(mask, bool), x.shape)
    count = keep.sum(axis=red, keepdims=True)
    mean = np.where(keep, x, 0.0).sum(axis=red, keepdims=True) / count
    var = np.where(keep, (x - mean) ** 2, 0.0).sum(axis=red, keepdims=True) / count
    return mean, var, count


def forward_train_masked(x, axes, epsilon, mask, gamma=1.0, beta=0.0):
    """Training output with statistics from the masked positions only; every position is
    normalized. Returns ``(y, mean, var, count)``."""
    mean, var, count = masked_moments(x, axes, mask)
    y = gamma * (np.asarray(x, np.float64) - mean) / np.sqrt(var + epsilon) + beta
    return y, mean, var, count


def backward_train_masked(dy, x, axes, epsilon, mask, gamma=1.0):
    """Gradients of :func:`forward_train_masked`: ``(dx, dgamma, dbeta)``.

    Every output depends on the masked statistics, so the sums run over every position, but
    only the kept positions made the statistics (and divide by their count); a position outside
    the mask keeps only its direct term ``gamma * dy / std``.
    """
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    red = reduction_axes(x.ndim, axes)
    mean, var, count = masked_moments(x, axes, mask)
    keep = np.broadcast_to(np.asarray(mask, bool), x.shape)
    inv = 1.0 / np.sqrt(var + epsilon)
    xhat = (x - mean) * inv
    sum_dy = dy.sum(axis=red, keepdims=True)
    sum_dy_xhat = (dy * xhat).sum(axis=red, keepdims=True)
    through_stats = np.where(keep, (sum_dy + xhat * sum_dy_xhat) / count, 0.0)
    dx = gamma * inv * (dy - through_stats)
    return dx, sum_dy_xhat, sum_dy

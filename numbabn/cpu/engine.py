"""CPU engine: chooses the work units, owns the scratch buffers, and calls the kernels.

Inputs are canonical C-contiguous arrays, ``x[R, C]`` (channels last) or ``x[R, C, I]``
(channels first), where ``R`` rows are consecutive samples of ``rows_per_sample`` rows each and
sample ``n`` belongs to group ``n % groups``. Per-group results are float64 ``(groups, C)``.

The unit sizes below depend only on the shape, never on the thread count: that is what makes
results bitwise reproducible across machines with different core counts.

float16 and bfloat16 arrays are read and written by the kernels as they are (as 16-bit integer
views, see ``kernels``), with float32 arithmetic: half the bytes of float32, so close to twice
as fast at the memory roofline.
"""
import math
import threading

import numpy as np

from .. import _dtypes
from . import kernels, threads

__all__ = [  # the interface of numbabn/_engine.py
    "DEVICE",
    # primitives
    "moments", "masked_moments", "group_average", "forward_coefficients", "affine", "grad_sums",
    "gradient_coefficients", "grad_input", "train_small", "infer_small", "backward_small",
    "renorm_correction", "moving_averages", "stddev", "variance_from_stddev",
    # placement
    "adopt", "to_host", "to_device", "constant", "canonical", "restore", "astype", "copy", "empty",
    "add_scaled", "assign", "as_vector", "mask_weights",
    # rank math (distributed.py)
    "stack", "combine_moments", "sum_over_ranks", "weighted_average",
]

# the device name the dispatcher knows this engine by
DEVICE = "cpu"

# A reduction unit covers about this many elements: large enough that the (units, C) float64
# partials cost a few percent of the input's traffic, small enough to spread over cores.
UNIT_ELEMENTS = 1 << 16
# An elementwise task covers about this many elements.
TASK_ELEMENTS = 1 << 14
# Below this many elements a kernel runs on the calling thread: waking the pool costs more.
SERIAL_ELEMENTS = 1 << 15


_local = threading.local()


def _workspace(role, dtype, *shapes):
    """Views of a per-thread scratch buffer for ``role``, kept between calls.

    Partials are freshly needed on every call, and a fresh allocation of this size is mapped and
    zero-filled page by page; reusing one buffer avoids that. Per thread, so concurrent calls from
    several Python threads never share scratch.
    """
    views = _local.__dict__.setdefault("views", {})
    key = (role, dtype, shapes)
    found = views.get(key)
    if found is not None:
        return found
    buffers = _local.__dict__.setdefault("buffers", {})
    sizes = [math.prod(s) for s in shapes]
    buf = buffers.get((role, dtype))
    if buf is None or buf.size < sum(sizes):
        buf = buffers[(role, dtype)] = np.empty(sum(sizes), dtype)
        views.clear()                         # views of the old buffer are stale
    found, offset = [], 0
    for shape, size in zip(shapes, sizes):
        found.append(buf[offset:offset + size].reshape(shape))
        offset += size
    if len(views) > 32:
        views.clear()
    views[key] = found
    return found


def _arith(dtype):
    """The dtype the kernels compute in for data stored as ``dtype`` (``numbabn/_dtypes.py``)."""
    return _dtypes.rule(dtype).arithmetic


def _raw(a):
    """``a`` as the kernels take it: its CPU view in ``numbabn/_dtypes.py`` (float16 as
    uint16, bfloat16 as int16; see ``kernels``)."""
    if a.dtype.itemsize != 2:            # the common case, decided in one attribute read
        return a
    view = _dtypes.rule(a.dtype).cpu_view
    return a if view == a.dtype else a.view(view)


def _result(shape, dtype, arith):
    """A new array for a kernel's output in ``dtype`` (``arith`` when None). The kernels write
    float16, bfloat16, float32 and float64 of native byte order; other dtypes are written in the
    arithmetic dtype (and cast by the caller)."""
    if dtype is None or dtype == arith:
        return np.empty(shape, arith)    # the common case, decided in one comparison
    dtype = np.dtype(dtype)
    writable = (dtype.kind == "f" and dtype.itemsize in (2, 4, 8)) or _dtypes.is_bfloat16(dtype)
    return np.empty(shape, dtype if writable and dtype.isnative else arith)


def _pick(kernel, a):
    """The twin of ``kernel`` to run on ``a`` (the array whose size sets the work)."""
    return threads.pick(kernel, a, SERIAL_ELEMENTS)


def _small_groups(x, rows_per_sample, groups):
    """Whether each ghost group of a channels-last input fits in one work unit."""
    rows_per_group = x.shape[0] // groups
    return groups > 1 and x.ndim == 2 and rows_per_group * x.shape[1] <= UNIT_ELEMENTS


def _row_block(rows, channels, target):
    return max(1, min(rows, target // max(channels, 1)))


def moments(x, rows_per_sample, groups):
    """Mean and biased variance per (group, feature), float64 ``(groups, C)``."""
    mean, var = _shifted_moments(x, rows_per_sample, groups)
    if x.size and kernels.any_nan(mean):
        _plain_means(mean, x, rows_per_sample, groups)
    return mean, var


# Past this many NaN means, one vectorized pass over x beats a NumPy call per (group, feature).
_FEW_NAN_MEANS = 64


def _plain_means(mean, x, rows_per_sample, groups):
    """:func:`_sum_means` for the groups of ``x``: one by one for a few NaN means, in one float64
    pass over ``x`` for many (an all-NaN batch)."""
    samples = x.shape[0] // rows_per_sample
    # sample v * G + g is in group g: (V, G, P, C[, I])
    per_group = x.reshape((samples // groups, groups, rows_per_sample) + x.shape[1:])
    bad = np.isnan(mean)
    if np.count_nonzero(bad) <= _FEW_NAN_MEANS:
        _sum_means(mean, lambda g, c: per_group[:, g, :, c])
        return
    count = per_group[:, 0, :, 0].size
    axes = (0, 2, 4) if x.ndim == 3 else (0, 2)
    mean[bad] = (per_group.sum(axis=axes, dtype=np.float64) / max(count, 1))[bad]


def _sum_means(mean, values_of):
    """Where a mean came out NaN, make it ``sum / count`` of ``values_of(group, feature)``.

    Shifted sums and the pairwise merge meet ``inf - inf`` as soon as a feature holds an
    infinity; the plain sum gives TensorFlow's answer: +-inf when the infinities have one sign and
    there is no NaN (the variance is NaN either way). Only the affected features are summed.
    """
    for g, c in zip(*np.nonzero(np.isnan(mean))):
        values = values_of(g, c)
        mean[g, c] = values.astype(np.float64).sum() / max(values.size, 1)


def _shifted_moments(x, rows_per_sample, groups):
    C = x.shape[1]
    mean = np.empty((groups, C))
    m2 = np.empty((groups, C))
    count = x.size // max(C, 1) // max(groups, 1)
    if count == 0 or x.shape[0] == 0:
        mean.fill(np.nan)
        m2.fill(np.nan)
        return mean, m2
    samples = x.shape[0] // rows_per_sample
    x = _raw(x)
    if _small_groups(x, rows_per_sample, groups):
        _pick(kernels.group_moments_rows, x)(x, rows_per_sample, groups, mean, m2)
        m2 /= count
        return mean, m2
    if x.ndim == 2:
        block = _row_block(rows_per_sample, C, UNIT_ELEMENTS)
        parts = -(-rows_per_sample // block)
        units, per_sample, length = samples * parts, parts, rows_per_sample
        (shifts,) = _workspace("shifts", np.float64, (units, C))
        if units == 1:                   # one unit is the whole (single-group) batch
            _pick(kernels.unit_moments_rows, x)(x, rows_per_sample, block, mean, m2, shifts)
            m2 /= count
            return mean, m2
        u_mean, u_m2 = _workspace("partials", np.float64, (units, C), (units, C))
        _pick(kernels.unit_moments_rows, x)(x, rows_per_sample, block, u_mean, u_m2, shifts)
    else:
        length = x.shape[2]
        block = min(length, UNIT_ELEMENTS)
        parts = -(-length // block)
        units, per_sample = x.shape[0] * parts, parts * rows_per_sample
        u_mean, u_m2 = _workspace("partials", np.float64, (units, C), (units, C))
        _pick(kernels.unit_moments_planes, x)(x, block, u_mean, u_m2)
    _pick(kernels.merge_moments, u_mean)(u_mean, u_m2, per_sample, parts, length, block,
                                         groups, mean, m2)
    m2 /= count
    return mean, m2


def forward_coefficients(x, mean, var, epsilon, affine):
    """``(inv_std, m_hi, a, b)``, ``(groups, C)``, of ``y = (x - m_hi) * a + b``.

    ``mean``/``var`` are float64 ``(groups, C)``; ``affine`` holds the ``(C,)`` factors
    (``gamma``, ``beta``, ``scale``, ``shift``). ``inv_std`` is float64, the others are in the
    arithmetic dtype of ``x`` (float32 for half precision).
    """
    G, C = mean.shape
    inv_std = np.empty((G, C))
    arith = _arith(x.dtype)
    m_hi, a, b = np.empty((G, C), arith), np.empty((G, C), arith), np.empty((G, C), arith)
    _pick(kernels.affine_coefficients, mean)(mean, var, epsilon, affine.gamma, affine.beta,
                                             affine.scale, affine.shift, inv_std, m_hi, a, b)
    return inv_std, m_hi, a, b


def affine(x, rows_per_sample, groups, m, a, b, out=None, dtype=None):
    """``(x - m) * a + b`` per (group, feature) into ``out`` or a new array of ``dtype``."""
    y = _result(x.shape, dtype, m.dtype) if out is None else out
    if x.size:
        _affine_into(_raw(x), rows_per_sample, groups, m, a, b, _raw(y))
    return y if dtype is None or y.dtype == dtype else y.astype(dtype)


def _affine_into(x, rows_per_sample, groups, m, a, b, out):
    """The affine kernel that suits the layout."""
    if _small_groups(x, rows_per_sample, groups):
        _pick(kernels.affine_rows_by_group, x)(x, rows_per_sample, groups, m, a, b, out)
    elif x.ndim == 2:
        block = _row_block(x.shape[0], x.shape[1], TASK_ELEMENTS)
        _pick(kernels.affine_rows, x)(x, rows_per_sample, groups, block, m, a, b, out)
    else:
        _pick(kernels.affine_planes, x)(x, rows_per_sample, groups,
                                        min(x.shape[2], TASK_ELEMENTS), m, a, b, out)


def _one_pass(x):
    """Whether the fused small-input kernels take ``x``: a non-empty channels-last input of at
    most ``SERIAL_ELEMENTS`` values."""
    return x.ndim == 2 and 0 < x.size <= SERIAL_ELEMENTS


def train_small(x, epsilon, affine, out=None, dtype=None):
    """:func:`moments`, :func:`forward_coefficients` and :func:`affine` of a one-group input in
    one kernel: ``(y, mean, var, inv_std, m_hi)``, or None where that kernel does not apply
    (then the caller runs the three): see :func:`_one_pass`."""
    if not _one_pass(x):
        return None
    C = x.shape[1]
    arith = _arith(x.dtype)
    # one block each for the kernel; views are taken only of what the caller keeps
    stats = np.empty((3, 1, C))                  # mean, var, inv_std
    coefficients = np.empty((3, 1, C), arith)    # m_hi, a, b
    y = _result(x.shape, dtype, arith) if out is None else out
    if not kernels.train_rows_small(_raw(x), epsilon, affine.gamma, affine.beta, affine.scale,
                                    affine.shift, stats, coefficients, _raw(y)):
        return None                      # a NaN mean: moments() says what it is
    return ((y if dtype is None or y.dtype == dtype else y.astype(dtype)), stats[0], stats[1],
            stats[2], coefficients[0])


def infer_small(x, mean, var, epsilon, affine, out=None, dtype=None):
    """:func:`forward_coefficients` and :func:`affine` in one kernel, with ``mean`` and ``var``
    ``(1, C)`` weights: ``(y, mean, var, inv_std, m_hi)``, the statistics as float64 copies
    (what a cache keeps), or None where it does not apply (as for :func:`train_small`)."""
    if not _one_pass(x):
        return None
    C = x.shape[1]
    arith = _arith(x.dtype)
    stats = np.empty((3, 1, C))                  # mean, var (copies), inv_std
    coefficients = np.empty((3, 1, C), arith)    # m_hi, a, b
    y = _result(x.shape, dtype, arith) if out is None else out
    kernels.infer_rows_small(_raw(x), mean, var, epsilon, affine.gamma,
                             affine.beta, affine.scale, affine.shift, stats, coefficients, _raw(y))
    return ((y if dtype is None or y.dtype == dtype else y.astype(dtype)), stats[0], stats[1],
            stats[2], coefficients[0])


def backward_small(x, dy, mean, m_hi, inv_std, count, training, affine, out=None, dtype=None):
    """:func:`grad_sums`, :func:`gradient_coefficients` and :func:`grad_input` (or, in
    inference, :func:`affine` on ``dy``) of a one-group input in one kernel:
    ``(dx, dgamma, dbeta)``, or None where it does not apply (as for :func:`train_small`)."""
    if not _one_pass(x):
        return None
    C = x.shape[1]
    arith = _arith(x.dtype)
    sums = np.empty((4, C))              # two sums, then dgamma and dbeta
    coefficients = np.empty((4, C), arith)
    dx = _result(x.shape, dtype, arith) if out is None else out
    kernels.backward_rows_small(_raw(x), _raw(dy), mean, m_hi, inv_std, float(count), training,
                                affine.gamma, affine.scale, affine.shift, sums, coefficients,
                                _raw(dx))
    return (dx if dtype is None or dx.dtype == dtype else dx.astype(dtype)), sums[2], sums[3]


def grad_sums(x, dy, rows_per_sample, groups, m_hi):
    """``sum(dy)`` and ``sum(dy * (x - m_hi))`` per (group, feature), float64 ``(groups, C)``.

    ``m_hi`` is the mean rounded to ``x``'s dtype, ``(groups, C)``.
    """
    C = x.shape[1]
    sum_dy = np.zeros((groups, C))
    sum_dyxc = np.zeros((groups, C))
    if x.size == 0:
        return sum_dy, sum_dyxc
    samples = x.shape[0] // rows_per_sample
    x, dy = _raw(x), _raw(dy)
    if _small_groups(x, rows_per_sample, groups):
        _pick(kernels.group_grad_sums_rows, x)(x, dy, rows_per_sample, groups, m_hi, sum_dy,
                                               sum_dyxc)
        return sum_dy, sum_dyxc
    if x.ndim == 2:
        block = _row_block(rows_per_sample, C, UNIT_ELEMENTS)
        per_sample = -(-rows_per_sample // block)
        units = samples * per_sample
        u_dy, u_dyxc = _workspace("partials", np.float64, (units, C), (units, C))
        _pick(kernels.unit_grad_sums_rows, x)(x, dy, rows_per_sample, groups, block, m_hi,
                                              u_dy, u_dyxc)
    else:
        inner = x.shape[2]
        chunk = min(inner, UNIT_ELEMENTS)
        per_row = -(-inner // chunk)
        per_sample = per_row * rows_per_sample
        u_dy, u_dyxc = _workspace("partials", np.float64, (x.shape[0] * per_row, C),
                                  (x.shape[0] * per_row, C))
        _pick(kernels.unit_grad_sums_planes, x)(x, dy, rows_per_sample, groups, chunk, m_hi,
                                                u_dy, u_dyxc)
    _pick(kernels.merge_sums, u_dy)(u_dy, u_dyxc, per_sample, groups, sum_dy, sum_dyxc)
    return sum_dy, sum_dyxc


def gradient_coefficients(x, sum_dy, sum_dyxc, mean, m_hi, inv_std, count, training, affine):
    """``(dy_mean, k_dy, k_xc, k_0, dgamma, dbeta)`` from the sums of :func:`grad_sums`.

    ``dx = k_dy * (dy - dy_mean) + k_xc * (x - m_hi) + k_0`` per (group, feature), in the
    arithmetic dtype of ``x``; ``dgamma`` and ``dbeta`` are float64 ``(C,)``. ``count`` is the
    number of values behind each statistic (over every process, for synchronized sums).
    """
    G, C = mean.shape
    # separate arrays: unpacking one (4, G, C) block costs more than four allocations
    arith = _arith(x.dtype)
    dy_mean, k_dy, k_xc, k_0 = (np.empty((G, C), arith) for _ in range(4))
    dgamma, dbeta = np.empty(C), np.empty(C)
    _pick(kernels.grad_coefficients, mean)(
        np.ascontiguousarray(sum_dy), np.ascontiguousarray(sum_dyxc), mean, m_hi, inv_std,
        float(count), training, affine.gamma, affine.scale, affine.shift, dy_mean, k_dy, k_xc,
        k_0, dgamma, dbeta)
    return dy_mean, k_dy, k_xc, k_0, dgamma, dbeta


def grad_input(x, dy, rows_per_sample, groups, weights, m_hi, dy_mean, k_dy, k_xc, k_0,
               out=None, dtype=None):
    """``dx = k_dy * (dy - dy_mean) + k_xc * (x - m_hi) + k_0`` into ``out`` or a new array of
    ``dtype`` (default: the arithmetic dtype). ``weights``: the mask of a masked training call
    (see :func:`masked_moments`), one group."""
    dx = _result(x.shape, dtype, _arith(x.dtype)) if out is None else out
    if x.size:
        _grad_input_into(_raw(x), _raw(dy), rows_per_sample, groups, weights, m_hi, dy_mean,
                         k_dy, k_xc, k_0, _raw(dx))
    return dx if dtype is None or dx.dtype == dtype else dx.astype(dtype)


def _grad_input_into(x, dy, rows_per_sample, groups, weights, m_hi, dy_mean, k_dy, k_xc, k_0,
                     dx):
    """The input-gradient kernel that suits the layout (and the mask)."""
    C = x.shape[1]
    if weights is not None:
        if x.ndim == 2:
            _pick(kernels.masked_grad_input_rows, x)(
                x, dy, weights, _row_block(x.shape[0], C, TASK_ELEMENTS), m_hi, dy_mean, k_dy,
                k_xc, k_0, dx)
        else:
            _pick(kernels.masked_grad_input_planes, x)(x, dy, weights, m_hi, dy_mean, k_dy,
                                                       k_xc, k_0, dx)
    elif _small_groups(x, rows_per_sample, groups):
        _pick(kernels.grad_input_rows_by_group, x)(x, dy, rows_per_sample, groups, m_hi,
                                                   dy_mean, k_dy, k_xc, k_0, dx)
    elif x.ndim == 2:
        block = _row_block(x.shape[0], C, TASK_ELEMENTS)
        _pick(kernels.grad_input_rows, x)(x, dy, rows_per_sample, groups, block, m_hi,
                                          dy_mean, k_dy, k_xc, k_0, dx)
    else:
        _pick(kernels.grad_input_planes, x)(x, dy, rows_per_sample, groups,
                                            min(x.shape[2], TASK_ELEMENTS), m_hi,
                                            dy_mean, k_dy, k_xc, k_0, dx)


def moving_averages(first, first_stat, second, second_stat, decay, second_scale=1.0):
    """In place ``moving -= (moving - stat) * decay`` for two weights of one dtype; the second
    statistic is multiplied by ``second_scale`` first (the fused path's Bessel correction)."""
    kernels.moving_averages(as_vector(first), as_vector(first_stat), as_vector(second),
                            as_vector(second_stat), float(second_scale), float(decay))


def group_average(mean, var):
    """Per-feature average of the group statistics ``(G, C)`` -> two ``(C,)`` vectors."""
    if mean.shape[0] == 1:
        return mean[0], var[0]
    if mean.shape[0] == 0:                   # no groups (an empty synchronized batch)
        return np.full(mean.shape[1], np.nan), np.full(mean.shape[1], np.nan)
    return mean.mean(axis=0), var.mean(axis=0)


def renorm_correction(mean, var, renorm_mean, renorm_stddev, epsilon, rmin, rmax, dmax):
    """Batch renormalization's ``(r, d)``, float64 ``(C,)``; ``None`` bounds do not clip."""
    C = mean.shape[0]
    r, d = np.empty(C), np.empty(C)
    inf = math.inf
    kernels.renorm_correction(np.ascontiguousarray(mean, np.float64),
                              np.ascontiguousarray(var, np.float64), renorm_mean.reshape(-1),
                              renorm_stddev.reshape(-1), float(epsilon),
                              -inf if rmin is None else float(rmin),
                              inf if rmax is None else float(rmax),
                              inf if dmax is None else float(dmax), r, d)
    return r, d


def stddev(var, epsilon):
    return np.sqrt(var + epsilon)


def variance_from_stddev(variance, stddev_, epsilon):
    """In place ``variance = max(stddev^2 - epsilon, 0)`` in the weights' dtype."""
    variance[...] = np.maximum(stddev_ * stddev_ - variance.dtype.type(epsilon), 0)


# ------------------------------------------------------------------------------------------------
# placement: the CPU engine works on NumPy arrays in place


def adopt(x):
    """``(array, wrap)``; NumPy arrays are used as they are."""
    return x, _identity


def _identity(a):
    return a


def to_host(a):
    return a


def to_device(values, like=None):
    return np.ascontiguousarray(values)


def constant(channels, value, like=None):
    """A read-only ``(C,)`` float64 vector of ``value``, shared between calls."""
    key = (channels, value)
    v = _CONSTANTS.get(key)
    if v is None:
        if len(_CONSTANTS) > 64:
            _CONSTANTS.clear()
        v = _CONSTANTS[key] = np.full(channels, value)
        v.flags.writeable = False
    return v


_CONSTANTS = {}


def canonical(x, layout, dtype):
    """``x`` as the C-contiguous ``layout.canonical_shape`` array the kernels read for a
    computation in ``dtype`` (a view if it can): cast to ``dtype``, except that float16 and
    bfloat16 stay as they are for a float32 computation (the kernels widen them exactly)."""
    if x.dtype == dtype and layout.perm is None and x.flags.c_contiguous:
        return x.reshape(layout.canonical_shape)     # the common case: a free reshape
    keep = x.dtype == dtype or (dtype == np.float32 and _dtypes.is_half(x.dtype)
                                and x.dtype.isnative)
    return layout.canonical(x if keep else x.astype(dtype))


def restore(y, layout, dtype):
    """Inverse of :func:`canonical`: back to the input's shape (C-contiguous), in ``dtype``."""
    y = layout.restore(y)
    return y if y.dtype == dtype else y.astype(dtype)


def astype(x, dtype):
    return x.astype(dtype, copy=False)


def copy(x, like=None):
    return x.copy()


def empty(shape, dtype, like=None):
    return np.empty(shape, dtype)


def add_scaled(out, delta, alpha):
    """In place ``out += alpha * delta``."""
    out += alpha * delta.reshape(out.shape)


def assign(out, values):
    """In place ``out[...] = values`` (same number of elements, cast to ``out``'s dtype)."""
    out[...] = values.reshape(out.shape)


def as_vector(a):
    """A weight as a flat vector for the kernels (a view; they convert each value to float64)."""
    return a if a.ndim == 1 else a.reshape(-1)


# ------------------------------------------------------------------------------------------------
# across processes (synchronized batch norm): gathered per-rank rows, combined in rank order


def stack(arrays):
    """The float64 arrays of one size as the rows of a new ``(k, n)`` array."""
    return np.stack([np.asarray(a, np.float64).reshape(-1) for a in arrays])


def combine_moments(gathered):
    """Chan-merge per-rank ``(count, mean, M2)`` rows, ``gathered[P, 3, C]``, in rank order.

    Returns ``(mean (1, C), biased variance (1, C), total count)``; ranks with no values are
    skipped (their mean is undefined).
    """
    P, _, C = gathered.shape
    mean, var = np.empty((1, C)), np.empty((1, C))
    kernels.combine_ranks(gathered, mean, var)
    return mean, var, int(gathered[:, 0, 0].sum()) if C else 0


def sum_over_ranks(gathered):
    """``gathered[P, k, n]`` summed over ranks in rank order: ``(k, n)``."""
    P, k, n = gathered.shape
    out = np.empty((k, n))
    kernels.sum_ranks(gathered.reshape(P, k * n), out.reshape(-1))
    return out


def weighted_average(gathered):
    """Rows ``gathered[P, 1 + k, n]`` of (weight, k values): ``sum(w * v) / sum(w)`` over ranks
    in rank order, ``(k, n)``; ranks of weight 0 are skipped."""
    P, rows, n = gathered.shape
    out = np.empty((rows - 1, n))
    kernels.weighted_average(gathered, out)
    return out


# ------------------------------------------------------------------------------------------------
# masks


def mask_weights(mask, layout):
    """A mask (see :meth:`Layout.mask_dims`) as contiguous canonical boolean weights: ``w[R]``
    for rows, ``w[R, I]`` for planes."""
    dims, _ = layout.mask_dims(mask.shape)
    full = np.broadcast_to(np.asarray(mask != 0).reshape(dims), layout.mask_shape)
    if layout.perm is not None:
        full = np.transpose(full, layout.perm)
    return np.ascontiguousarray(full).reshape(layout.weights_shape)


def masked_moments(x, w):
    """Mean and biased variance ``(1, C)`` of the positions where ``w`` is true, and their
    number (per feature)."""
    C = x.shape[1]
    values, x = x, _raw(x)
    if x.ndim == 2:
        block = _row_block(x.shape[0], C, UNIT_ELEMENTS)
        units = -(-x.shape[0] // block)
        u_n = np.empty(units, np.int64)
        u_mean, u_m2 = _workspace("partials", np.float64, (units, C), (units, C))
        _pick(kernels.masked_unit_moments_rows, x)(x, w, block, u_n, u_mean, u_m2)
    else:
        R, _, I = x.shape
        chunk = max(1, min(I, UNIT_ELEMENTS))
        units = R * (-(-I // chunk))
        u_n = np.empty(units, np.int64)
        u_mean, u_m2 = _workspace("partials", np.float64, (units, C), (units, C))
        _pick(kernels.masked_unit_moments_planes, x)(x, w, chunk, u_n, u_mean, u_m2)
    mean = np.empty((1, C))
    m2 = np.empty((1, C))
    count = kernels.merge_counted_moments(u_n, u_mean, u_m2, mean, m2)
    if count == 0:
        mean.fill(np.nan)
        m2.fill(np.nan)
        return mean, m2, 0
    if kernels.any_nan(mean):
        kept = w.astype(bool)
        _sum_means(mean, (lambda g, c: values[kept, c]) if values.ndim == 2
                   else (lambda g, c: values[:, c, :][kept]))
    return mean, m2 / count, int(count)

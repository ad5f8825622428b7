"""CPU engine: chooses the work units, owns the scratch buffers, and calls the kernels.

Inputs are canonical C-contiguous arrays, ``x[R, C]`` (channels last) or ``x[R, C, I]``
(channels first), where ``R`` rows are consecutive samples of ``rows_per_sample`` rows each and
sample ``n`` belongs to group ``n % groups``. Per-group results are float64 ``(groups, C)``.

The unit sizes below depend only on the shape, never on the thread count: that is what makes
results bitwise reproducible across machines with different core counts.
"""
import numpy as np

from . import kernels

# A reduction unit covers about this many elements: large enough that the (units, C) float64
# partials cost a few percent of the input's traffic, small enough to spread over cores.
UNIT_ELEMENTS = 1 << 16
# An elementwise task covers about this many elements.
TASK_ELEMENTS = 1 << 14


def _row_block(rows, channels, target):
    return max(1, min(rows, target // max(channels, 1)))


def _unit_counts(length, block, repeats):
    """Sizes of ``ceil(length / block)`` consecutive blocks of ``length``, tiled ``repeats`` times."""
    per = -(-length // block)
    sizes = np.full(per, block, dtype=np.float64)
    sizes[-1] = length - (per - 1) * block
    return np.tile(sizes, repeats), per


def moments(x, rows_per_sample, groups):
    """Mean and biased variance per (group, feature), float64 ``(groups, C)``."""
    C = x.shape[1]
    mean = np.empty((groups, C))
    m2 = np.empty((groups, C))
    count = x.size // max(C, 1) // max(groups, 1)
    if count == 0 or x.shape[0] == 0:
        mean.fill(np.nan)
        m2.fill(np.nan)
        return mean, m2
    samples = x.shape[0] // rows_per_sample
    if x.ndim == 2:
        block = _row_block(rows_per_sample, C, UNIT_ELEMENTS)
        counts, per_sample = _unit_counts(rows_per_sample, block, samples)
        u_mean = np.empty((counts.size, C))
        u_m2 = np.empty((counts.size, C))
        kernels.unit_moments_rows(x, rows_per_sample, block, u_mean, u_m2)
    else:
        inner = x.shape[2]
        chunk = min(inner, UNIT_ELEMENTS)
        counts, per_row = _unit_counts(inner, chunk, x.shape[0])
        per_sample = per_row * rows_per_sample
        u_mean = np.empty((counts.size, C))
        u_m2 = np.empty((counts.size, C))
        kernels.unit_moments_planes(x, chunk, u_mean, u_m2)
    kernels.merge_moments(u_mean, u_m2, counts, per_sample, groups, mean, m2)
    m2 /= count
    return mean, m2


def split_center(m, a, b, dtype):
    """Coefficients in ``dtype`` for ``(x - m) * a + b`` with ``m`` kept to float64 accuracy.

    ``m`` is rounded to ``m_hi`` in ``dtype``; the remainder ``m - m_hi`` moves into the offset.
    ``x - m_hi`` is exact when x is near the mean (Sterbenz), so a float32 output stays right to
    float32 rounding even when |mean| >> std.
    """
    m = np.asarray(m, dtype=np.float64)
    m_hi = m.astype(dtype)
    b = np.asarray(b, dtype=np.float64) - (m - m_hi) * np.asarray(a, dtype=np.float64)
    return (np.ascontiguousarray(m_hi), np.ascontiguousarray(a, dtype=dtype),
            np.ascontiguousarray(b, dtype=dtype))


def affine(x, rows_per_sample, groups, m, a, b, out=None):
    """``(x - m) * a + b`` per (group, feature); coefficients float64 ``(groups, C)``."""
    out = np.empty_like(x) if out is None else out
    m, a, b = split_center(m, a, b, x.dtype)
    if x.size == 0:
        return out
    if x.ndim == 2:
        block = _row_block(x.shape[0], x.shape[1], TASK_ELEMENTS)
        kernels.affine_rows(x, rows_per_sample, groups, block, m, a, b, out)
    else:
        kernels.affine_planes(x, rows_per_sample, groups, min(x.shape[2], TASK_ELEMENTS),
                              m, a, b, out)
    return out


def grad_sums(x, dy, rows_per_sample, groups, mean):
    """``sum(dy)`` and ``sum(dy * (x - mean))`` per (group, feature), float64 ``(groups, C)``."""
    C = x.shape[1]
    sum_dy = np.zeros((groups, C))
    sum_dyxc = np.zeros((groups, C))
    if x.size == 0:
        return sum_dy, sum_dyxc
    mean = np.ascontiguousarray(mean, dtype=np.float64)
    samples = x.shape[0] // rows_per_sample
    if x.ndim == 2:
        block = _row_block(rows_per_sample, C, UNIT_ELEMENTS)
        per_sample = -(-rows_per_sample // block)
        u_dy = np.empty((samples * per_sample, C))
        u_dyxc = np.empty((samples * per_sample, C))
        kernels.unit_grad_sums_rows(x, dy, rows_per_sample, groups, block, mean, u_dy, u_dyxc)
    else:
        inner = x.shape[2]
        chunk = min(inner, UNIT_ELEMENTS)
        per_row = -(-inner // chunk)
        per_sample = per_row * rows_per_sample
        u_dy = np.empty((x.shape[0] * per_row, C))
        u_dyxc = np.empty((x.shape[0] * per_row, C))
        kernels.unit_grad_sums_planes(x, dy, rows_per_sample, groups, chunk, mean, u_dy, u_dyxc)
    kernels.merge_sums(u_dy, u_dyxc, per_sample, groups, sum_dy, sum_dyxc)
    return sum_dy, sum_dyxc


def grad_input(x, dy, rows_per_sample, groups, m, k_dy, k_xc, k_0):
    """``k_dy * dy + k_xc * (x - m) + k_0`` with ``(groups, C)`` coefficients."""
    dx = np.empty_like(x)
    if x.size == 0:
        return dx
    m, k_xc, k_0 = split_center(m, k_xc, k_0, x.dtype)
    k_dy = np.ascontiguousarray(k_dy, dtype=x.dtype)
    if x.ndim == 2:
        block = _row_block(x.shape[0], x.shape[1], TASK_ELEMENTS)
        kernels.grad_input_rows(x, dy, rows_per_sample, groups, block, m, k_dy, k_xc, k_0, dx)
    else:
        kernels.grad_input_planes(x, dy, rows_per_sample, groups, min(x.shape[2], TASK_ELEMENTS),
                                  m, k_dy, k_xc, k_0, dx)
    return dx


def moving_average(moving, batch_stat, decay):
    """In place ``moving -= (moving - batch_stat) * decay``, computed in ``moving``'s dtype."""
    flat = moving.reshape(-1)
    stat = np.ascontiguousarray(batch_stat, dtype=moving.dtype).reshape(-1)
    kernels.moving_average(flat, stat, moving.dtype.type(decay))
    return moving

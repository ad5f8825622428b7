"""CUDA engine: launch shapes, device buffers and streams for the kernels in ``kernels.py``.

The interface is the CPU engine's (``numbabn/cpu/engine.py``), array for array: every array an
operation takes or returns is a Numba device array, per-group statistics are float64 ``(G, C)``.
Work is queued on the stream of the input array (CuPy's current stream when the input came from
CuPy), outputs are allocated for that stream, and nothing here waits for the device: the host
sees results only when the caller copies them back.

Launch shapes depend on the input's shape only, so results are bitwise reproducible.
"""
import math
import threading

import numpy as np
from numba import cuda

from .. import _dtypes
from . import kernels as K

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
DEVICE = "cuda"

# Reductions aim for about this many blocks (enough to fill a large GPU several times over).
TARGET_BLOCKS = 4 if K.SMALL_TILES else 2048
# A planes reduction unit covers at most this many values of one plane.
CHUNK = 2 * K.T if K.SMALL_TILES else 16 * K.T
# Elementwise grids stop growing here and go grid-stride.
MAX_ROW_BLOCKS = 4 if K.SMALL_TILES else 8192
MAX_GRID_Y = 8 if K.SMALL_TILES else 65535
VECTOR_BLOCK = 32 if K.SMALL_TILES else 128
COPY_BLOCKS = 4 if K.SMALL_TILES else 4096
COPY_THREADS = 32 if K.SMALL_TILES else 256


def _stream(a):
    return getattr(a, "stream", 0) or 0


def _empty(shape, dtype, like):
    return cuda.device_array(shape, dtype=dtype, stream=_stream(like))


def _vector_launch(kernel, n, like):
    return kernel[max(1, -(-n // VECTOR_BLOCK)), VECTOR_BLOCK, _stream(like)]


# ------------------------------------------------------------------------------------------------
# placement


def is_device_array(x):
    return getattr(x, "__cuda_ndarray__", False) or cuda.devicearray.is_cuda_ndarray(x)


def adopt(x):
    """``(array, wrap)``: a zero-copy Numba view of the CUDA array ``x`` and a function that
    turns engine results back into ``x``'s kind (CuPy in, CuPy out; Numba in, Numba out)."""
    if is_device_array(x):
        return x, _identity
    # sync=False: the work is queued on the array's own stream, so waiting for it is not needed
    view = cuda.as_cuda_array(x, sync=False)
    module = type(x).__module__.split(".")[0]
    if module == "cupy":
        return view, _to_cupy
    if module == "torch":
        import torch
        device = x.device
        return view, lambda a: torch.as_tensor(a, device=device)
    return view, _identity


def _identity(a):
    return a


def _to_cupy(a):
    """A CuPy array over the memory of the Numba device array ``a`` (kept alive by it).

    Built from the pointer rather than through ``__cuda_array_interface__``: importing through
    the interface makes CuPy synchronize the stream the array reports, which would make every
    call wait for the GPU.
    """
    import cupy
    memory = cupy.cuda.UnownedMemory(a.device_ctypes_pointer.value or 0, a.nbytes, a,
                                     cupy.cuda.Device().id)   # an empty array has no pointer
    return cupy.ndarray(a.shape, a.dtype, cupy.cuda.MemoryPointer(memory, 0), strides=a.strides)


def to_host(a):
    """A NumPy copy of a device array.

    Waits for the whole device first: the array may have been written on any stream (a
    weight is updated on the stream of each call), and reading on the host is a synchronization
    point anyway.
    """
    cuda.synchronize()
    return a.copy_to_host()


def to_device(values, like=None):
    """A device copy of a NumPy array.

    Queued on ``like``'s stream when given (ordered with the work of that call). Without it
    (weights, shared constants: uploads that happen once), the copy is waited for, so that work
    on any stream may use the result.
    """
    values = np.ascontiguousarray(values)
    stream = _stream(like) if like is not None else 0
    if stream:
        return cuda.to_device(values, stream=stream)
    out = cuda.to_device(values)
    cuda.synchronize()
    return out


_constants = threading.local()


def constant(channels, value, like=None):
    """A ``(C,)`` float64 device vector of ``value``, kept per thread and per device."""
    cache = _constants.__dict__.setdefault("vectors", {})
    key = (channels, value, getattr(cuda.get_current_device(), "id", 0))
    v = cache.get(key)
    if v is None:
        if len(cache) > 64:
            cache.clear()
        v = cache[key] = to_device(np.full(channels, value))
    return v


def _merged(shape, strides):
    """The same strided walk over fewer axes: length-1 axes dropped, and each axis merged into
    the one before it where that one steps exactly over it (C order is kept)."""
    out_shape, out_strides = [], []
    for n, st in zip(shape, strides):
        if n == 1:
            continue
        if out_shape and out_strides[-1] == st * n:
            out_shape[-1] *= n
            out_strides[-1] = st
        else:
            out_shape.append(n)
            out_strides.append(st)
    return out_shape, out_strides


def _gather(x, shape, strides, out, walk):
    """Copy ``x``'s memory walked with ``shape``/``strides`` into the flat ``out``: one kernel
    launch on an 8-d view, or, for a walk that needs more than 8 axes even merged (rank 9 and
    up), on the host, where ``walk(a)`` is the same walk of the NumPy copy ``a`` of ``x``."""
    merged_shape, merged_strides = _merged(shape, strides)
    if len(merged_shape) <= 8:
        view = _strided_8d(x, merged_shape, merged_strides)
        _copy_launch(K.gather, out.size, x)(view, out)
        return out
    walked = np.ascontiguousarray(walk(np.asarray(to_host(x))), dtype=out.dtype)
    out.copy_to_device(walked.reshape(-1), stream=_stream(x))
    return out


def _strided_8d(x, shape, strides):
    """``x``'s memory seen with ``shape``/``strides`` (elements' byte strides), padded to 8-d."""
    pad = 8 - len(shape)
    shape = (1,) * pad + tuple(shape)
    strides = (0,) * pad + tuple(strides)
    if K.SIMULATOR:
        return cuda.simulator.cudadrv.devicearray.FakeCUDAArray(
            np.lib.stride_tricks.as_strided(x._ary, shape, strides))
    return cuda.devicearray.DeviceNDArray(shape, strides, x.dtype, stream=_stream(x),
                                          gpu_data=x.gpu_data)


def canonical(x, layout, dtype):
    """``x`` (a device array) as the C-contiguous ``layout.canonical_shape`` array the kernels
    read for a computation in ``dtype``: a view when it already is one, else one pass that
    permutes and casts. Half-precision computations run in float32 on the input rounded to the
    half type (Keras casts the input to the compute dtype first). The kernels read float16 as it
    is, also for a float32 computation (exact); bfloat16 is converted to float32 first."""
    dtype = np.dtype(dtype)
    if _is_bfloat16(dtype):
        return _cast(_gathered(x, layout, dtype), np.dtype(np.float32))
    if dtype == np.float32 and x.dtype == np.float16:
        dtype = x.dtype
    return _gathered(x, layout, dtype)


def _arith(dtype):
    """The dtype the kernels compute in for data stored as ``dtype`` (``numbabn/_dtypes.py``)."""
    return _dtypes.rule(np.dtype(dtype)).arithmetic


def _result(x, dtype, arith):
    """A new device array of ``x``'s shape for a kernel's output in ``dtype`` (``arith`` when
    None, or when the kernels cannot write ``dtype``: they write float16, float32, float64)."""
    dtype = arith if dtype is None else np.dtype(dtype)
    writable = dtype.kind == "f" and dtype.itemsize in (2, 4, 8) and dtype.isnative
    return _empty(x.shape, dtype if writable else arith, x)


def _is_bfloat16(dtype):
    return _dtypes.is_bfloat16(np.dtype(dtype))


def _gathered(x, layout, dtype):
    """``x`` as a C-contiguous ``layout.canonical_shape`` array of ``dtype``."""
    contiguous = x.is_c_contiguous() if hasattr(x, "is_c_contiguous") else x.flags.c_contiguous
    if _is_bfloat16(dtype) and not _is_bfloat16(x.dtype):
        return _cast(_gathered(x, layout, x.dtype), dtype)
    if _is_bfloat16(x.dtype) and not (layout.perm is None and contiguous):
        # move the 16-bit patterns, then convert
        moved = _gathered(x.view(np.uint16), layout, np.dtype(np.uint16)).view(x.dtype)
        return moved if moved.dtype == dtype else _cast(moved, dtype)
    if layout.perm is None and contiguous:
        x = x.reshape(layout.canonical_shape) if x.ndim else x.reshape(1, 1)
        return x if x.dtype == dtype else _cast(x, dtype)
    perm = layout.perm or tuple(range(x.ndim))
    out = _empty(math.prod(layout.shape), dtype, x)
    _gather(x, [x.shape[a] for a in perm], [x.strides[a] for a in perm], out,
            lambda a: a.transpose(perm))
    return out.reshape(layout.canonical_shape)


def restore(y, layout, dtype):
    """Inverse of :func:`canonical`: back to the input's shape (C-contiguous), in ``dtype``."""
    y = y.reshape(layout.moved_shape)
    if layout.perm is not None:
        inverse = np.argsort(layout.perm)
        # one pass that permutes and casts, except that bfloat16 converts in a pass of its own
        moved = y.dtype if _is_bfloat16(dtype) or _is_bfloat16(y.dtype) else dtype
        out = _empty(math.prod(layout.shape), moved, y)
        _gather(y, [y.shape[a] for a in inverse], [y.strides[a] for a in inverse], out,
                lambda a: a.transpose(inverse))
        y = out.reshape(layout.shape)
    return y if y.dtype == dtype else _cast(y, dtype)


def _copy_launch(kernel, n, like):
    blocks = max(1, min(COPY_BLOCKS, -(-n // COPY_THREADS)))
    return kernel[blocks, COPY_THREADS, _stream(like)]


def _cast(x, dtype):
    """A C-contiguous ``x`` cast to ``dtype``; bfloat16 goes through float32 as integer views."""
    f32 = np.dtype(np.float32)
    if _is_bfloat16(x.dtype) and x.size:
        wide = _empty(x.shape, f32, x)
        _copy_launch(K.widen_bfloat16, x.size, x)(x.reshape(-1).view(np.uint16),
                                                  wide.reshape(-1).view(np.uint32))
        return wide if dtype == f32 else _cast(wide, dtype)
    if _is_bfloat16(dtype) and x.size:
        x = x if x.dtype == f32 else _cast(x, f32)
        out = _empty(x.shape, dtype, x)
        _copy_launch(K.narrow_bfloat16, x.size, x)(x.reshape(-1).view(np.uint32),
                                                   out.reshape(-1).view(np.uint16))
        return out
    out = _empty(x.shape, dtype, x)
    if x.size:
        _copy_launch(K.cast, x.size, x)(x.reshape(-1), out.reshape(-1))
    return out


def astype(x, dtype):
    """``x`` in ``dtype`` (``x`` itself when it already is)."""
    return x if x.dtype == np.dtype(dtype) else _cast(x, np.dtype(dtype))


def copy(x, like=None):
    """A new array of ``x``'s values, queued on ``like``'s stream when given (a weight's copy
    for a call on another stream is ordered with that call's kernels), else on ``x``'s."""
    like = x if like is None else like
    out = _empty(x.shape, x.dtype, like)
    if x.size:
        out.copy_to_device(x, stream=_stream(like))
    return out


def empty(shape, dtype, like=None):
    return _empty(shape, dtype, like)


def add_scaled(out, delta, alpha):
    """In place ``out += alpha * delta`` for flat device arrays of one size."""
    _vector_launch(K.add_scaled, out.size, out)(out.reshape(-1), delta.reshape(-1), alpha)


# ------------------------------------------------------------------------------------------------
# statistics


def _rows_split(length, other_blocks):
    """(units, rows per unit) for a group of ``length`` rows: about TARGET_BLOCKS blocks."""
    units = max(1, min(-(-TARGET_BLOCKS // max(other_blocks, 1)), -(-length // K.TY)))
    span = -(-length // units)
    span = -(-span // K.TY) * K.TY
    return max(1, -(-length // span)), span


def moments(x, rows_per_sample, groups):
    """Mean and biased variance per (group, feature), float64 ``(groups, C)``."""
    C = x.shape[1]
    count = x.size // max(C, 1) // max(groups, 1)
    if count == 0 or x.shape[0] == 0:
        nan = np.full((groups, C), np.nan)
        return to_device(nan, x), to_device(nan, x)
    ctiles = -(-C // K.TX)
    if x.ndim == 2:
        units, span = _rows_split(x.shape[0] // groups, ctiles * groups)
        p_n, p_mean, p_m2 = (_empty((groups * units, C), np.float64, x) for _ in range(3))
        K.unit_moments_rows[(ctiles, units, groups), (K.TX, K.TY), _stream(x)](
            x, rows_per_sample, groups, span, p_n, p_mean, p_m2)
    else:
        p_n, p_mean, p_m2 = _planes_partials(K.unit_moments_planes, x, rows_per_sample, groups)
    mean, var = _merged_moments(p_n, p_mean, p_m2, groups, x)
    x3 = x.reshape(x.shape + (1,)) if x.ndim == 2 else x     # rows as planes of one value
    _vector_launch(K.nan_means_as_sums, groups * C, x)(x3, rows_per_sample, mean)
    return mean, var


def _planes_partials(kernel, x, *args):
    """Launch a planes statistics ``kernel(x, *args, chunk, p_n, p_mean, p_m2)`` with one unit
    per chunk of a plane; returns the three ``(R * chunks, C)`` partials."""
    R, C, I = x.shape
    chunk = min(I, CHUNK)
    chunks = -(-I // chunk)
    partials = tuple(_empty((R * chunks, C), np.float64, x) for _ in range(3))
    kernel[(chunks, min(R * C, MAX_GRID_Y)), K.T, _stream(x)](x, *args, chunk, *partials)
    return partials


def _merged_moments(p_n, p_mean, p_m2, groups, x):
    """Mean and biased variance ``(groups, C)`` from partials ordered group by group."""
    C = p_n.shape[1]
    mean = _empty((groups, C), np.float64, x)
    var = _empty((groups, C), np.float64, x)
    K.merge_moments[(-(-C // K.TX), groups), (K.TX, K.TY), _stream(x)](p_n, p_mean, p_m2,
                                                                        mean, var)
    return mean, var


def group_average(mean, var):
    """Per-feature average of the group statistics ``(G, C)`` -> two ``(C,)`` vectors."""
    G, C = mean.shape
    if G == 1:
        return mean[0], var[0]
    if G == 0:                               # no groups (an empty synchronized batch)
        nan = np.full(C, np.nan)
        return to_device(nan, mean), to_device(nan, mean)
    batch_mean = _empty(C, np.float64, mean)
    batch_var = _empty(C, np.float64, mean)
    _vector_launch(K.group_average, C, mean)(mean, var, batch_mean, batch_var)
    return batch_mean, batch_var


# ------------------------------------------------------------------------------------------------
# normalization


def forward_coefficients(x, mean, var, epsilon, affine):
    """``(inv_std, m_hi, a, b)``, ``(groups, C)``, of ``y = (x - m_hi) * a + b`` (see the CPU
    engine)."""
    G, C = mean.shape
    inv_std = _empty((G, C), np.float64, x)
    m_hi, a, b = (_empty((G, C), _arith(x.dtype), x) for _ in range(3))
    _vector_launch(K.affine_coefficients, G * C, x)(mean, var, epsilon, affine.gamma,
                                                    affine.beta, affine.scale, affine.shift,
                                                    inv_std, m_hi, a, b)
    return inv_std, m_hi, a, b


def _deliver(y, dtype):
    return y if dtype is None else astype(y, dtype)


def _elementwise_grid(x):
    if x.ndim == 2:
        R, C = x.shape
        return (-(-C // K.TX), max(1, min(-(-R // K.TY), MAX_ROW_BLOCKS))), (K.TX, K.TY)
    R, C, I = x.shape
    return (max(1, min(-(-I // K.T), 64)), max(1, min(R * C, MAX_GRID_Y))), K.T


def affine(x, rows_per_sample, groups, m, a, b, out=None, dtype=None):
    """``(x - m) * a + b`` per (group, feature) into ``out`` or a new array of ``dtype``."""
    out = _result(x, dtype, m.dtype) if out is None else out
    if x.size:
        grid, block = _elementwise_grid(x)
        kernel = K.affine_rows if x.ndim == 2 else K.affine_planes
        kernel[grid, block, _stream(x)](x, rows_per_sample, groups, m, a, b, out)
    return _deliver(out, dtype)


# A GPU runs small inputs as fast as it launches kernels; there is no fused version of them.


def train_small(x, epsilon, affine, out=None, dtype=None):
    """None: the caller runs the separate kernels."""
    return None


def infer_small(x, mean, var, epsilon, affine, out=None, dtype=None):
    """None: the caller runs the separate kernels."""
    return None


def backward_small(x, dy, mean, m_hi, inv_std, count, training, affine, out=None, dtype=None):
    """None: the caller runs the separate kernels."""
    return None


def grad_sums(x, dy, rows_per_sample, groups, m_hi):
    """``sum(dy)`` and ``sum(dy * (x - m_hi))`` per (group, feature), float64 ``(groups, C)``."""
    C = x.shape[1]
    if x.size == 0:
        zeros = np.zeros((groups, C))
        return to_device(zeros, x), to_device(zeros, x)
    sum_dy = _empty((groups, C), np.float64, x)
    sum_dyxc = _empty((groups, C), np.float64, x)
    ctiles = -(-C // K.TX)
    if x.ndim == 2:
        units, span = _rows_split(x.shape[0] // groups, ctiles * groups)
        p_dy, p_dyxc = (_empty((groups * units, C), np.float64, x) for _ in range(2))
        K.unit_grad_sums_rows[(ctiles, units, groups), (K.TX, K.TY), _stream(x)](
            x, dy, rows_per_sample, groups, span, m_hi, p_dy, p_dyxc)
    else:
        R, _, I = x.shape
        chunk = max(1, min(I, CHUNK))
        chunks = -(-I // chunk) if I else 0
        p_dy, p_dyxc = (_empty((R * chunks, C), np.float64, x) for _ in range(2))
        if chunks and R * C:
            K.unit_grad_sums_planes[(chunks, min(R * C, MAX_GRID_Y)), K.T, _stream(x)](
                x, dy, rows_per_sample, groups, chunk, m_hi, p_dy, p_dyxc)
    K.merge_sums[(ctiles, groups), (K.TX, K.TY), _stream(x)](p_dy, p_dyxc, sum_dy, sum_dyxc)
    return sum_dy, sum_dyxc


def gradient_coefficients(x, sum_dy, sum_dyxc, mean, m_hi, inv_std, count, training, affine):
    """``(dy_mean, k_dy, k_xc, k_0, dgamma, dbeta)`` from the sums of :func:`grad_sums` (see
    the CPU engine)."""
    G, C = mean.shape
    dy_mean, k_dy, k_xc, k_0 = (_empty((G, C), _arith(x.dtype), x) for _ in range(4))
    dgamma = _empty(C, np.float64, x)
    dbeta = _empty(C, np.float64, x)
    _vector_launch(K.grad_coefficients, C, x)(sum_dy, sum_dyxc, mean, m_hi, inv_std,
                                              float(count), training, affine.gamma,
                                              affine.scale, affine.shift, dy_mean, k_dy, k_xc,
                                              k_0, dgamma, dbeta)
    return dy_mean, k_dy, k_xc, k_0, dgamma, dbeta


def grad_input(x, dy, rows_per_sample, groups, weights, m_hi, dy_mean, k_dy, k_xc, k_0,
               out=None, dtype=None):
    """``dx = k_dy * (dy - dy_mean) + k_xc * (x - m_hi) + k_0`` into ``out`` or a new array of
    ``dtype``; ``weights``: the mask of a masked training call."""
    dx = _result(x, dtype, _arith(x.dtype)) if out is None else out
    if x.size == 0:
        return _deliver(dx, dtype)
    grid, block = _elementwise_grid(x)
    if weights is not None:
        kernel = K.masked_grad_input_rows if x.ndim == 2 else K.masked_grad_input_planes
        kernel[grid, block, _stream(x)](x, dy, weights, m_hi, dy_mean, k_dy, k_xc, k_0, dx)
    else:
        kernel = K.grad_input_rows if x.ndim == 2 else K.grad_input_planes
        kernel[grid, block, _stream(x)](x, dy, rows_per_sample, groups, m_hi, dy_mean, k_dy,
                                        k_xc, k_0, dx)
    return _deliver(dx, dtype)


# ------------------------------------------------------------------------------------------------
# moving statistics and renorm


def moving_averages(first, first_stat, second, second_stat, decay, second_scale=1.0):
    """In place ``moving -= (moving - stat) * decay`` for two weights of one dtype; the second
    statistic is multiplied by ``second_scale`` first (the fused path's Bessel correction)."""
    dtype = first.dtype
    decay = dtype.type(decay)
    rounded = _empty(max(first.size, second.size), dtype, first)
    for moving, stat, scale in ((first, first_stat, 1.0), (second, second_stat, second_scale)):
        if moving.size:
            _vector_launch(K.moving_averages, moving.size, moving)(
                moving.reshape(-1), stat.reshape(-1), float(scale), rounded, decay)


def renorm_correction(mean, var, renorm_mean, renorm_stddev, epsilon, rmin, rmax, dmax):
    """Batch renormalization's ``(r, d)``, float64 ``(C,)``; ``None`` bounds do not clip."""
    C = mean.shape[0]
    r = _empty(C, np.float64, mean)
    d = _empty(C, np.float64, mean)
    inf = math.inf
    _vector_launch(K.renorm_correction, C, mean)(
        mean, var, renorm_mean.reshape(-1), renorm_stddev.reshape(-1), float(epsilon),
        -inf if rmin is None else float(rmin), inf if rmax is None else float(rmax),
        inf if dmax is None else float(dmax), r, d)
    return r, d


def stddev(var, epsilon):
    out = _empty(var.shape, np.float64, var)
    _vector_launch(K.stddev, var.size, var)(var, float(epsilon), out)
    return out


def variance_from_stddev(variance, stddev_, epsilon):
    """In place ``variance = max(stddev^2 - epsilon, 0)`` in the weights' dtype."""
    _vector_launch(K.variance_from_stddev, variance.size, variance)(
        stddev_.reshape(-1), variance.dtype.type(epsilon), variance.reshape(-1))


def assign(out, values):
    """In place ``out[...] = values`` (same number of elements, cast to ``out``'s dtype)."""
    if out.size:
        _copy_launch(K.cast, out.size, out)(values.reshape(-1), out.reshape(-1))


def as_vector(a):
    """A weight as a flat vector for the kernels (they convert each value to float64)."""
    return a if a.ndim == 1 else a.reshape(-1)


# ------------------------------------------------------------------------------------------------
# across processes (synchronized batch norm): gathered per-rank rows, combined in rank order


def stack(arrays):
    """Device arrays of one size as the rows of a new float64 ``(k, n)`` device array."""
    n = arrays[0].size
    out = _empty((len(arrays), n), np.float64, arrays[0])
    for i, a in enumerate(arrays):
        if n:
            _copy_launch(K.cast, n, a)(a.reshape(-1), out[i])
    return out


def combine_moments(gathered):
    """Chan-merge per-rank ``(count, mean, M2)`` rows, ``gathered[P, 3, C]``, in rank order.

    Returns ``(mean (1, C), biased variance (1, C), total count)``. The total is read back to
    the host (the caller needs it as a number), which waits for the device.
    """
    P, _, C = gathered.shape
    mean = _empty((1, C), np.float64, gathered)
    var = _empty((1, C), np.float64, gathered)
    _vector_launch(K.combine_ranks, C, gathered)(gathered, mean, var)
    counts = to_host(gathered[:, 0, 0]) if C else np.zeros(P)
    return mean, var, int(counts.sum())


def sum_over_ranks(gathered):
    """``gathered[P, k, n]`` summed over ranks in rank order: ``(k, n)``."""
    P, k, n = gathered.shape
    out = _empty((k, n), np.float64, gathered)
    if k * n:
        _vector_launch(K.sum_ranks, k * n, gathered)(gathered.reshape(P, k * n),
                                                      out.reshape(-1))
    return out


def weighted_average(gathered):
    """Rows ``gathered[P, 1 + k, n]`` of (weight, k values): ``sum(w * v) / sum(w)`` over ranks
    in rank order, ``(k, n)``; ranks of weight 0 are skipped."""
    P, rows, n = gathered.shape
    out = _empty((rows - 1, n), np.float64, gathered)
    if out.size:
        _vector_launch(K.weighted_average, out.size, gathered)(gathered, out)
    return out


# ------------------------------------------------------------------------------------------------
# masks


def mask_weights(mask, layout):
    """A device mask (see :meth:`Layout.mask_dims`) as contiguous canonical weights ``w[R]``
    (rows) or ``w[R, I]`` (planes), true where it is nonzero: one gather pass."""
    shape = layout.mask_shape
    dims, strides = layout.mask_dims(mask.shape, mask.strides)
    perm = layout.perm or tuple(range(len(shape)))
    out = _empty(math.prod(shape), np.bool_, mask)
    if out.size:
        _gather(mask, [shape[a] for a in perm], [strides[a] for a in perm], out,
                lambda a: np.broadcast_to(a.reshape(dims), shape).transpose(perm) != 0)
    return out.reshape(layout.weights_shape)


def masked_moments(x, w):
    """Mean and biased variance ``(1, C)`` of the positions where ``w`` is true, and their
    number. The number is read back to the host (it scales the backward pass), which waits for
    the device."""
    C = x.shape[1]
    count = int(to_host(w).sum()) if w.size else 0
    if count == 0 or C == 0:
        nan = np.full((1, C), np.nan)
        return to_device(nan, x), to_device(nan, x), 0
    ctiles = -(-C // K.TX)
    if x.ndim == 2:
        units, span = _rows_split(x.shape[0], ctiles)
        p_n, p_mean, p_m2 = (_empty((units, C), np.float64, x) for _ in range(3))
        K.masked_unit_moments_rows[(ctiles, units), (K.TX, K.TY), _stream(x)](
            x, w, span, p_n, p_mean, p_m2)
    else:
        p_n, p_mean, p_m2 = _planes_partials(K.masked_unit_moments_planes, x, w)
    mean, var = _merged_moments(p_n, p_mean, p_m2, 1, x)
    if x.ndim == 2:                      # rows as planes of one value
        x, w = x.reshape(x.shape + (1,)), w.reshape(w.shape + (1,))
    _vector_launch(K.masked_nan_means_as_sums, C, x)(x, w, mean)
    return mean, var, count

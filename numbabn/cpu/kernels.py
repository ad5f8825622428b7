"""Numba CPU kernels for batch normalization.

Every kernel works on one of two canonical views of the input (see ``numbabn/_layout.py``):

    rows   x[R, C]      channels last (NC, NHWC, NDHWC): one row holds every feature
    planes x[R, C, I]   channels first (NCHW, ...): each (row, feature) owns I contiguous values

``R`` rows are ``N`` samples of ``P`` consecutive rows each; sample ``n`` belongs to ghost group
``n % G`` (``G == 1`` without ghost batching, and then ``N == 1``, ``P == R``). Per-group results
have shape ``(G, C)``.

Reductions are split into fixed work units (a block of rows of one sample, or a chunk of one
plane), each unit writes its own row of a partials buffer, and a second kernel merges the units
of each group in a fixed order. The blocking depends on the shape only, so the result is bitwise
the same whatever the thread count, and no two threads ever write the same accumulator.

Statistics accumulate in float64 with a per-unit shift (the unit's first value), so that
``sum(d^2) - sum(d)^2 / n`` does not cancel when |mean| >> std; units are merged with Chan's
pairwise formula for (count, mean, M2).

Half-precision data is read and written in place, as 16-bit integer views, because Numba's CPU
target has no float16 or bfloat16 type: **float16 arrives as uint16, bfloat16 as int16**. Kernels
read every input value through :func:`widen` (float16/bfloat16 bits -> float32; other floats pass
through) and write every output through :func:`narrow` (float32 -> the output's 16-bit format,
rounded to nearest even as NumPy and ml_dtypes round). Both are resolved at compile time from the
array types, so float32/float64 kernels compile to exactly what they were without them.

Kernels take arrays and scalars only: no type checks, no allocation policy (the caller owns every
output and scratch buffer), no validation.
"""
import math
from types import FunctionType

import numpy as np
from llvmlite import ir
from numba import float64, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# Vectorizing a float reduction needs reassociation; nnan/ninf stay off so NaN propagates.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
# IEEE division (x / 0 is inf or NaN, as in TensorFlow), never a ZeroDivisionError from a kernel
_PAR = dict(parallel=True, cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
_SEQ = dict(cache=True, nogil=True, error_model="numpy")


def _parallel_and_serial(fn):
    """Compile ``fn`` with ``prange`` parallel, and attach a serial twin as ``.serial``.

    Waking the thread pool costs microseconds that small inputs cannot repay, so the engine runs
    those serially. The twin gets its own qualified name so that the two compilations never share
    an on-disk cache entry (Numba keys cache files by qualified name, not by flags).
    """
    parallel = njit(**_PAR)(fn)
    twin = FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                        fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    twin.__doc__ = fn.__doc__
    parallel.serial = njit(**dict(_SEQ, fastmath=_FASTMATH))(twin)
    return parallel


# ------------------------------------------------------------------------------------------------
# half precision: 16-bit storage, float32 arithmetic
#
# The conversions are LLVM IR so that they stay 32-bit integer operations (Numba would widen
# integer arithmetic to 64 bits) and vectorize. Where the target has F16C, float16 conversions are
# LLVM's own fpext/fptrunc (one instruction per 8 or 16 values); elsewhere a bit-exact integer
# version runs. Which one is decided when a kernel is compiled, from the target's features, which
# are part of Numba's cache key, so a cached kernel never runs on a machine it was not built for.

_I16, _I32, _F32 = ir.IntType(16), ir.IntType(32), ir.FloatType()


def _has_f16c(context):
    return "+f16c" in getattr(context.codegen(), "_tm_features", "")


def _f16_bits_to_f32_ir(builder, bits):
    """Exact float16 -> float32 with integer operations: move exponent and mantissa into float32
    position and rebias by multiplying by 2**112 (right for subnormals too); infinities and NaNs
    (exponent all ones) get an all-ones float32 exponent instead."""
    h = builder.zext(bits, _I32)
    sign = builder.shl(builder.and_(h, ir.Constant(_I32, 0x8000)), ir.Constant(_I32, 16))
    em = builder.shl(builder.and_(h, ir.Constant(_I32, 0x7FFF)), ir.Constant(_I32, 13))
    finite = builder.fmul(builder.bitcast(em, _F32), ir.Constant(_F32, 2.0 ** 112))
    special = builder.bitcast(builder.or_(em, ir.Constant(_I32, 0x7F800000)), _F32)
    is_special = builder.icmp_unsigned(
        "==", builder.and_(h, ir.Constant(_I32, 0x7C00)), ir.Constant(_I32, 0x7C00))
    magnitude = builder.bitcast(builder.select(is_special, special, finite), _I32)
    return builder.bitcast(builder.or_(magnitude, sign), _F32)


def _f32_to_f16_bits_ir(builder, value):
    """float32 -> float16 bits, rounded to nearest even, with integer operations.

    Normal results: rebias the exponent and round the 13 dropped mantissa bits (adding 0xFFF
    plus the lowest kept bit rounds half to even; a carry into the exponent is right, up to
    infinity at 65520). Subnormal results: adding 0.5 lets the float32 adder do the shift and the
    rounding. NaNs stay NaNs (quiet, top of the payload kept).
    """
    def c(v):
        return ir.Constant(_I32, v)
    b = builder.bitcast(value, _I32)
    sign = builder.and_(builder.lshr(b, c(16)), c(0x8000))
    a = builder.and_(b, c(0x7FFFFFFF))
    odd = builder.and_(builder.lshr(a, c(13)), c(1))
    normal = builder.lshr(builder.add(builder.add(a, c(0xC8000FFF)), odd), c(13))
    shifted = builder.fadd(builder.bitcast(a, _F32), ir.Constant(_F32, 0.5))
    tiny = builder.sub(builder.bitcast(shifted, _I32), c(0x3F000000))
    h = builder.select(builder.icmp_unsigned("<", a, c(0x38800000)), tiny, normal)
    h = builder.select(builder.icmp_unsigned(">=", a, c(0x477FF000)), c(0x7C00), h)
    nan = builder.or_(builder.and_(builder.lshr(a, c(13)), c(0x1FF)), c(0x7E00))
    h = builder.select(builder.icmp_unsigned(">", a, c(0x7F800000)), nan, h)
    return builder.trunc(builder.or_(h, sign), _I16)


@intrinsic
def f16_to_f32(typingctx, bits):
    """float16 bits (uint16) -> float32, exact."""
    def codegen(context, builder, signature, args):
        if _has_f16c(context):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), _F32)
        return _f16_bits_to_f32_ir(builder, args[0])
    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_f16(typingctx, value):
    """float32 -> float16 bits (uint16), rounded to nearest even."""
    def codegen(context, builder, signature, args):
        if _has_f16c(context):
            return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), _I16)
        return _f32_to_f16_bits_ir(builder, args[0])
    return types.uint16(types.float32), codegen


@intrinsic
def f16_to_f32_portable(typingctx, bits):
    """:func:`f16_to_f32` without F16C (for testing the integer version on any machine)."""
    def codegen(context, builder, signature, args):
        return _f16_bits_to_f32_ir(builder, args[0])
    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_f16_portable(typingctx, value):
    """:func:`f32_to_f16` without F16C."""
    def codegen(context, builder, signature, args):
        return _f32_to_f16_bits_ir(builder, args[0])
    return types.uint16(types.float32), codegen


@intrinsic
def bf16_to_f32(typingctx, bits):
    """bfloat16 bits (int16) -> float32, exact: the upper half of a float32."""
    def codegen(context, builder, signature, args):
        widened = builder.shl(builder.zext(args[0], _I32), ir.Constant(_I32, 16))
        return builder.bitcast(widened, _F32)
    return types.float32(types.int16), codegen


@intrinsic
def f32_to_bf16(typingctx, value):
    """float32 -> bfloat16 bits (int16), rounded to nearest even; NaNs stay (quiet) NaNs.

    Integer operations everywhere: the hardware conversion (AVX512-BF16) flushes subnormals,
    which ml_dtypes does not.
    """
    def codegen(context, builder, signature, args):
        def c(v):
            return ir.Constant(_I32, v)
        b = builder.bitcast(args[0], _I32)
        high = builder.lshr(b, c(16))
        rounded = builder.lshr(builder.add(builder.add(b, c(0x7FFF)), builder.and_(high, c(1))),
                               c(16))
        is_nan = builder.fcmp_unordered("uno", args[0], args[0])
        return builder.trunc(builder.select(is_nan, builder.or_(high, c(0x40)), rounded), _I16)
    return types.int16(types.float32), codegen


def widen(v):
    """A stored value as arithmetic: float16 (uint16) / bfloat16 (int16) bits -> float32."""


def narrow(v, out):
    """Arithmetic value ``v`` in the storage format of array ``out`` (for ``out[i] = ...``)."""


@overload(widen)
def _widen(v):
    if v == types.uint16:
        return lambda v: f16_to_f32(v)
    if v == types.int16:
        return lambda v: bf16_to_f32(v)
    if isinstance(v, types.Float):
        return lambda v: v
    return None


@overload(narrow)
def _narrow(v, out):
    if out.dtype == types.uint16:
        return lambda v, out: f32_to_f16(np.float32(v))
    if out.dtype == types.int16:
        return lambda v, out: f32_to_bf16(np.float32(v))
    if isinstance(out.dtype, types.Float):
        return lambda v, out: v
    return None


@njit(inline="always")
def _plane_task(t, channels, chunks):
    """Task ``t`` of a planes kernel: row ``r``, feature ``c``, chunk ``k`` of that plane."""
    r = t // (channels * chunks)
    rem = t - r * channels * chunks
    c = rem // chunks
    return r, c, rem - c * chunks


# ------------------------------------------------------------------------------------------------
# moments: per-unit shifted sums, then a Chan merge per group


@intrinsic
def prefetch(typingctx, a, i, j):
    """Hint that ``a[i, j]`` (in bounds) will be read soon: LLVM's prefetch into every cache
    level. It changes no value, and compiles to nothing where the target has no such hint."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, args[1:],
                                           wraparound=False, boundscheck=False)
        byte_pointer = ir.IntType(8).as_pointer()
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer] + [_I32] * 3),
            "llvm.prefetch.p0i8")
        # read (0), keep in all levels (3), data cache (1)
        builder.call(hint, [builder.bitcast(pointer, byte_pointer), ir.Constant(_I32, 0),
                            ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()
    return types.void(a, types.intp, types.intp), codegen


# How far ahead a row loop asks for its input. The statistics loop computes enough per value
# (float64 differences, squares and sums) that the hardware prefetchers alone keep too few cache
# lines in flight for the memory to stay busy; asking 16 KB ahead doubled it on 128-float rows,
# and took the elementwise passes on those rows from 1.15x a copy to a copy's time.
PREFETCH_BYTES = 1 << 14


@njit(inline="always")
def _rows_ahead(x, ahead):
    """How many rows of ``x[R, C]`` make ``ahead`` bytes; 0 (no hints) for rows under 512 B,
    which were as fast or faster without them (one long stream the hardware prefetchers
    follow)."""
    row_bytes = x.shape[1] * x.itemsize
    return ahead // row_bytes if ahead and row_bytes >= 512 else 0


@njit(inline="always")
def _prefetch_rows(x, r, rows):
    """Hint every cache line of rows ``r .. r + rows - 1`` of ``x[R, C]`` (clamped to ``R``)."""
    R, C = x.shape
    line = max(1, 64 // x.itemsize)
    for q in range(min(r, R), min(r + rows, R)):
        for c in range(0, C, line):
            prefetch(x, q, c)


@njit(inline="always")
def _shifted_sums_rows(x, r0, count, shift, s1, s2, ahead):
    """Add ``x[r] - shift`` and its square, over rows ``r0 .. r0 + count``, into ``s1`` and
    ``s2`` (float64), asking for rows ``ahead`` bytes further on as it goes (0: no hints, for
    input already in the caches).

    Several rows share one read and write of the accumulators, as many as fit in about 2 KB
    (four 128-float rows, two 256-float rows, one 512-float row): with more, the row loop got
    slower, by 1.3x on 256-float rows.
    """
    C = x.shape[1]
    row_bytes = C * x.itemsize
    step = 4 if row_bytes <= 512 else 2 if row_bytes <= 1024 else 1
    rows_ahead = _rows_ahead(x, ahead)
    full = count - count % step if step > 1 else 0     # rows the unrolled loops take
    if step == 4:
        for j in range(r0, r0 + full, 4):
            if rows_ahead:
                _prefetch_rows(x, j + rows_ahead, 4)
            xa, xb, xc, xd = x[j], x[j + 1], x[j + 2], x[j + 3]
            for c in range(C):
                sh = shift[c]
                da = np.float64(widen(xa[c])) - sh
                db = np.float64(widen(xb[c])) - sh
                dc = np.float64(widen(xc[c])) - sh
                dd = np.float64(widen(xd[c])) - sh
                s1[c] += (da + db) + (dc + dd)
                s2[c] += (da * da + db * db) + (dc * dc + dd * dd)
    elif step == 2:
        for j in range(r0, r0 + full, 2):
            if rows_ahead:
                _prefetch_rows(x, j + rows_ahead, 2)
            xa, xb = x[j], x[j + 1]
            for c in range(C):
                sh = shift[c]
                da = np.float64(widen(xa[c])) - sh
                db = np.float64(widen(xb[c])) - sh
                s1[c] += da + db
                s2[c] += da * da + db * db
    for j in range(r0 + full, r0 + count):
        if rows_ahead:
            _prefetch_rows(x, j + rows_ahead, 1)
        xr = x[j]
        for c in range(C):
            d = np.float64(widen(xr[c])) - shift[c]
            s1[c] += d
            s2[c] += d * d


@_parallel_and_serial
def unit_moments_rows(x, rows_per_sample, block, u_mean, u_m2, shifts):
    """Per-unit mean and M2 of ``x[R, C]``; unit = up to ``block`` rows of one sample.

    ``shifts`` is ``(units, C)`` float64 scratch: the unit's first row, the shift its sums are
    taken around.
    """
    R, C = x.shape
    per_sample = (rows_per_sample + block - 1) // block
    units = (R // rows_per_sample) * per_sample
    for u in prange(units):
        n = u // per_sample
        r0 = n * rows_per_sample + (u - n * per_sample) * block
        count = min(block, (n + 1) * rows_per_sample - r0)
        s1 = u_mean[u]
        s2 = u_m2[u]
        shift = shifts[u]
        x0 = x[r0]
        for c in range(C):
            shift[c] = widen(x0[c])
        s1[:] = 0.0
        s2[:] = 0.0
        _shifted_sums_rows(x, r0, count, shift, s1, s2, PREFETCH_BYTES)
        inv_count = 1.0 / count
        for c in range(C):
            mean_d = s1[c] * inv_count
            s2[c] = s2[c] - s1[c] * mean_d
            s1[c] = shift[c] + mean_d


@_parallel_and_serial
def group_moments_rows(x, rows_per_sample, groups, mean, m2):
    """Mean and M2 of each ghost group of ``x[R, C]`` directly: for many small groups.

    Group ``g`` holds samples ``g, g + G, ...``; with few rows per group, per-unit partials would
    cost as much memory as the input, so each group is reduced whole by one thread.
    """
    R, C = x.shape
    samples_per_group = R // (rows_per_sample * groups)
    for g in prange(groups):
        s1 = mean[g]
        s2 = m2[g]
        s1[:] = 0.0
        s2[:] = 0.0
        shift = x[g * rows_per_sample]
        for v in range(samples_per_group):
            base = (v * groups + g) * rows_per_sample
            for p in range(rows_per_sample):
                xr = x[base + p]
                for c in range(C):
                    d = np.float64(widen(xr[c])) - np.float64(widen(shift[c]))
                    s1[c] += d
                    s2[c] += d * d
        inv_count = 1.0 / (samples_per_group * rows_per_sample)
        for c in range(C):
            mean_d = s1[c] * inv_count
            s2[c] = s2[c] - s1[c] * mean_d
            s1[c] = np.float64(widen(shift[c])) + mean_d


@_parallel_and_serial
def unit_moments_planes(x, chunk, u_mean, u_m2):
    """Per-unit mean and M2 of ``x[R, C, I]``; unit = up to ``chunk`` values of one plane.

    Partials are stored at ``[r * chunks + k, c]`` so that units of one sample stay adjacent.
    """
    R, C, I = x.shape
    chunks = (I + chunk - 1) // chunk
    for t in prange(R * C * chunks):
        r, c, k = _plane_task(t, C, chunks)
        n = min(chunk, I - k * chunk)
        v = x[r, c, k * chunk:k * chunk + n]
        shift = np.float64(widen(v[0]))
        s1 = 0.0
        s2 = 0.0
        for i in range(n):
            d = np.float64(widen(v[i])) - shift
            s1 += d
            s2 += d * d
        mean_d = s1 / n
        u_mean[r * chunks + k, c] = shift + mean_d
        u_m2[r * chunks + k, c] = s2 - s1 * mean_d


@_parallel_and_serial
def merge_moments(u_mean, u_m2, units_per_sample, parts, length, block, groups, mean, m2):
    """Chan-merge the units of each group in sample order: ``mean[G, C]``, ``m2[G, C]``.

    Unit ``u`` covers block ``u % parts`` of a run of ``length`` values cut into ``parts`` blocks
    of ``block`` (rows of a sample, or values of a plane), which gives its count.
    """
    U, C = u_mean.shape
    samples = U // units_per_sample
    for g in prange(groups):
        acc_mean = mean[g]
        acc_m2 = m2[g]
        acc_mean[:] = 0.0
        acc_m2[:] = 0.0
        n_a = 0.0
        for s in range(g, samples, groups):
            for u in range(s * units_per_sample, (s + 1) * units_per_sample):
                n_b = np.float64(min(block, length - (u % parts) * block))
                um = u_mean[u]
                u2 = u_m2[u]
                for c in range(C):
                    _, acc_mean[c], acc_m2[c] = chan_merge(n_a, acc_mean[c], acc_m2[c], n_b,
                                                           um[c], u2[c])
                n_a += n_b


# ------------------------------------------------------------------------------------------------
# masked statistics: only positions whose weight ``w`` is true count (one group)


@_parallel_and_serial
def masked_unit_moments_rows(x, w, block, u_n, u_mean, u_m2):
    """Per-unit count, mean and M2 of the rows of ``x[R, C]`` with ``w[r]`` true.

    Unit ``u`` covers rows ``[u * block, (u + 1) * block)``; its sums are shifted by its first
    counted row. A unit with no counted row has count 0 (and mean and M2 0).
    """
    R, C = x.shape
    for u in prange((R + block - 1) // block):
        r0 = u * block
        r1 = min(r0 + block, R)
        s1 = u_mean[u]
        s2 = u_m2[u]
        s1[:] = 0.0
        s2[:] = 0.0
        first = r0
        while first < r1 and not w[first]:
            first += 1
        n = 0
        if first < r1:
            shift = x[first]
            for r in range(first, r1):
                if w[r]:
                    n += 1
                    xr = x[r]
                    for c in range(C):
                        d = np.float64(widen(xr[c])) - np.float64(widen(shift[c]))
                        s1[c] += d
                        s2[c] += d * d
            for c in range(C):
                mean_d = s1[c] / n
                s2[c] = s2[c] - s1[c] * mean_d
                s1[c] = np.float64(widen(shift[c])) + mean_d
        u_n[u] = n


@_parallel_and_serial
def masked_unit_moments_planes(x, w, chunk, u_n, u_mean, u_m2):
    """Per-unit count, mean and M2 of ``x[R, C, I]`` where ``w[r, i]`` is true; unit = up to
    ``chunk`` values of one plane, stored at ``[r * chunks + k, c]`` (counts at ``[r * chunks +
    k]``: the weights do not depend on the feature)."""
    R, C, I = x.shape
    chunks = (I + chunk - 1) // chunk
    for t in prange(R * C * chunks):
        r, c, k = _plane_task(t, C, chunks)
        i0 = k * chunk
        i1 = min(i0 + chunk, I)
        wr = w[r]
        v = x[r, c]
        first = i0
        while first < i1 and not wr[first]:
            first += 1
        n = 0
        unit_mean = 0.0
        unit_m2 = 0.0
        if first < i1:
            shift = np.float64(widen(v[first]))
            s1 = 0.0
            s2 = 0.0
            for i in range(first, i1):
                if wr[i]:
                    n += 1
                    d = np.float64(widen(v[i])) - shift
                    s1 += d
                    s2 += d * d
            mean_d = s1 / n
            unit_mean = shift + mean_d
            unit_m2 = s2 - s1 * mean_d
        u_mean[r * chunks + k, c] = unit_mean
        u_m2[r * chunks + k, c] = unit_m2
        if c == 0:
            u_n[r * chunks + k] = n


@njit(**_SEQ)
def any_nan(a):
    """Whether the 2-d ``a`` holds a NaN (a compiled loop: cheaper than NumPy on small arrays)."""
    for v in a.ravel():
        if v != v:
            return True
    return False


@njit(**_SEQ)
def merge_counted_moments(u_n, u_mean, u_m2, mean, m2):
    """Chan-merge units of unequal counts in unit order into ``mean[0]``, ``m2[0]`` (M2, not yet
    divided by the count); returns the total count."""
    C = mean.shape[1]
    mean[0, :] = 0.0
    m2[0, :] = 0.0
    n_a = 0.0
    for u in range(u_n.shape[0]):
        n_b = np.float64(u_n[u])
        if n_b == 0.0:
            continue
        for c in range(C):
            _, mean[0, c], m2[0, c] = chan_merge(n_a, mean[0, c], m2[0, c], n_b, u_mean[u, c],
                                                 u_m2[u, c])
        n_a += n_b
    return n_a


@_parallel_and_serial
def masked_grad_input_rows(x, dy, w, block, m, dy_mean, k_dy, k_xc, k_0, dx):
    """``dx`` where rows with ``w[r]`` false took no part in the statistics: there only the
    direct term ``k_dy * dy`` remains."""
    R, C = x.shape
    mg, gm, c1, c2, c3 = m[0], dy_mean[0], k_dy[0], k_xc[0], k_0[0]
    for t in prange((R + block - 1) // block):
        for r in range(t * block, min((t + 1) * block, R)):
            xr, gr, dr = x[r], dy[r], dx[r]
            if w[r]:
                for c in range(C):
                    dr[c] = narrow(c1[c] * (widen(gr[c]) - gm[c]) + c2[c] * (widen(xr[c]) - mg[c])
                                   + c3[c], dr)
            else:
                for c in range(C):
                    dr[c] = narrow(c1[c] * widen(gr[c]), dr)


@_parallel_and_serial
def masked_grad_input_planes(x, dy, w, m, dy_mean, k_dy, k_xc, k_0, dx):
    """:func:`masked_grad_input_rows` on planes, weights ``w[r, i]``."""
    R, C, I = x.shape
    for t in prange(R * C):
        r = t // C
        c = t - r * C
        wr, xv, gv, dv = w[r], x[r, c], dy[r, c], dx[r, c]
        mc, gm, c1, c2, c3 = m[0, c], dy_mean[0, c], k_dy[0, c], k_xc[0, c], k_0[0, c]
        for i in range(I):
            if wr[i]:
                dv[i] = narrow(c1 * (widen(gv[i]) - gm) + c2 * (widen(xv[i]) - mc) + c3, dv)
            else:
                dv[i] = narrow(c1 * widen(gv[i]), dv)


# ------------------------------------------------------------------------------------------------
# elementwise: y = (x - m) * a + b, per (group, feature)


@_parallel_and_serial
def affine_rows(x, rows_per_sample, groups, block, m, a, b, y):
    """``y[r, c] = (x[r, c] - m[g, c]) * a[g, c] + b[g, c]`` with ``g`` the row's group."""
    R, C = x.shape
    rows_ahead = _rows_ahead(x, PREFETCH_BYTES)
    for t in prange((R + block - 1) // block):
        for r in range(t * block, min((t + 1) * block, R)):
            if rows_ahead:
                _prefetch_rows(x, r + rows_ahead, 1)
            g = (r // rows_per_sample) % groups
            xr, yr, mg, ag, bg = x[r], y[r], m[g], a[g], b[g]
            for c in range(C):
                yr[c] = narrow((widen(xr[c]) - mg[c]) * ag[c] + bg[c], yr)


@_parallel_and_serial
def affine_rows_by_group(x, rows_per_sample, groups, m, a, b, y):
    """``affine_rows`` visiting the rows group by group: with many small ghost groups the
    ``(G, C)`` coefficients outgrow the caches, and this way each row of them is read once."""
    R, C = x.shape
    samples_per_group = R // (rows_per_sample * groups)
    for g in prange(groups):
        mg, ag, bg = m[g], a[g], b[g]
        for v in range(samples_per_group):
            base = (v * groups + g) * rows_per_sample
            for p in range(rows_per_sample):
                xr, yr = x[base + p], y[base + p]
                for c in range(C):
                    yr[c] = narrow((widen(xr[c]) - mg[c]) * ag[c] + bg[c], yr)


@_parallel_and_serial
def affine_planes(x, rows_per_sample, groups, chunk, m, a, b, y):
    """``y[r, c, i] = (x[r, c, i] - m[g, c]) * a[g, c] + b[g, c]`` with ``g`` the row's group."""
    R, C, I = x.shape
    chunks = (I + chunk - 1) // chunk
    for t in prange(R * C * chunks):
        r, c, k = _plane_task(t, C, chunks)
        g = (r // rows_per_sample) % groups
        mm = m[g, c]
        aa = a[g, c]
        bb = b[g, c]
        n = min(chunk, I - k * chunk)
        v = x[r, c, k * chunk:k * chunk + n]
        w = y[r, c, k * chunk:k * chunk + n]
        for i in range(n):
            w[i] = narrow((widen(v[i]) - mm) * aa + bb, w)


# ------------------------------------------------------------------------------------------------
# backward: per-unit sums of dy and dy * (x - mean), merged per group; then dx elementwise


@_parallel_and_serial
def unit_grad_sums_rows(x, dy, rows_per_sample, groups, block, m, u_dy, u_dyxc):
    """Per-unit ``sum(dy)`` and ``sum(dy * (x - m[g]))`` over row blocks of ``x[R, C]``.

    ``m`` is the mean rounded to ``x``'s dtype (``x - m`` is then exact near the mean); products
    and sums are float64.
    """
    R, C = x.shape
    per_sample = (rows_per_sample + block - 1) // block
    units = (R // rows_per_sample) * per_sample
    for u in prange(units):
        n = u // per_sample
        mg = m[n % groups]
        r0 = n * rows_per_sample + (u - n * per_sample) * block
        count = min(block, (n + 1) * rows_per_sample - r0)
        s1 = u_dy[u]
        s2 = u_dyxc[u]
        s1[:] = 0.0
        s2[:] = 0.0
        for j in range(count):
            xr = x[r0 + j]
            gr = dy[r0 + j]
            for c in range(C):
                g_ = np.float64(widen(gr[c]))
                s1[c] += g_
                s2[c] += g_ * np.float64(widen(xr[c]) - mg[c])


@_parallel_and_serial
def group_grad_sums_rows(x, dy, rows_per_sample, groups, m, sum_dy, sum_dyxc):
    """``sum(dy)`` and ``sum(dy * (x - m[g]))`` of each ghost group directly (see above)."""
    R, C = x.shape
    samples_per_group = R // (rows_per_sample * groups)
    for g in prange(groups):
        s1 = sum_dy[g]
        s2 = sum_dyxc[g]
        mg = m[g]
        s1[:] = 0.0
        s2[:] = 0.0
        for v in range(samples_per_group):
            base = (v * groups + g) * rows_per_sample
            for p in range(rows_per_sample):
                xr = x[base + p]
                gr = dy[base + p]
                for c in range(C):
                    g_ = np.float64(widen(gr[c]))
                    s1[c] += g_
                    s2[c] += g_ * np.float64(widen(xr[c]) - mg[c])


@_parallel_and_serial
def unit_grad_sums_planes(x, dy, rows_per_sample, groups, chunk, m, u_dy, u_dyxc):
    """Per-unit ``sum(dy)`` and ``sum(dy * (x - m[g]))`` over plane chunks of ``x[R, C, I]``."""
    R, C, I = x.shape
    chunks = (I + chunk - 1) // chunk
    for t in prange(R * C * chunks):
        r, c, k = _plane_task(t, C, chunks)
        mm = m[(r // rows_per_sample) % groups, c]
        n = min(chunk, I - k * chunk)
        v = x[r, c, k * chunk:k * chunk + n]
        dv = dy[r, c, k * chunk:k * chunk + n]
        s1 = 0.0
        s2 = 0.0
        for i in range(n):
            g_ = np.float64(widen(dv[i]))
            s1 += g_
            s2 += g_ * np.float64(widen(v[i]) - mm)
        u_dy[r * chunks + k, c] = s1
        u_dyxc[r * chunks + k, c] = s2


@_parallel_and_serial
def merge_sums(u_a, u_b, units_per_sample, groups, a, b):
    """Sum the units of each group in sample order: ``a[G, C]``, ``b[G, C]``."""
    U, C = u_a.shape
    samples = U // units_per_sample
    for g in prange(groups):
        acc_a = a[g]
        acc_b = b[g]
        acc_a[:] = 0.0
        acc_b[:] = 0.0
        for s in range(g, samples, groups):
            for u in range(s * units_per_sample, (s + 1) * units_per_sample):
                for c in range(C):
                    acc_a[c] += u_a[u, c]
                    acc_b[c] += u_b[u, c]


@_parallel_and_serial
def grad_input_rows(x, dy, rows_per_sample, groups, block, m, dy_mean, k_dy, k_xc, k_0, dx):
    """``dx = k_dy * (dy - dy_mean) + k_xc * (x - m) + k_0``, per (group, feature).

    Centring ``dy`` before scaling makes ``dx`` exactly zero where a feature has one value.
    """
    R, C = x.shape
    rows_ahead = _rows_ahead(x, PREFETCH_BYTES)
    for t in prange((R + block - 1) // block):
        for r in range(t * block, min((t + 1) * block, R)):
            if rows_ahead:
                _prefetch_rows(x, r + rows_ahead, 1)
                _prefetch_rows(dy, r + rows_ahead, 1)
            g = (r // rows_per_sample) % groups
            xr, gr, dr, mg, gm = x[r], dy[r], dx[r], m[g], dy_mean[g]
            c1, c2, c3 = k_dy[g], k_xc[g], k_0[g]
            for c in range(C):
                dr[c] = narrow(c1[c] * (widen(gr[c]) - gm[c]) + c2[c] * (widen(xr[c]) - mg[c])
                               + c3[c], dr)


@_parallel_and_serial
def grad_input_rows_by_group(x, dy, rows_per_sample, groups, m, dy_mean, k_dy, k_xc, k_0, dx):
    """``grad_input_rows`` visiting the rows group by group (see ``affine_rows_by_group``)."""
    R, C = x.shape
    samples_per_group = R // (rows_per_sample * groups)
    for g in prange(groups):
        mg, gm, c1, c2, c3 = m[g], dy_mean[g], k_dy[g], k_xc[g], k_0[g]
        for v in range(samples_per_group):
            base = (v * groups + g) * rows_per_sample
            for p in range(rows_per_sample):
                xr, gr, dr = x[base + p], dy[base + p], dx[base + p]
                for c in range(C):
                    dr[c] = narrow(c1[c] * (widen(gr[c]) - gm[c]) + c2[c] * (widen(xr[c]) - mg[c])
                                   + c3[c], dr)


@_parallel_and_serial
def grad_input_planes(x, dy, rows_per_sample, groups, chunk, m, dy_mean, k_dy, k_xc, k_0, dx):
    """``dx = k_dy * (dy - dy_mean) + k_xc * (x - m) + k_0`` on planes, per (group, feature)."""
    R, C, I = x.shape
    chunks = (I + chunk - 1) // chunk
    for t in prange(R * C * chunks):
        r, c, k = _plane_task(t, C, chunks)
        g = (r // rows_per_sample) % groups
        mm = m[g, c]
        gm = dy_mean[g, c]
        c1 = k_dy[g, c]
        c2 = k_xc[g, c]
        c3 = k_0[g, c]
        n = min(chunk, I - k * chunk)
        v = x[r, c, k * chunk:k * chunk + n]
        dv = dy[r, c, k * chunk:k * chunk + n]
        w = dx[r, c, k * chunk:k * chunk + n]
        for i in range(n):
            w[i] = narrow(c1 * (widen(dv[i]) - gm) + c2 * (widen(v[i]) - mm) + c3, w)


# ------------------------------------------------------------------------------------------------
# per-feature formulas, written once: compiled here for the CPU and, from the same Python
# functions (``.py_func``), as device functions of the CUDA kernels. They use ``math`` and
# ``float64()`` only, and compare with ``<``/``>`` so that a NaN propagates on both targets (and
# divide float64 values, so the CUDA simulator gives IEEE infinities rather than raising).


@njit(inline="always", error_model="numpy")
def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan's merge of two (count, mean, M2) triples; an empty side leaves the other as it is."""
    n = n_a + n_b
    if n_b == 0.0:
        return n_a, mean_a, m2_a
    if n_a == 0.0:
        return n_b, mean_b, m2_b
    delta = mean_b - mean_a
    w = n_b / n
    return n, mean_a + delta * w, m2_a + m2_b + delta * delta * (n_a * w)


@njit(inline="always", error_model="numpy")
def forward_coefficients(mean, var, epsilon, gamma, beta, scale, shift, m_hi):
    """``(inv_std, a, b)`` of ``y = (x - m_hi) * a + b`` for one (group, feature).

    ``y = gamma * (scale * xhat + shift) + beta`` with ``xhat = (x - mean) * inv_std``. ``m_hi``
    is the mean rounded to ``x``'s dtype; the remainder ``mean - m_hi`` moves into ``b``, so
    ``x - m_hi`` is exact for x near the mean and the output keeps float64 accuracy in the
    centring.
    """
    inv = 1.0 / float64(math.sqrt(var + epsilon))
    k = float64(gamma) * scale * inv
    return inv, k, float64(gamma) * shift + float64(beta) - (mean - m_hi) * k


@njit(inline="always", error_model="numpy")
def gradient_coefficients(sum_dy, sum_dyxc, mean, m_hi, inv, count, training, gamma, scale,
                          shift):
    """``(dy_mean, k_dy, k_xc, k_0, dgamma)`` of one (group, feature).

    ``dx = k_dy * (dy - dy_mean) + k_xc * (x - m_hi) + k_0``; ``sum_dyxc`` is
    ``sum(dy * (x - m_hi))``, corrected here for the rounding remainder of ``m_hi``. With
    ``k = gamma * scale * inv`` and ``n = count``, in training::

        dx     = k * (dy - sum_dy / n - xhat * sum(dy * xhat) / n)
        dgamma = scale * sum(dy * xhat) + shift * sum_dy

    and in inference (the statistics are constants, and there is no shift) ``dx = k * dy``,
    ``dgamma = scale * sum(dy * xhat)``.
    """
    lo = mean - m_hi
    s_dyxc = sum_dyxc - lo * sum_dy                  # sum(dy * (x - mean))
    k = float64(gamma) * scale * inv
    dy_xhat = s_dyxc * inv
    if training:
        kx = -k * inv * inv * s_dyxc / count         # the xhat * sum(dy * xhat) / n term
        return sum_dy / count, k, kx, -lo * kx, scale * dy_xhat + shift * sum_dy
    # inference has no shift (0 * an infinite sum_dy would be NaN where TensorFlow has inf)
    return 0.0, k, 0.0, 0.0, scale * dy_xhat


@njit(inline="always", error_model="numpy")
def renorm_factors(mean, var, renorm_mean, renorm_stddev, epsilon, rmin, rmax, dmax):
    """Batch renormalization's ``(r, d)`` of one feature: ``r = clip(std / renorm_std)``,
    ``d = clip((mean - renorm_mean) / renorm_std)``, with ``renorm_std >= sqrt(epsilon)``;
    infinite bounds do not clip."""
    rs = float64(renorm_stddev)
    floor = float64(math.sqrt(epsilon))
    if rs < floor:
        rs = floor
    r = float64(math.sqrt(var + epsilon)) / rs
    d = (mean - float64(renorm_mean)) / rs
    if r < rmin:
        r = rmin
    if r > rmax:
        r = rmax
    if d < -dmax:
        d = -dmax
    if d > dmax:
        d = dmax
    return r, d


# ------------------------------------------------------------------------------------------------
# O(C) work, sequential: coefficients and moving statistics


@_parallel_and_serial
def affine_coefficients(mean, var, epsilon, gamma, beta, scale, shift, inv_std, m_hi, a, b):
    """:func:`forward_coefficients` of every (group, feature): ``mean``/``var`` float64
    ``(G, C)``, the factors ``(C,)`` vectors; fills ``inv_std``, ``m_hi``, ``a``, ``b``."""
    G, C = mean.shape
    for g in prange(G):
        for c in range(C):
            m_hi[g, c] = mean[g, c]
            inv_std[g, c], a[g, c], b[g, c] = forward_coefficients(
                mean[g, c], var[g, c], epsilon, gamma[c], beta[c], scale[c], shift[c],
                float64(m_hi[g, c]))


@_parallel_and_serial
def grad_coefficients(sum_dy, sum_dyxc, mean, m_hi, inv_std, count, training, gamma, scale,
                      shift, dy_mean, k_dy, k_xc, k_0, dgamma, dbeta):
    """:func:`gradient_coefficients` of every (group, feature); ``dgamma`` and ``dbeta`` sum
    the groups in order."""
    G, C = mean.shape
    for c in prange(C):
        dg, db = 0.0, 0.0
        for g in range(G):
            dy_mean[g, c], k_dy[g, c], k_xc[g, c], k_0[g, c], part = gradient_coefficients(
                sum_dy[g, c], sum_dyxc[g, c], mean[g, c], float64(m_hi[g, c]), inv_std[g, c],
                count, training, gamma[c], scale[c], shift[c])
            dg += part
            db += sum_dy[g, c]
        dgamma[c] = dg
        dbeta[c] = db


# ------------------------------------------------------------------------------------------------
# across processes: per-rank rows combined in rank order (the same bits on every rank)


@njit(**_SEQ)
def combine_ranks(gathered, mean, var):
    """Chan-merge ``gathered[P, 3, C]`` rows of (count, mean, M2) per feature, rank by rank;
    ranks with no values are skipped."""
    P, _, C = gathered.shape
    for c in range(C):
        n, m, m2 = 0.0, 0.0, 0.0
        for p in range(P):
            n, m, m2 = chan_merge(n, m, m2, gathered[p, 0, c], gathered[p, 1, c],
                                  gathered[p, 2, c])
        mean[0, c] = m if n > 0.0 else math.nan
        var[0, c] = m2 / n if n > 0.0 else math.nan


@njit(**_SEQ)
def sum_ranks(gathered, out):
    """``out[i] = sum over p of gathered[p, i]``, in rank order."""
    for i in range(out.shape[0]):
        total = 0.0
        for p in range(gathered.shape[0]):
            total += gathered[p, i]
        out[i] = total


@njit(inline="always", error_model="numpy")
def rank_weighted_mean(gathered, j, i):
    """``sum_p w_p * v_p / sum_p w_p`` of value row ``j`` at ``i``, for rows ``gathered[p] =
    (w, v_1 .. v_k)``; ranks of weight 0 are skipped (their values may be undefined)."""
    weight, total = 0.0, 0.0
    for p in range(gathered.shape[0]):
        w = gathered[p, 0, i]
        if w != 0.0:
            weight += w
            total += w * gathered[p, j + 1, i]
    return total / weight


@njit(**_SEQ)
def weighted_average(gathered, out):
    """:func:`rank_weighted_mean` of every value row and column into ``out[k, n]``."""
    for j in range(out.shape[0]):
        for i in range(out.shape[1]):
            out[j, i] = rank_weighted_mean(gathered, j, i)


@njit(**_SEQ)
def renorm_correction(mean, var, renorm_mean, renorm_stddev, epsilon, rmin, rmax, dmax, r, d):
    """:func:`renorm_factors` of every feature into ``r`` and ``d`` (float64 ``(C,)``)."""
    for c in range(mean.shape[0]):
        r[c], d[c] = renorm_factors(mean[c], var[c], renorm_mean[c], renorm_stddev[c], epsilon,
                                    rmin, rmax, dmax)


# ------------------------------------------------------------------------------------------------
# small inputs in one call: a training loop's (256, 64) call is a few microseconds of arithmetic,
# so each kernel launch and the Python between them would be most of its cost. No ghost batches,
# channels last (``x[R, C]``, at most one reduction unit), serial; the formulas and the order of
# the general kernels for such an input (one unit, no merge).

_SMALL = dict(_SEQ, fastmath=_FASTMATH)


@njit(**_SMALL)
def _rows_moments(x, mean, var, shift):
    """Mean and biased variance of ``x[R, C]`` (``R >= 1``) as one unit of
    :func:`unit_moments_rows` would give them; ``shift`` is float64 ``(C,)`` scratch."""
    R, C = x.shape
    x0 = x[0]
    for c in range(C):
        shift[c] = widen(x0[c])
        mean[c] = 0.0
        var[c] = 0.0
    _shifted_sums_rows(x, 0, R, shift, mean, var, 0)    # small: in the caches already
    inv_count = 1.0 / R
    for c in range(C):
        mean_d = mean[c] * inv_count
        var[c] = (var[c] - mean[c] * mean_d) / R
        mean[c] = shift[c] + mean_d


@njit(**_SMALL)
def _rows_normalize(x, mean, var, epsilon, gamma, beta, scale, shift, inv_std, m_hi, a, b, y):
    R, C = x.shape
    for c in range(C):
        m_hi[c] = mean[c]
        inv_std[c], a[c], b[c] = forward_coefficients(mean[c], var[c], epsilon, gamma[c], beta[c],
                                                      scale[c], shift[c], float64(m_hi[c]))
    for r in range(R):
        xr, yr = x[r], y[r]
        for c in range(C):
            yr[c] = narrow((widen(xr[c]) - m_hi[c]) * a[c] + b[c], yr)


@njit(**_SMALL)
def train_rows_small(x, epsilon, gamma, beta, scale, shift, stats, coefficients, y):
    """Statistics, coefficients and ``y`` of a one-group ``x[R, C]`` in one call.

    Fills ``stats`` (float64 ``(3, 1, C)``: mean, var, inv_std) and ``coefficients`` (``(3, 1,
    C)`` in the arithmetic dtype: m_hi, a, b); returns whether every mean is a number (else the
    caller recomputes the NaN ones).
    """
    mean, var, inv_std = stats[0, 0], stats[1, 0], stats[2, 0]
    _rows_moments(x, mean, var, inv_std)
    for c in range(mean.shape[0]):
        if mean[c] != mean[c]:
            return False
    _rows_normalize(x, mean, var, epsilon, gamma, beta, scale, shift, inv_std,
                    coefficients[0, 0], coefficients[1, 0], coefficients[2, 0], y)
    return True


@njit(**_SMALL)
def infer_rows_small(x, mean, var, epsilon, gamma, beta, scale, shift, stats, coefficients, y):
    """Coefficients and ``y`` of ``x[R, C]`` with given statistics ``mean``, ``var`` ``(1, C)``
    in one call. Fills ``stats`` (float64 ``(3, 1, C)``: copies of mean and var, inv_std) and
    ``coefficients`` (``(3, 1, C)``: m_hi, a, b)."""
    mean, var = mean[0], var[0]
    kept_mean, kept_var = stats[0, 0], stats[1, 0]
    for c in range(mean.shape[0]):
        kept_mean[c] = mean[c]
        kept_var[c] = var[c]
    _rows_normalize(x, mean, var, epsilon, gamma, beta, scale, shift, stats[2, 0],
                    coefficients[0, 0], coefficients[1, 0], coefficients[2, 0], y)


@njit(**_SMALL)
def backward_rows_small(x, dy, mean, m_hi, inv_std, count, training, gamma, scale, shift, sums,
                        coefficients, dx):
    """:func:`unit_grad_sums_rows`, :func:`grad_coefficients` and the input gradient of a
    one-group ``x[R, C]`` in one call. ``sums`` is float64 ``(4, C)``: the two sums, then
    dgamma and dbeta; ``coefficients`` ``(4, C)`` in ``x``'s arithmetic dtype (scratch)."""
    R, C = x.shape
    s1, s2, dgamma, dbeta = sums[0], sums[1], sums[2], sums[3]
    m = m_hi[0]
    s1[:] = 0.0
    s2[:] = 0.0
    for r in range(R):
        xr, gr = x[r], dy[r]
        for c in range(C):
            g_ = np.float64(widen(gr[c]))
            s1[c] += g_
            s2[c] += g_ * np.float64(widen(xr[c]) - m[c])
    dy_mean, k_dy, k_xc, k_0 = coefficients[0], coefficients[1], coefficients[2], coefficients[3]
    for c in range(C):
        dy_mean[c], k_dy[c], k_xc[c], k_0[c], part = gradient_coefficients(
            s1[c], s2[c], mean[0, c], float64(m[c]), inv_std[0, c], count, training, gamma[c],
            scale[c], shift[c])
        dgamma[c] = part
        dbeta[c] = s1[c]
    for r in range(R):
        xr, gr, dr = x[r], dy[r], dx[r]
        if training:
            for c in range(C):
                dr[c] = narrow(k_dy[c] * (widen(gr[c]) - dy_mean[c])
                               + k_xc[c] * (widen(xr[c]) - m[c]) + k_0[c], dr)
        else:                            # the affine pass on dy, as the general path runs it
            for c in range(C):
                dr[c] = narrow((widen(gr[c]) - k_xc[c]) * k_dy[c] + k_0[c], dr)


@njit(**_SEQ)
def moving_averages(first, first_stat, second, second_stat, second_scale, decay):
    """In place, for two weights at once: ``moving -= (moving - stat) * decay``, the second
    statistic multiplied by ``second_scale`` first.

    ``decay`` and each statistic are rounded to the weights' dtype first (by storing them into
    the weight, which holds that dtype, and reading them back), so the update rounds like
    Keras' (which runs it in the variable's dtype).
    """
    if first.shape[0] == 0 and second.shape[0] == 0:
        return
    w = first if first.shape[0] else second
    old = w[0]
    w[0] = decay
    decay_r = w[0]                       # decay in the weights' dtype
    w[0] = old
    for c in range(first.shape[0]):
        old = first[c]
        first[c] = first_stat[c]
        first[c] = old - (old - first[c]) * decay_r
    for c in range(second.shape[0]):
        old = second[c]
        second[c] = second_stat[c] * second_scale
        second[c] = old - (old - second[c]) * decay_r

"""Numba CUDA kernels for batch normalization.

The views are the CPU engine's (see ``numbabn/_layout.py``):

    rows   x[R, C]      channels last: a block is TX features wide, so a warp reads TX
                        consecutive values of a row (coalesced), and TY rows deep
    planes x[R, C, I]   channels first: a block of T threads walks a chunk of one (row, feature)
                        plane

``R`` rows are ``N`` samples of ``P`` consecutive rows; sample ``n`` is in ghost group ``n % G``.

Reductions, as on the CPU, are cut into fixed work units that write one row each of a partials
buffer ordered group by group, ``(G * U, C)``, merged by a second kernel in a fixed order: no
atomics, so results are bitwise reproducible run to run. Each thread accumulates shifted sums in
float64 (shift = the unit's first value); threads are merged with Chan's formula for
(count, mean, M2) through shared memory, the last warp by shuffles.

Versions (the kernel log with measured bandwidth is in ``docs/performance.md``):

    v1  shifted float64 sums per thread, shared-memory tree, warp shuffles for the last 32
        threads; separate statistics / coefficient / elementwise kernels (3 launches a forward).

Kernels are lazy (no signatures): importing this module needs no GPU. They take arrays and
scalars only; the engine (``engine.py``) owns launch shapes and allocation.
"""
import math
import os

from numba import config, cuda, float64, uint32

from ..cpu import kernels as cpu_kernels

# Launch shapes. Under the CUDA simulator every thread is a Python thread, so blocks are kept
# small there; the code paths are the same. NUMBABN_CUDA_TILES=production gives the simulator
# the GPU's tiles and grids (tests run every kernel once that way, on small inputs).
SIMULATOR = bool(config.ENABLE_CUDASIM)
SMALL_TILES = SIMULATOR and os.environ.get("NUMBABN_CUDA_TILES") != "production"
TX = 8 if SMALL_TILES else 32        # features per rows block (one warp wide on a GPU)
TY = 4 if SMALL_TILES else 8         # rows per rows block
T = 32 if SMALL_TILES else 256       # threads of a planes block
WARP = 32
# Warp shuffles are not available in the simulator; there the shared-memory tree goes to the end.
SHUFFLE = not SIMULATOR
FULL_MASK = 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------
# helpers


def _device_function(formula):
    """A formula of the CPU kernels (``numbabn.cpu.kernels``), compiled as a device function."""
    return cuda.jit(device=True, inline=True)(formula.py_func)


_chan = _device_function(cpu_kernels.chan_merge)
_rank_weighted_mean = _device_function(cpu_kernels.rank_weighted_mean)


@cuda.jit(device=True, inline=True)
def _shifted(n, s1, s2, shift):
    """(count, mean, M2) of values whose shifted sums are ``s1 = sum(v - shift)``, ``s2``."""
    if n == 0.0:
        return 0.0, 0.0, 0.0
    return n, shift + s1 / n, s2 - s1 * s1 / n


@cuda.jit(device=True, inline=True)
def _group_row(t, g, groups, rows_per_sample):
    """Row of the ``t``-th row of ghost group ``g``, rows listed in sample order."""
    if groups == 1:
        return t
    j = t // rows_per_sample
    return (g + groups * j) * rows_per_sample + (t - j * rows_per_sample)


@cuda.jit(device=True, inline=True)
def _block_merge_1d(n, mean, m2, sh_n, sh_mean, sh_m2, tid):
    """Chan-merge the triples of the T threads of a 1-D block; thread 0 gets the result.

    Every thread must call this (it synchronizes the block).
    """
    sh_n[tid] = n
    sh_mean[tid] = mean
    sh_m2[tid] = m2
    cuda.syncthreads()
    stop = WARP if SHUFFLE else 1
    stride = T // 2
    while stride >= stop:
        if tid < stride:
            n, mean, m2 = _chan(sh_n[tid], sh_mean[tid], sh_m2[tid],
                                sh_n[tid + stride], sh_mean[tid + stride], sh_m2[tid + stride])
            sh_n[tid] = n
            sh_mean[tid] = mean
            sh_m2[tid] = m2
        cuda.syncthreads()
        stride //= 2
    if SHUFFLE:
        if tid < WARP:
            n, mean, m2 = sh_n[tid], sh_mean[tid], sh_m2[tid]
            offset = WARP // 2
            while offset > 0:
                n_b = cuda.shfl_down_sync(FULL_MASK, n, offset)
                mean_b = cuda.shfl_down_sync(FULL_MASK, mean, offset)
                m2_b = cuda.shfl_down_sync(FULL_MASK, m2, offset)
                n, mean, m2 = _chan(n, mean, m2, n_b, mean_b, m2_b)
                offset //= 2
        return n, mean, m2
    return sh_n[0], sh_mean[0], sh_m2[0]


@cuda.jit(device=True, inline=True)
def _block_sum2_1d(s1, s2, sh_1, sh_2, tid):
    """Sum two float64 values over the T threads of a 1-D block; thread 0 gets the sums."""
    sh_1[tid] = s1
    sh_2[tid] = s2
    cuda.syncthreads()
    stop = WARP if SHUFFLE else 1
    stride = T // 2
    while stride >= stop:
        if tid < stride:
            sh_1[tid] += sh_1[tid + stride]
            sh_2[tid] += sh_2[tid + stride]
        cuda.syncthreads()
        stride //= 2
    if SHUFFLE:
        if tid < WARP:
            s1, s2 = sh_1[tid], sh_2[tid]
            offset = WARP // 2
            while offset > 0:
                s1 += cuda.shfl_down_sync(FULL_MASK, s1, offset)
                s2 += cuda.shfl_down_sync(FULL_MASK, s2, offset)
                offset //= 2
        return s1, s2
    return sh_1[0], sh_2[0]


@cuda.jit(device=True, inline=True)
def _column_merge(n, mean, m2, sh_n, sh_mean, sh_m2, tx, ty):
    """Chan-merge over the TY rows of a (TX, TY) block, per feature lane; row 0 gets it."""
    sh_n[ty, tx] = n
    sh_mean[ty, tx] = mean
    sh_m2[ty, tx] = m2
    cuda.syncthreads()
    stride = TY // 2
    while stride >= 1:
        if ty < stride:
            n, mean, m2 = _chan(sh_n[ty, tx], sh_mean[ty, tx], sh_m2[ty, tx],
                                sh_n[ty + stride, tx], sh_mean[ty + stride, tx],
                                sh_m2[ty + stride, tx])
            sh_n[ty, tx] = n
            sh_mean[ty, tx] = mean
            sh_m2[ty, tx] = m2
        cuda.syncthreads()
        stride //= 2
    return sh_n[0, tx], sh_mean[0, tx], sh_m2[0, tx]


@cuda.jit(device=True, inline=True)
def _column_sum2(s1, s2, sh_1, sh_2, tx, ty):
    """Sum two float64 values over the TY rows of a (TX, TY) block; row 0 gets the sums."""
    sh_1[ty, tx] = s1
    sh_2[ty, tx] = s2
    cuda.syncthreads()
    stride = TY // 2
    while stride >= 1:
        if ty < stride:
            sh_1[ty, tx] += sh_1[ty + stride, tx]
            sh_2[ty, tx] += sh_2[ty + stride, tx]
        cuda.syncthreads()
        stride //= 2
    return sh_1[0, tx], sh_2[0, tx]


# ------------------------------------------------------------------------------------------------
# statistics: per-unit partials, then a merge per (group, feature)


@cuda.jit
def unit_moments_rows(x, rows_per_sample, groups, span, p_n, p_mean, p_m2):
    """Partials of ``x[R, C]``: unit ``(g, s)`` covers rows ``[s*span, (s+1)*span)`` of group g.

    grid (ceil(C / TX), S, G), block (TX, TY); writes row ``g * S + s`` of ``p_*[G * S, C]``.
    """
    R, C = x.shape
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    c = cuda.blockIdx.x * TX + tx
    s, g, S = cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.y
    sh_n = cuda.shared.array((TY, TX), float64)
    sh_mean = cuda.shared.array((TY, TX), float64)
    sh_m2 = cuda.shared.array((TY, TX), float64)
    length = R // groups
    t0 = s * span
    t1 = min(t0 + span, length)
    n, s1, s2, shift = 0.0, 0.0, 0.0, 0.0
    if c < C and t0 < t1:
        shift = float64(x[_group_row(t0, g, groups, rows_per_sample), c])
        for t in range(t0 + ty, t1, TY):
            v = float64(x[_group_row(t, g, groups, rows_per_sample), c]) - shift
            s1 += v
            s2 += v * v
            n += 1.0
    n, mean, m2 = _shifted(n, s1, s2, shift)
    n, mean, m2 = _column_merge(n, mean, m2, sh_n, sh_mean, sh_m2, tx, ty)
    if ty == 0 and c < C:
        u = g * S + s
        p_n[u, c] = n
        p_mean[u, c] = mean
        p_m2[u, c] = m2


@cuda.jit
def unit_moments_planes(x, rows_per_sample, groups, chunk, p_n, p_mean, p_m2):
    """Partials of ``x[R, C, I]``: one unit per chunk ``k`` of ``chunk`` values of a plane.

    grid (chunks, <= R * C), block (T,); planes are visited grid-stride. Unit of row ``r``
    (sample ``m``, ghost group ``g``) goes to row ``g * U + (r // G-ordered index) * chunks + k``.
    """
    R, C, I = x.shape
    tid = cuda.threadIdx.x
    k, chunks = cuda.blockIdx.x, cuda.gridDim.x
    sh_n = cuda.shared.array(T, float64)
    sh_mean = cuda.shared.array(T, float64)
    sh_m2 = cuda.shared.array(T, float64)
    units_per_group = (R // groups) * chunks
    i0 = k * chunk
    i1 = min(i0 + chunk, I)
    for p in range(cuda.blockIdx.y, R * C, cuda.gridDim.y):
        r = p // C
        c = p - r * C
        n, s1, s2 = 0.0, 0.0, 0.0
        shift = float64(x[r, c, i0])
        for i in range(i0 + tid, i1, T):
            v = float64(x[r, c, i]) - shift
            s1 += v
            s2 += v * v
            n += 1.0
        n, mean, m2 = _shifted(n, s1, s2, shift)
        n, mean, m2 = _block_merge_1d(n, mean, m2, sh_n, sh_mean, sh_m2, tid)
        if tid == 0:
            sample = r // rows_per_sample
            g = sample % groups
            row_in_group = (sample // groups) * rows_per_sample + (r - sample * rows_per_sample)
            u = g * units_per_group + row_in_group * chunks + k
            p_n[u, c] = n
            p_mean[u, c] = mean
            p_m2[u, c] = m2
        cuda.syncthreads()               # shared memory is reused by the next plane


@cuda.jit
def merge_moments(p_n, p_mean, p_m2, mean, var):
    """Chan-merge the ``U`` units of each group: ``mean[G, C]`` and biased ``var[G, C]``.

    grid (ceil(C / TX), G), block (TX, TY); ``p_*[G * U, C]`` ordered group by group.
    """
    G, C = mean.shape
    U = p_n.shape[0] // G
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    c = cuda.blockIdx.x * TX + tx
    g = cuda.blockIdx.y
    sh_n = cuda.shared.array((TY, TX), float64)
    sh_mean = cuda.shared.array((TY, TX), float64)
    sh_m2 = cuda.shared.array((TY, TX), float64)
    n, m, m2 = 0.0, 0.0, 0.0
    if c < C:
        for u in range(g * U + ty, (g + 1) * U, TY):
            n, m, m2 = _chan(n, m, m2, p_n[u, c], p_mean[u, c], p_m2[u, c])
    n, m, m2 = _column_merge(n, m, m2, sh_n, sh_mean, sh_m2, tx, ty)
    if ty == 0 and c < C:
        mean[g, c] = m if n > 0.0 else math.nan
        var[g, c] = m2 / n if n > 0.0 else math.nan


# Shifted sums and the Chan merge meet inf - inf as soon as a feature holds an infinity, so its
# mean comes out NaN; TensorFlow's plain sum gives +-inf when the infinities have one sign and
# there is no NaN. These kernels redo such means as sums; one thread per (group, feature), which
# returns at once where the mean is a number: nearly free on finite data. Rows x[R, C] come as
# planes x[R, C, 1] (and their weights w[R] as w[R, 1]).


@cuda.jit
def nan_means_as_sums(x, rows_per_sample, mean):
    """Where ``mean[g, c]`` is NaN: the plain mean of feature ``c`` over group ``g``'s rows of
    ``x[R, C, I]``."""
    G, C = mean.shape
    rows = x.shape[0] // G
    I = x.shape[2]
    for t in range(cuda.grid(1), G * C, cuda.gridsize(1)):
        g = t // C
        c = t - g * C
        if mean[g, c] != mean[g, c]:
            total = 0.0
            for k in range(rows):
                r = _group_row(k, g, G, rows_per_sample)
                for i in range(I):
                    total += float64(x[r, c, i])
            mean[g, c] = total / (rows * I)


@cuda.jit
def masked_nan_means_as_sums(x, w, mean):
    """:func:`nan_means_as_sums` over the positions where ``w[r, i]`` is true (one group)."""
    C = mean.shape[1]
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        if mean[0, c] != mean[0, c]:
            total = 0.0
            n = 0.0
            for r in range(x.shape[0]):
                for i in range(x.shape[2]):
                    if w[r, i]:
                        total += float64(x[r, c, i])
                        n += 1.0
            mean[0, c] = total / n


# ------------------------------------------------------------------------------------------------
# per-feature coefficients: the formulas are the CPU kernels' (``numbabn.cpu.kernels``), compiled
# from the same Python functions as device functions


_forward_coefficients = _device_function(cpu_kernels.forward_coefficients)
_gradient_coefficients = _device_function(cpu_kernels.gradient_coefficients)
_renorm_factors = _device_function(cpu_kernels.renorm_factors)


@cuda.jit
def affine_coefficients(mean, var, epsilon, gamma, beta, scale, shift, inv_std, m_hi, a, b):
    """``y = (x - m_hi) * a + b`` per (group, feature): one thread each."""
    G, C = mean.shape
    t = cuda.grid(1)
    if t < G * C:
        g = t // C
        c = t - g * C
        m_hi[g, c] = mean[g, c]
        inv, k, off = _forward_coefficients(mean[g, c], var[g, c], epsilon, gamma[c], beta[c],
                                            scale[c], shift[c], float64(m_hi[g, c]))
        inv_std[g, c] = inv
        a[g, c] = k
        b[g, c] = off


@cuda.jit
def grad_coefficients(sum_dy, sum_dyxc, mean, m_hi, inv_std, count, training, gamma, scale, shift,
                      dy_mean, k_dy, k_xc, k_0, dgamma, dbeta):
    """``dx = k_dy * (dy - dy_mean) + k_xc * (x - m_hi) + k_0`` and dgamma, dbeta. One thread
    per feature, groups in order."""
    G, C = mean.shape
    c = cuda.grid(1)
    if c < C:
        dg, db = 0.0, 0.0
        for g in range(G):
            m, k, kx, k0, part = _gradient_coefficients(
                sum_dy[g, c], sum_dyxc[g, c], mean[g, c], float64(m_hi[g, c]), inv_std[g, c],
                count, training, gamma[c], scale[c], shift[c])
            dy_mean[g, c] = m
            k_dy[g, c] = k
            k_xc[g, c] = kx
            k_0[g, c] = k0
            dg += part
            db += sum_dy[g, c]
        dgamma[c] = dg
        dbeta[c] = db


@cuda.jit
def group_average(mean, var, batch_mean, batch_var):
    """Average of the group statistics ``(G, C)`` per feature (the moving statistics' input)."""
    G, C = mean.shape
    c = cuda.grid(1)
    if c < C:
        m, v = 0.0, 0.0
        for g in range(G):
            m += mean[g, c]
            v += var[g, c]
        batch_mean[c] = m / G
        batch_var[c] = v / G


@cuda.jit
def renorm_correction(mean, var, renorm_mean, renorm_stddev, epsilon, rmin, rmax, dmax, r, d):
    """Batch renormalization's ``(r, d)`` per feature (the formula: ``renorm_factors``)."""
    c = cuda.grid(1)
    if c < mean.shape[0]:
        r[c], d[c] = _renorm_factors(mean[c], var[c], renorm_mean[c], renorm_stddev[c], epsilon,
                                     rmin, rmax, dmax)


@cuda.jit
def moving_averages(moving, stat, stat_scale, rounded, decay):
    """In place ``moving -= (moving - stat * stat_scale) * decay``.

    The statistic is first rounded to the weight's dtype (stored through ``rounded``, an array of
    that dtype), as Keras runs the update in the variable's dtype; ``decay`` has that dtype too.
    """
    c = cuda.grid(1)
    if c < moving.shape[0]:
        rounded[c] = stat[c] * stat_scale
        moving[c] -= (moving[c] - rounded[c]) * decay


@cuda.jit
def stddev(var, epsilon, out):
    """``out = sqrt(var + epsilon)`` (renorm's standard deviations)."""
    c = cuda.grid(1)
    if c < var.shape[0]:
        out[c] = math.sqrt(var[c] + epsilon)


@cuda.jit
def variance_from_stddev(stddev, epsilon, variance):
    """``variance = max(stddev^2 - epsilon, 0)`` in the weights' dtype (renorm's moving
    variance follows its moving standard deviation)."""
    c = cuda.grid(1)
    if c < variance.shape[0]:
        s = stddev[c]
        variance[c] = max(s * s - epsilon, 0)


@cuda.jit
def add_scaled(out, delta, alpha):
    """In place ``out += alpha * delta`` (a weight update on the device)."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] += alpha * delta[i]


# ------------------------------------------------------------------------------------------------
# elementwise: y = (x - m) * a + b and dx = k_dy * (dy - dy_mean) + k_xc * (x - m) + k_0


@cuda.jit
def affine_rows(x, rows_per_sample, groups, m, a, b, y):
    """``y[r, c] = (x[r, c] - m[g, c]) * a[g, c] + b[g, c]``; grid (ceil(C / TX), rows/TY-ish),
    block (TX, TY), rows grid-stride."""
    R, C = x.shape
    c = cuda.blockIdx.x * TX + cuda.threadIdx.x
    if c < C:
        m0, a0, b0 = m[0, c], a[0, c], b[0, c]
        for r in range(cuda.blockIdx.y * TY + cuda.threadIdx.y, R, cuda.gridDim.y * TY):
            if groups == 1:
                y[r, c] = (x[r, c] - m0) * a0 + b0
            else:
                g = (r // rows_per_sample) % groups
                y[r, c] = (x[r, c] - m[g, c]) * a[g, c] + b[g, c]


@cuda.jit
def affine_planes(x, rows_per_sample, groups, m, a, b, y):
    """``y[r, c, i] = (x[r, c, i] - m[g, c]) * a[g, c] + b[g, c]``; grid (chunks, <= R * C),
    block (T,), planes grid-stride."""
    R, C, I = x.shape
    start = cuda.blockIdx.x * T + cuda.threadIdx.x
    step = cuda.gridDim.x * T
    for p in range(cuda.blockIdx.y, R * C, cuda.gridDim.y):
        r = p // C
        c = p - r * C
        g = (r // rows_per_sample) % groups
        mc, ac, bc = m[g, c], a[g, c], b[g, c]
        for i in range(start, I, step):
            y[r, c, i] = (x[r, c, i] - mc) * ac + bc


@cuda.jit
def grad_input_rows(x, dy, rows_per_sample, groups, m, dy_mean, k_dy, k_xc, k_0, dx):
    """``dx`` of the training pass on rows (launch as :func:`affine_rows`)."""
    R, C = x.shape
    c = cuda.blockIdx.x * TX + cuda.threadIdx.x
    if c < C:
        for r in range(cuda.blockIdx.y * TY + cuda.threadIdx.y, R, cuda.gridDim.y * TY):
            g = (r // rows_per_sample) % groups
            dx[r, c] = (k_dy[g, c] * (dy[r, c] - dy_mean[g, c]) + k_xc[g, c] * (x[r, c] - m[g, c])
                        + k_0[g, c])


@cuda.jit
def grad_input_planes(x, dy, rows_per_sample, groups, m, dy_mean, k_dy, k_xc, k_0, dx):
    """``dx`` of the training pass on planes (launch as :func:`affine_planes`)."""
    R, C, I = x.shape
    start = cuda.blockIdx.x * T + cuda.threadIdx.x
    step = cuda.gridDim.x * T
    for p in range(cuda.blockIdx.y, R * C, cuda.gridDim.y):
        r = p // C
        c = p - r * C
        g = (r // rows_per_sample) % groups
        mc, gm, c1, c2, c3 = m[g, c], dy_mean[g, c], k_dy[g, c], k_xc[g, c], k_0[g, c]
        for i in range(start, I, step):
            dx[r, c, i] = c1 * (dy[r, c, i] - gm) + c2 * (x[r, c, i] - mc) + c3


# ------------------------------------------------------------------------------------------------
# backward sums: sum(dy) and sum(dy * (x - m_hi)) per unit, then per (group, feature)


@cuda.jit
def unit_grad_sums_rows(x, dy, rows_per_sample, groups, span, m, p_dy, p_dyxc):
    """Per-unit float64 ``sum(dy)``, ``sum(dy * (x - m[g]))``; units as in
    :func:`unit_moments_rows`."""
    R, C = x.shape
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    c = cuda.blockIdx.x * TX + tx
    s, g, S = cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.y
    sh_1 = cuda.shared.array((TY, TX), float64)
    sh_2 = cuda.shared.array((TY, TX), float64)
    length = R // groups
    t0 = s * span
    t1 = min(t0 + span, length)
    s1, s2 = 0.0, 0.0
    if c < C:
        mc = m[g, c]
        for t in range(t0 + ty, t1, TY):
            r = _group_row(t, g, groups, rows_per_sample)
            gv = float64(dy[r, c])
            s1 += gv
            s2 += gv * float64(x[r, c] - mc)
    s1, s2 = _column_sum2(s1, s2, sh_1, sh_2, tx, ty)
    if ty == 0 and c < C:
        p_dy[g * S + s, c] = s1
        p_dyxc[g * S + s, c] = s2


@cuda.jit
def unit_grad_sums_planes(x, dy, rows_per_sample, groups, chunk, m, p_dy, p_dyxc):
    """Per-unit float64 sums on planes; units as in :func:`unit_moments_planes`."""
    R, C, I = x.shape
    tid = cuda.threadIdx.x
    k, chunks = cuda.blockIdx.x, cuda.gridDim.x
    sh_1 = cuda.shared.array(T, float64)
    sh_2 = cuda.shared.array(T, float64)
    units_per_group = (R // groups) * chunks
    i0 = k * chunk
    i1 = min(i0 + chunk, I)
    for p in range(cuda.blockIdx.y, R * C, cuda.gridDim.y):
        r = p // C
        c = p - r * C
        sample = r // rows_per_sample
        g = sample % groups
        mc = m[g, c]
        s1, s2 = 0.0, 0.0
        for i in range(i0 + tid, i1, T):
            gv = float64(dy[r, c, i])
            s1 += gv
            s2 += gv * float64(x[r, c, i] - mc)
        s1, s2 = _block_sum2_1d(s1, s2, sh_1, sh_2, tid)
        if tid == 0:
            row_in_group = (sample // groups) * rows_per_sample + (r - sample * rows_per_sample)
            u = g * units_per_group + row_in_group * chunks + k
            p_dy[u, c] = s1
            p_dyxc[u, c] = s2
        cuda.syncthreads()


@cuda.jit
def merge_sums(p_dy, p_dyxc, sum_dy, sum_dyxc):
    """Sum the ``U`` units of each group in a fixed order; grid (ceil(C / TX), G), block
    (TX, TY)."""
    G, C = sum_dy.shape
    U = p_dy.shape[0] // G
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    c = cuda.blockIdx.x * TX + tx
    g = cuda.blockIdx.y
    sh_1 = cuda.shared.array((TY, TX), float64)
    sh_2 = cuda.shared.array((TY, TX), float64)
    s1, s2 = 0.0, 0.0
    if c < C:
        for u in range(g * U + ty, (g + 1) * U, TY):
            s1 += p_dy[u, c]
            s2 += p_dyxc[u, c]
    s1, s2 = _column_sum2(s1, s2, sh_1, sh_2, tx, ty)
    if ty == 0 and c < C:
        sum_dy[g, c] = s1
        sum_dyxc[g, c] = s2


# ------------------------------------------------------------------------------------------------
# masked statistics (one group): only positions whose weight is true count


@cuda.jit
def masked_unit_moments_rows(x, w, span, p_n, p_mean, p_m2):
    """Partials of the rows of ``x[R, C]`` with ``w[r]`` true; unit ``s`` covers rows
    ``[s*span, (s+1)*span)``. grid (ceil(C / TX), S), block (TX, TY)."""
    R, C = x.shape
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    c = cuda.blockIdx.x * TX + tx
    s = cuda.blockIdx.y
    sh_n = cuda.shared.array((TY, TX), float64)
    sh_mean = cuda.shared.array((TY, TX), float64)
    sh_m2 = cuda.shared.array((TY, TX), float64)
    t0 = s * span
    t1 = min(t0 + span, R)
    n, s1, s2, shift = 0.0, 0.0, 0.0, 0.0
    if c < C:
        for r in range(t0 + ty, t1, TY):
            if w[r]:
                v = float64(x[r, c])
                if n == 0.0:
                    shift = v            # each thread shifts by its first counted value
                v -= shift
                s1 += v
                s2 += v * v
                n += 1.0
    n, mean, m2 = _shifted(n, s1, s2, shift)
    n, mean, m2 = _column_merge(n, mean, m2, sh_n, sh_mean, sh_m2, tx, ty)
    if ty == 0 and c < C:
        p_n[s, c] = n
        p_mean[s, c] = mean
        p_m2[s, c] = m2


@cuda.jit
def masked_unit_moments_planes(x, w, chunk, p_n, p_mean, p_m2):
    """Partials of ``x[R, C, I]`` where ``w[r, i]`` is true; units as in
    :func:`unit_moments_planes` with one group."""
    R, C, I = x.shape
    tid = cuda.threadIdx.x
    k, chunks = cuda.blockIdx.x, cuda.gridDim.x
    sh_n = cuda.shared.array(T, float64)
    sh_mean = cuda.shared.array(T, float64)
    sh_m2 = cuda.shared.array(T, float64)
    i0 = k * chunk
    i1 = min(i0 + chunk, I)
    for p in range(cuda.blockIdx.y, R * C, cuda.gridDim.y):
        r = p // C
        c = p - r * C
        n, s1, s2, shift = 0.0, 0.0, 0.0, 0.0
        for i in range(i0 + tid, i1, T):
            if w[r, i]:
                v = float64(x[r, c, i])
                if n == 0.0:
                    shift = v
                v -= shift
                s1 += v
                s2 += v * v
                n += 1.0
        n, mean, m2 = _shifted(n, s1, s2, shift)
        n, mean, m2 = _block_merge_1d(n, mean, m2, sh_n, sh_mean, sh_m2, tid)
        if tid == 0:
            u = r * chunks + k
            p_n[u, c] = n
            p_mean[u, c] = mean
            p_m2[u, c] = m2
        cuda.syncthreads()


@cuda.jit
def masked_grad_input_rows(x, dy, w, m, dy_mean, k_dy, k_xc, k_0, dx):
    """``dx`` of a masked training pass on rows: rows outside the mask get ``k_dy * dy``."""
    R, C = x.shape
    c = cuda.blockIdx.x * TX + cuda.threadIdx.x
    if c < C:
        mc, gm, c1, c2, c3 = m[0, c], dy_mean[0, c], k_dy[0, c], k_xc[0, c], k_0[0, c]
        for r in range(cuda.blockIdx.y * TY + cuda.threadIdx.y, R, cuda.gridDim.y * TY):
            if w[r]:
                dx[r, c] = c1 * (dy[r, c] - gm) + c2 * (x[r, c] - mc) + c3
            else:
                dx[r, c] = c1 * dy[r, c]


@cuda.jit
def masked_grad_input_planes(x, dy, w, m, dy_mean, k_dy, k_xc, k_0, dx):
    """``dx`` of a masked training pass on planes (weights ``w[r, i]``)."""
    R, C, I = x.shape
    start = cuda.blockIdx.x * T + cuda.threadIdx.x
    step = cuda.gridDim.x * T
    for p in range(cuda.blockIdx.y, R * C, cuda.gridDim.y):
        r = p // C
        c = p - r * C
        mc, gm, c1, c2, c3 = m[0, c], dy_mean[0, c], k_dy[0, c], k_xc[0, c], k_0[0, c]
        for i in range(start, I, step):
            if w[r, i]:
                dx[r, c, i] = c1 * (dy[r, c, i] - gm) + c2 * (x[r, c, i] - mc) + c3
            else:
                dx[r, c, i] = c1 * dy[r, c, i]


# ------------------------------------------------------------------------------------------------
# across processes: rows gathered from every rank, combined in rank order


@cuda.jit
def combine_ranks(gathered, mean, var):
    """Chan-merge ``gathered[P, 3, C]`` rows of (count, mean, M2) per feature, rank by rank."""
    P, _, C = gathered.shape
    c = cuda.grid(1)
    if c < C:
        n, m, m2 = 0.0, 0.0, 0.0
        for p in range(P):
            n, m, m2 = _chan(n, m, m2, gathered[p, 0, c], gathered[p, 1, c], gathered[p, 2, c])
        mean[0, c] = m if n > 0.0 else math.nan
        var[0, c] = m2 / n if n > 0.0 else math.nan


@cuda.jit
def sum_ranks(gathered, out):
    """``out[i] = sum over p of gathered[p, i]``, in rank order."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        total = 0.0
        for p in range(gathered.shape[0]):
            total += gathered[p, i]
        out[i] = total


@cuda.jit
def weighted_average(gathered, out):
    """:func:`~numbabn.cpu.kernels.rank_weighted_mean` of every value row and column into
    ``out[k, n]``, one thread each."""
    t = cuda.grid(1)
    if t < out.shape[0] * out.shape[1]:
        j = t // out.shape[1]
        i = t - j * out.shape[1]
        out[j, i] = _rank_weighted_mean(gathered, j, i)


# ------------------------------------------------------------------------------------------------
# data movement


@cuda.jit
def cast(src, dst):
    """``dst[i] = src[i]`` for flat arrays of any two dtypes; grid-stride."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]


# bfloat16 moves through integer views of the arrays (uint16 for bfloat16, uint32 for float32):
# integer arithmetic needs no bfloat16 support from the device or from the simulator.


@cuda.jit
def widen_bfloat16(src, dst):
    """bfloat16 bits ``src`` (uint16) -> float32 bits ``dst`` (uint32), exact."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = uint32(src[i]) << 16


@cuda.jit
def narrow_bfloat16(src, dst):
    """float32 bits ``src`` (uint32) -> bfloat16 bits ``dst`` (uint16), rounded to nearest even;
    NaNs stay (quiet) NaNs."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        b = src[i]
        if (b & 0x7FFFFFFF) > 0x7F800000:
            dst[i] = (b >> 16) | 0x40
        else:
            dst[i] = (b + 0x7FFF + ((b >> 16) & 1)) >> 16


@cuda.jit
def gather(src, dst):
    """Copy an 8-d strided view ``src`` into the flat C-ordered ``dst`` (any two dtypes).

    The engine presents every permuted or non-contiguous input as an 8-d view (leading axes of
    length 1), so one kernel serves every rank.
    """
    s0, s1, s2, s3, s4, s5, s6, s7 = src.shape
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        q = i
        i7 = q % s7
        q //= s7
        i6 = q % s6
        q //= s6
        i5 = q % s5
        q //= s5
        i4 = q % s4
        q //= s4
        i3 = q % s3
        q //= s3
        i2 = q % s2
        q //= s2
        i1 = q % s1
        i0 = q // s1
        dst[i] = src[i0, i1, i2, i3, i4, i5, i6, i7]

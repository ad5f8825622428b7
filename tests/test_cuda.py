"""The CUDA engine: against the float64 reference, against the CPU engine, and its placement rules.

Without a GPU these run on Numba's CUDA simulator; the shapes are small but chosen against the
simulator's launch constants (``numbabn/cuda/kernels.py``: 8 features x 4 rows per rows block,
32 threads per planes block, planes cut into chunks of 64) so that every reduction has several
blocks, several units per group, several chunks per plane, and grid-stride loops. A separate
process compiles every kernel to PTX for sm_90 with the real compiler.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import SIMULATOR, STATS_RTOL, Backend, assert_close
import numbabn
from numbabn import functional as F
from numbabn import reference as R
from numbabn._dispatch import device_of

GPU = Backend("cuda")
BN = numbabn.BatchNormalization

# shape, axis, virtual batch size; comments name what each one exercises on the simulator
PROBLEMS = [
    ((37, 11), -1, None),            # rows: 2 feature tiles, 2 units, a partial tile and unit
    ((6, 3, 70), 1, None),           # planes: 2 chunks a plane, planes visited grid-stride
    ((8, 5, 4, 3), -1, 2),           # rows with 4 ghost groups of 2 samples x 20 rows
    ((8, 3, 4, 5), 1, 4),            # planes with 2 ghost groups
    ((5, 4, 6, 3), [1, 3], None),    # non-consecutive feature axes: a permuting gather
    ((3, 4, 5), [0, 2], None),
    ((1, 9), -1, None),              # one value per feature
    ((40,), 0, None),                # rank 1: every value its own feature
]


def per_feature(v, shape, axes):
    return np.asarray(v).reshape(tuple(shape[a] if a in axes else 1 for a in range(len(shape))))


def sorted_axes(axis, ndim):
    axis = [axis] if isinstance(axis, int) else axis
    return tuple(sorted(a % ndim for a in axis))


@pytest.mark.skipif(not SIMULATOR, reason="the lock is for Numba's CUDA simulator")
def test_the_simulator_lock_holds_for_the_whole_session():
    import gc
    import simulator_fix
    gc.collect()                  # a lock held by nothing would be gone after a collection
    assert simulator_fix.installed()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis, vbs", PROBLEMS)
def test_training_forward_and_backward_match_reference(shape, axis, vbs, dtype, rng):
    axes = sorted_axes(axis, len(shape))
    x = rng.normal(2.0, 3.0, size=shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    fshape = tuple(shape[a] for a in axes)
    gamma, beta = rng.uniform(0.5, 1.5, size=fshape), rng.normal(size=fshape)
    y, cache = F.batch_norm_train(GPU.to(x), gamma, beta, axis=axis, epsilon=1e-3,
                                  virtual_batch_size=vbs)
    dx, dgamma, dbeta = F.batch_norm_backward(GPU.to(dy), cache)
    assert device_of(y) == "cuda" and device_of(dx) == "cuda" and device_of(dgamma) == "cuda"
    g, b = per_feature(gamma, shape, axes), per_feature(beta, shape, axes)
    y_ref, mean_ref, var_ref = R.forward_train(x, axes, 1e-3, g, b, vbs)
    dx_ref, dg_ref, db_ref = R.backward_train(dy, x, axes, 1e-3, g, vbs)
    y, dx = GPU.host(y), GPU.host(dx)
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == shape
    assert_close(y, y_ref, dtype)
    assert_close(dx, dx_ref, dtype, scale=4)
    assert_close(GPU.host(dgamma), dg_ref.reshape(fshape), dtype, scale=4 * x.size)
    assert_close(GPU.host(dbeta), db_ref.reshape(fshape), dtype, scale=x.size)
    mean, var = GPU.host(cache.mean), GPU.host(cache.variance)
    rtol = STATS_RTOL[np.dtype(dtype)]
    np.testing.assert_allclose(mean, mean_ref.reshape(mean.shape), rtol=rtol, atol=rtol * 3)
    np.testing.assert_allclose(var, var_ref.reshape(var.shape), rtol=rtol, atol=rtol * 9)


@pytest.mark.parametrize("shape, axis, vbs", PROBLEMS[:2] + PROBLEMS[4:5])
def test_inference_forward_and_backward_match_reference(shape, axis, vbs, rng):
    axes = sorted_axes(axis, len(shape))
    x = rng.normal(2.0, 3.0, size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    fshape = tuple(shape[a] for a in axes)
    mm, mv = rng.normal(size=fshape), rng.uniform(0.5, 2.0, size=fshape)
    gamma, beta = rng.uniform(0.5, 1.5, size=fshape), rng.normal(size=fshape)
    y, cache = F.batch_norm_infer(GPU.to(x), mm, mv, gamma, beta, axis=axis, epsilon=1e-3)
    dx, dgamma, dbeta = F.batch_norm_backward(GPU.to(dy), cache)
    pf = [per_feature(v, shape, axes) for v in (mm, mv, gamma, beta)]
    assert_close(GPU.host(y), R.forward_infer(x, pf[0], pf[1], 1e-3, pf[2], pf[3]))
    dx_ref, dg_ref, db_ref = R.backward_infer(dy, x, axes, pf[0], pf[1], 1e-3, pf[2])
    assert_close(GPU.host(dx), dx_ref)
    assert_close(GPU.host(dgamma), dg_ref.reshape(fshape), np.float32, scale=x.size)
    assert_close(GPU.host(dbeta), db_ref.reshape(fshape), np.float32, scale=x.size)


def test_moments_and_moving_average_on_the_device(rng):
    x = rng.normal(5.0, 2.0, size=(30, 6, 7))
    mean, var = F.moments(GPU.to(x), axis=1)
    ref_mean, ref_var = R.moments(x, (1,))
    # float64 input: statistics to a few ulps, tighter than STATS_RTOL (which float32 input needs)
    np.testing.assert_allclose(GPU.host(mean), ref_mean.reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(GPU.host(var), ref_var.reshape(-1), rtol=1e-12)
    moving = rng.normal(size=6).astype(np.float32)
    stat = rng.normal(size=6).astype(np.float32)
    got = F.moving_average(GPU.to(moving), GPU.to(stat), 0.9)
    np.testing.assert_array_equal(GPU.host(got), F.moving_average(moving, stat, 0.9))
    with pytest.raises(TypeError, match="batch_stat"):
        F.moving_average(GPU.to(moving), stat, 0.9)


@pytest.mark.parametrize("dtype", [np.float16, np.int32])
def test_half_and_integer_input_compute_in_float32(dtype, rng):
    x = (rng.normal(size=(12, 10)) * 4).astype(dtype)
    y, _ = F.batch_norm_train(GPU.to(x), epsilon=1e-3)
    want, _ = F.batch_norm_train(x, epsilon=1e-3)
    assert GPU.host(y).dtype == want.dtype
    assert_close(GPU.host(y), want, np.float32 if dtype == np.float16 else None)


def test_non_contiguous_device_input(rng):
    x = rng.normal(size=(10, 24)).astype(np.float32)
    view = GPU.to(x)[::2, ::3]
    y, _ = F.batch_norm_train(view)
    want, _ = F.batch_norm_train(np.ascontiguousarray(x[::2, ::3]))
    assert_close(GPU.host(y), want)


def _strided_everywhere(a):
    """A device view of ``a`` whose every axis steps over a gap: no two axes merge."""
    big = a
    for ax in range(a.ndim):
        big = big.repeat(2, axis=ax)
    return GPU.to(big)[(slice(None, None, 2),) * a.ndim]


@pytest.mark.parametrize("axis", [[1, 8], -1, [0, 2]])
def test_rank_nine_inputs_and_views(axis, rng, monkeypatch):
    """A gather of more than 8 axes: merged into 8 where the strides allow (a permutation of a
    contiguous array), else through the host (a view strided on every axis)."""
    from numbabn.cuda import engine
    shape = (2, 3, 2, 2, 2, 2, 2, 2, 3)
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    through_host = []
    gather = engine._gather

    def counted(x, shape, strides, out, walk):
        through_host.append(len(engine._merged(shape, strides)[0]) > 8)
        return gather(x, shape, strides, out, walk)
    monkeypatch.setattr(engine, "_gather", counted)
    want_y, want_cache = F.batch_norm_train(x, axis=axis)
    want_dx, want_dgamma, _ = F.batch_norm_backward(dy, want_cache)
    for device_x, device_dy in [(GPU.to(x), GPU.to(dy)),
                                (_strided_everywhere(x), _strided_everywhere(dy))]:
        y, cache = F.batch_norm_train(device_x, axis=axis)
        dx, dgamma, _ = F.batch_norm_backward(device_dy, cache)
        assert_close(GPU.host(y), want_y)
        assert_close(GPU.host(dx), want_dx)
        assert_close(GPU.host(dgamma), want_dgamma)
    assert any(through_host)


def test_results_are_bitwise_reproducible(rng):
    x = GPU.to(rng.normal(size=(37, 11)).astype(np.float32))
    def run():
        y, cache = F.batch_norm_train(x)
        dx, dgamma, _ = F.batch_norm_backward(y, cache)
        return [GPU.host(a) for a in (y, cache.mean, cache.variance, dx, dgamma)]
    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# the layer: same steps on both engines


LAYERS = [
    (dict(momentum=0.5), (8, 6, 6, 5)),                                   # fused path, NHWC
    (dict(axis=1, momentum=0.5), (4, 5, 3, 3)),                           # fused path, NCHW
    (dict(renorm=True, renorm_clipping={"rmax": 1.2, "rmin": 0.9, "dmax": 0.1},
          renorm_momentum=0.5), (24, 5)),
    (dict(virtual_batch_size=2, momentum=0.5), (8, 3, 4)),
    (dict(adjustment=lambda s: (np.linspace(0.9, 1.1, s[-1]), np.linspace(-0.1, 0.1, s[-1]))),
     (16, 7)),
    (dict(center=False, scale=False, dtype="float64"), (16, 7)),
    (dict(dtype="mixed_float16"), (16, 7)),
]


@pytest.mark.parametrize("kwargs, shape", LAYERS, ids=lambda v: str(v)[:40])
def test_layer_steps_agree_with_the_cpu_engine(kwargs, shape, rng):
    cpu, gpu = BN(**kwargs), BN(**kwargs)
    for step, training in enumerate([True, True, False]):
        x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        y_cpu, y_gpu = cpu(x, training=training), gpu(GPU.to(x), training=training)
        assert_close(GPU.host(y_gpu), y_cpu, np.float32, err_msg=f"y step {step}")
        dx_cpu, dx_gpu = cpu.backward(dy), gpu.backward(GPU.to(dy))
        assert_close(GPU.host(dx_gpu), dx_cpu, np.float32, err_msg=f"dx step {step}")
        assert sorted(cpu.grads) == sorted(gpu.grads)
        for key in cpu.grads:
            assert_close(GPU.host(gpu.grads[key]), cpu.grads[key], np.float32, scale=x.size)
        for a, b, w in zip(gpu.get_weights(), cpu.get_weights(), cpu.weights):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype
            assert_close(a, b, np.float32, err_msg=f"{w.name} after step {step}")


def test_weights_stay_consistent_across_devices(rng):
    """CPU, then CUDA, then CPU again equals CPU all along; host edits reach the device."""
    xs = [rng.normal(2.0, 3.0, size=(20, 6)).astype(np.float32) for _ in range(5)]
    ref, mixed = BN(momentum=0.5), BN(momentum=0.5)
    for k, x in enumerate(xs):
        dy = np.linspace(-0.1, 0.1, x.size, dtype=np.float32).reshape(x.shape)
        want = ref(x, training=True)
        ref.backward(dy)
        ref.gamma -= ref.grads["gamma"]
        on_gpu = k in (1, 2)
        got = mixed(GPU.to(x) if on_gpu else x, training=True)
        mixed.backward(GPU.to(dy) if on_gpu else dy)
        mixed.gamma -= mixed.grads["gamma"]             # a device update when grads are device
        assert_close(GPU.host(got), want)
    for a, b in zip(mixed.get_weights(), ref.get_weights()):
        assert_close(a, b)
    mixed.set_weights(ref.get_weights())
    mixed.moving_mean.value[...] = 7.0                  # a host edit, then a device call
    y = GPU.host(mixed(GPU.to(xs[0]), training=False))
    ref.moving_mean.value[...] = 7.0
    assert_close(y, ref(xs[0], training=False))


def test_weights_assign_from_a_device_array(rng):
    layer = BN()
    layer(GPU.to(rng.normal(size=(8, 4)).astype(np.float32)), training=True)
    layer.beta.assign(GPU.to(np.arange(4, dtype=np.float64)))
    np.testing.assert_array_equal(layer.beta.value, np.arange(4, dtype=np.float32))
    with pytest.raises(ValueError, match="beta"):
        layer.beta.assign(GPU.to(np.zeros(5)))


def test_mixing_host_and_device_arrays_is_a_type_error(rng):
    x = rng.normal(size=(16, 4)).astype(np.float32)
    layer = BN()
    layer(GPU.to(x), training=True)
    weights = layer.get_weights()
    with pytest.raises(TypeError, match="`dy` must be on the same device"):
        layer.backward(x)
    layer(x, training=True)
    with pytest.raises(TypeError, match="Received: dy on the CUDA device"):
        layer.backward(GPU.to(x))
    _, cache = F.batch_norm_train(GPU.to(x))
    with pytest.raises(TypeError, match="dy"):
        F.batch_norm_backward(x, cache)
    with pytest.raises(TypeError, match="gamma"):
        F.batch_norm_train(x, gamma=GPU.to(np.ones(4)))
    fresh = BN(momentum=0.5)
    fresh(x, training=True)
    for a, b in zip(layer.get_weights(), weights):       # the failed calls changed nothing
        assert a.shape == b.shape


def test_device_per_feature_arguments(rng):
    x = rng.normal(size=(16, 4)).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, size=4)
    y, _ = F.batch_norm_train(GPU.to(x), gamma=GPU.to(gamma), beta=GPU.to(np.array([0.5])))
    want, _ = F.batch_norm_train(x, gamma=gamma, beta=0.5)
    assert_close(GPU.host(y), want)
    with pytest.raises(ValueError, match="gamma"):
        F.batch_norm_train(GPU.to(x), gamma=GPU.to(np.ones(3)))


# ------------------------------------------------------------------------------------------------
# the real compiler, and CuPy


def test_every_kernel_compiles_to_ptx_for_sm90():
    """Typing of every launched signature and the warp shuffles (absent from the simulator)."""
    pytest.importorskip("numba_cuda", reason="needs numba-cuda (the test extra installs it)")
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(root / "tests" / "ptx_compile.py"), "9", "0"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "shfl.sync" in subprocess.run(
        [sys.executable, "-c", "import numbabn.cuda.kernels as K; from numba import cuda; "
         "from numba import float32, float64, int64; "
         "print(cuda.compile_ptx(K.unit_moments_planes.py_func, (float32[:, :, ::1], int64, "
         "int64, int64, float64[:, ::1], float64[:, ::1], float64[:, ::1]), cc=(9, 0))[0])"],
        env=env, capture_output=True, text=True, timeout=300).stdout
    assert "compiled" in proc.stdout


def _cupy():
    if SIMULATOR:
        pytest.skip("CuPy needs a GPU")
    cupy = pytest.importorskip("cupy")
    if not cupy.is_available():
        pytest.skip("CuPy has no device")
    return cupy


def test_cupy_in_cupy_out_on_the_current_stream(rng):
    cupy = _cupy()
    x = rng.normal(size=(256, 32)).astype(np.float32)
    layer = BN()
    with cupy.cuda.Stream(non_blocking=True) as stream:
        y = layer(cupy.asarray(x), training=True)
        dx = layer.backward(cupy.ones_like(y))
        stream.synchronize()
    assert isinstance(y, cupy.ndarray) and isinstance(dx, cupy.ndarray)
    assert isinstance(layer.grads["gamma"], cupy.ndarray)
    ref = BN()
    assert_close(cupy.asnumpy(y), ref(x, training=True))
    assert_close(cupy.asnumpy(dx), ref.backward(np.ones_like(x)))
    assert_close(layer.moving_mean.value, ref.moving_mean.value)


def test_cupy_non_contiguous_and_transposed(rng):
    cupy = _cupy()
    x = rng.normal(size=(6, 5, 8, 4)).astype(np.float32)
    xt = cupy.asarray(x).transpose(0, 3, 1, 2)          # a channels-first view of NHWC memory
    y, _ = F.batch_norm_train(xt, axis=1)
    want, _ = F.batch_norm_train(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), axis=1)
    assert_close(cupy.asnumpy(y), want)


@pytest.mark.parametrize("engine_name", ["cpu", "cuda"])
def test_each_engine_implements_the_interface(engine_name):
    """Every function of the engine Protocol, with its parameters (names, kinds, defaults);
    and nothing public beyond it."""
    import importlib
    import inspect

    from numbabn import _engine
    eng = importlib.import_module(f"numbabn.{engine_name}")
    wanted = _engine.interface()
    assert sorted(eng.__all__) == sorted(set(wanted) | {"DEVICE"})
    assert eng.DEVICE == engine_name
    for name, signature in wanted.items():
        assert inspect.signature(getattr(eng, name)) == signature, name


@pytest.mark.long        # about a minute; test_matrix.py runs a training step with these tiles
@pytest.mark.skipif(not SIMULATOR, reason="a GPU runs its production tiles in every test")
def test_every_kernel_runs_with_the_gpu_tiles_on_the_simulator():
    """The simulator normally runs scaled-down tiles (every thread is a Python thread); here
    each kernel runs once with the GPU's 32x8 row tiles, 256-thread plane blocks and grids."""
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NUMBABN_CUDA_TILES="production",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(root / "tests" / "cuda" / "production_tiles.py")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failures"] == [] and report["cases"] >= 7

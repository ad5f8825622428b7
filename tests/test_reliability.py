"""The reliability suite: concurrency, child processes, unusual inputs.

* Threads: 8 Python threads run training steps and shared-layer inference for 30 s
  (``NUMBABN_STRESS_SECONDS`` changes it) under each of Numba's threading layers that can load
  here; every result must equal one computed on a single thread, bitwise.
* Processes: ``multiprocessing`` pools with fork and spawn after the parent ran parallel kernels.
* Inputs: non-contiguous, negative strides, read-only, Fortran order, big-endian, more than 2**31
  elements (a broadcast view), NaN and infinity (confined to their channel).

The thread and process checks run in fresh interpreters (``tests/reliability/``): the threading
layer is chosen once per process, and a failure there is an abort or a hang, which a subprocess
turns into a test failure.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_close, threading_layer_env

import numbabn
from numbabn import functional as F
from numbabn import reference as R

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "reliability"
STRESS_SECONDS = float(os.environ.get("NUMBABN_STRESS_SECONDS", "30"))
# the default run's thread check: every case on every thread a few times (-m long: the full time)
SHORT_SECONDS = 3.0


def _layer_env(layer):
    return threading_layer_env(layer, ROOT)


def _run(script, args, layer, timeout):
    try:
        done = subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)],
                              env=_layer_env(layer), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{script} {args} under the {layer} layer hung (killed after {timeout} s): "
                    f"{err.stdout!r} {err.stderr!r}")
    assert done.returncode == 0, (f"{script} under the {layer} layer exited with "
                                  f"{done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("seconds", [pytest.param(SHORT_SECONDS, id="short"),
                                     pytest.param(STRESS_SECONDS, id="stress",
                                                  marks=pytest.mark.long)])
@pytest.mark.parametrize("layer", ["default", "workqueue", "tbb"])
def test_eight_threads_calling_layers(layer, seconds):
    # the default layer (the one users get) for the full time, the others for a third of it
    seconds = seconds if layer == "default" else seconds / 3
    report = _run("threads_check.py", [seconds, 8], layer, timeout=seconds + 240)
    assert report["mismatches"] == [] and min(report["steps"]) > 0
    if layer != "default":
        assert report["layer"] == layer


@pytest.mark.parametrize("layer", ["default", "workqueue", "tbb"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_child_processes_after_parallel_kernels(method, layer):
    report = _run("fork_check.py", [method], layer, timeout=240)
    assert report["same"]


# ------------------------------------------------------------------------------------------------
# unusual memory layouts: every one gives the contiguous input's results


def _layouts(x):
    """``x``'s values in other memory layouts (same logical array)."""
    yield "fortran", np.asfortranarray(x)
    yield "negative-strides", np.ascontiguousarray(x[::-1])[::-1]
    yield "every-other", np.repeat(x, 2, axis=-1)[..., ::2]
    readonly = x.copy()
    readonly.flags.writeable = False
    yield "read-only", readonly
    yield "big-endian", x.astype(x.dtype.newbyteorder(">"))
    flipped = np.flip(np.flip(x, axis=0).copy(), axis=0)
    flipped.flags.writeable = False
    yield "read-only-negative-strides", flipped


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape, axis", [((64, 5), -1), ((6, 4, 5, 7), 1), ((6, 5, 7, 4), -1)])
def test_memory_layouts_give_the_contiguous_results(dtype, shape, axis, rng):
    x = rng.normal(1.0, 2.0, size=shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    want_layer = numbabn.BatchNormalization(axis=axis)
    want = (want_layer(x, training=True), want_layer.backward(dy), want_layer(x))
    for name, variant in _layouts(x):
        before = variant.copy()
        layer = numbabn.BatchNormalization(axis=axis)
        got = (layer(variant, training=True), layer.backward(dy), layer(variant))
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w, err_msg=name)
            assert g.dtype.isnative and g.flags.c_contiguous, name
        np.testing.assert_array_equal(variant, before, err_msg=f"{name}: input modified")
        y, cache = F.batch_norm_train(variant, axis=axis)
        dx, _, _ = F.batch_norm_backward(variant, cache)
        y_ref, cache_ref = F.batch_norm_train(x, axis=axis)
        np.testing.assert_array_equal(y, y_ref, err_msg=name)
        np.testing.assert_array_equal(dx, F.batch_norm_backward(x, cache_ref)[0], err_msg=name)


def test_memory_layouts_on_the_cuda_engine(rng):
    """Views the CUDA engine receives directly: strided, negative strides."""
    from numba import cuda
    x = rng.normal(size=(40, 6)).astype(np.float32)
    want = F.batch_norm_train(x)[0]
    device = cuda.to_device(np.ascontiguousarray(x[::-1]))
    for name, view in [("negative-strides", device[::-1]),
                       ("every-other", cuda.to_device(np.repeat(x, 2, axis=1))[:, ::2])]:
        y, _ = F.batch_norm_train(view)
        assert_close(y.copy_to_host(), want, np.float32, err_msg=name)


# ------------------------------------------------------------------------------------------------
# more than 2**31 elements: index arithmetic must be 64-bit everywhere


def _available_memory():
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


@pytest.mark.long
@pytest.mark.skipif((_available_memory() or 0) < 12 * 2 ** 30,
                    reason="needs about 9 GB of free memory (two 4 GB arrays)")
def test_more_than_two_to_the_31_elements():
    """A float16 broadcast view of 2**31 + 65536 elements (4 GB once made contiguous): the
    statistics and the output are those of the repeated block."""
    block_rows, C = 1024, 64
    repeats = 2 ** 31 // (block_rows * C) + 1
    block = np.random.default_rng(7).normal(3.0, 2.0, size=(block_rows, C)).astype(np.float16)
    x = np.broadcast_to(block, (repeats, block_rows, C))
    assert x.size > 2 ** 31
    layer = numbabn.BatchNormalization(momentum=0.0, dtype="mixed_float16")
    y = layer(x, training=True)
    y_block, mean, var = R.forward_train(block.astype(np.float64), (1,), 1e-3)
    assert_close(layer.moving_mean.value, mean.reshape(-1), np.float32)
    n = x.size // C
    assert_close(layer.moving_variance.value, var.reshape(-1) * n / (n - 1), np.float32)
    for k in (0, repeats // 2, repeats - 1):           # the start, the middle, past 2**31
        assert_close(y[k].astype(np.float64), y_block, np.float16)
    del y


# ------------------------------------------------------------------------------------------------
# NaN and infinity stay in their channel


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # the simulator
@pytest.mark.parametrize("shape, axis", [((50, 4), -1), ((5, 4, 6, 6), 1)])
def test_nan_and_inf_stay_in_their_channel(backend, shape, axis, rng):
    x = rng.normal(size=shape).astype(np.float32)
    index = [slice(None)] * len(shape)

    def channel(c):
        i = list(index)
        i[axis] = c
        return tuple(i)
    x[channel(1)][(0,) * (len(shape) - 1)] = np.nan
    x[channel(2)][(1,) * (len(shape) - 1)] = np.inf
    x[channel(3)][(2,) * (len(shape) - 1)] = -np.inf
    layer = numbabn.BatchNormalization(axis=axis)
    y = backend.host(layer(backend.to(x), training=True))
    dx = backend.host(layer.backward(backend.to(np.ones_like(x))))
    clean = [0]                                 # the one channel of finite values
    axes = (axis % len(shape),)
    want, _, _ = R.forward_train(x[channel(slice(0, 1))].astype(np.float64), axes, 1e-3)
    assert_close(y[channel(slice(0, 1))], want, np.float32)
    assert np.isfinite(dx[channel(slice(0, 1))]).all()
    for c in (1, 2, 3):                          # a non-finite value poisons its own channel only
        assert not np.isfinite(y[channel(c)]).all()
    mean, var = layer.moving_mean.value, layer.moving_variance.value
    assert np.isfinite(mean[clean]).all() and np.isfinite(var[clean]).all()
    # as in TensorFlow: the variance is NaN for all three (inf - inf), the mean NaN, +inf, -inf
    assert np.isnan(mean[1]) and np.isnan(var[1]) and np.isnan(var[2]) and np.isnan(var[3])
    assert mean[2] == np.inf and mean[3] == -np.inf


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # inf - inf
@pytest.mark.parametrize("shape, axis, vbs", [((4096, 3), -1, None), ((64, 3), -1, 4),
                                              ((4, 3, 10, 13), 1, None), ((8, 3, 5, 5), 1, 2)])
def test_infinite_feature_means_match_tensorflow(backend, shape, axis, vbs, rng):
    """Mean of a feature with infinities of one sign: that infinity, however the values fall
    into work units and ghost groups; both signs or a NaN: NaN. With and without a mask."""
    x = rng.normal(size=shape)
    index = [slice(None)] * len(shape)
    for c, values in [(1, [np.inf, np.inf]), (2, [np.inf, -np.inf]), (0, [-np.inf])]:
        index[axis] = c
        flat = x[tuple(index)].reshape(-1)          # a copy for planes, written back below
        flat[[0, flat.size - 1][:len(values)]] = values
        x[tuple(index)] = flat.reshape(x[tuple(index)].shape)
    mean, _ = F.moments(backend.to(x), axis=axis, virtual_batch_size=vbs)
    with np.errstate(invalid="ignore"):
        want, _ = R.moments(x, ((axis % len(shape)),), vbs)
    assert not np.isfinite(want).all()
    assert_close(backend.host(mean).reshape(-1), want.reshape(-1), np.float64)  # inf/NaN exact
    if vbs is None:
        mask_shape = tuple(d for i, d in enumerate(shape) if i != axis % len(shape))
        mask = np.ones(mask_shape, bool)
        mask.reshape(-1)[1] = False                 # one position out: the sums must skip it
        _, cache = F.batch_norm_train(backend.to(x), axis=axis, mask=backend.to(mask))
        kept = np.expand_dims(mask, axis % len(shape))
        with np.errstate(invalid="ignore"):
            want = np.where(kept, x, 0.0).sum(axis=tuple(a for a in range(len(shape))
                                                         if a != axis % len(shape)))
        want = want / mask.sum()
        assert_close(backend.host(cache.mean).reshape(-1), want, np.float64)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # inf - inf
@pytest.mark.parametrize("shape, axis", [((32, 40), -1), ((16, 40, 3, 3), 1)])
def test_many_non_finite_means_are_summed_in_one_pass(shape, axis, rng):
    """More than a few NaN means (an all-NaN or inf-laden ghost batch) take the vectorized path:
    the same plain sums as the reference, group by group and feature by feature."""
    x = rng.normal(size=shape).astype(np.float32)
    index = [slice(None)] * len(shape)
    for c in range(0, 40, 3):                     # 14 features x 8 groups > 64 NaN means
        index[axis] = c
        x[tuple(index)] = np.inf if c % 2 else -np.inf
    index[axis] = 7
    x[tuple(index)] = np.nan
    mean, _ = F.moments(x, axis=axis, virtual_batch_size=2)
    with np.errstate(invalid="ignore"):
        want, _ = R.moments(x.astype(np.float64), ((axis % len(shape)),), 2)
    assert_close(mean.reshape(-1), want.reshape(-1), np.float64)
    everything = np.full(shape, np.nan, np.float32)
    mean, _ = F.moments(everything, axis=axis, virtual_batch_size=2)
    assert np.isnan(mean).all()


def test_an_all_nan_ghost_batch_takes_the_vectorized_path(monkeypatch):
    """The NaN means of an all-NaN ghost batch (every group and feature) are redone in one pass,
    not one NumPy call per (group, feature) as before (that made it 300x a finite batch)."""
    from numbabn.cpu import engine
    one_by_one = []
    sum_means = engine._sum_means
    monkeypatch.setattr(engine, "_sum_means", lambda *a: one_by_one.append(1) or sum_means(*a))
    x = np.full((256, 1024), np.nan, np.float32)
    with np.errstate(invalid="ignore"):
        y = numbabn.BatchNormalization(virtual_batch_size=8)(x, training=True)
    assert np.isnan(y).all() and not one_by_one


def test_ctrl_c_in_the_middle_of_a_renorm_commit_is_held_until_it_ends(monkeypatch):
    """Deterministic: SIGINT sent from inside the first of renorm's statistic updates."""
    import os
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("KeyboardInterrupt reaches the main thread only")
    from numbabn import cpu
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    layer = numbabn.BatchNormalization(renorm=True, momentum=0.5, renorm_momentum=0.5)
    twin = numbabn.BatchNormalization(renorm=True, momentum=0.5, renorm_momentum=0.5)
    layer(x, training=True)
    twin(x, training=True)
    twin(x, training=True)
    update = cpu.moving_averages

    def interrupted_update(*args, **kwargs):
        update(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C now, between two updates
    monkeypatch.setattr(cpu, "moving_averages", interrupted_update)
    with pytest.raises(KeyboardInterrupt):
        layer(x, training=True)
    for got, want in zip(layer.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

"""Synchronized batch norm: mpiexec runs on localhost, and the in-process rules.

The multi-process checks live in ``tests/mpi/sync_check.py`` (P ranks against one process on the
concatenated batch, uneven and empty shares, every layer feature); here they are launched with
2 and 3 ranks, once on the CUDA engine, and once with a rank that fails, which must bring the
whole job down instead of leaving the others waiting in a collective.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_close

import numbabn

MPI = pytest.importorskip("mpi4py.MPI", reason="needs mpi4py (the test extra installs it)")
ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "mpi" / "sync_check.py"


def mpiexec():
    found = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(pathlib.Path(
        sys.executable).parent))
    if found is None:
        pytest.fail("mpiexec not found: pip install mpich (the test extra installs it)")
    return found


def launch(ranks, *args, timeout=300):
    env = dict(os.environ, NUMBA_NUM_THREADS="1",     # ranks share the cores
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py",
                           str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_match_one_process_on_the_concatenated_batch(ranks):
    proc = launch(ranks)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("checks passed") == ranks


def test_synchronized_cuda_engine():
    proc = launch(2, "--backend", "cuda", "--cases", "nc,renorm,ghost", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("checks passed") == 2


def test_a_failing_rank_aborts_the_job():
    proc = launch(3, "--fail-rank", "1", timeout=120)
    assert proc.returncode != 0
    assert "fails on purpose" in proc.stderr + proc.stdout


def test_one_process_communicator_changes_nothing(rng):
    x = rng.normal(2.0, 3.0, size=(32, 6)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    sync = numbabn.BatchNormalization(synchronized=True, comm=MPI.COMM_SELF, momentum=0.5)
    plain = numbabn.BatchNormalization(momentum=0.5)
    for _ in range(2):
        assert_close(sync(x, training=True), plain(x, training=True))
        assert_close(sync.backward(dy), plain.backward(dy))
        for a, b in zip(sync.get_weights(), plain.get_weights()):
            assert_close(a, b)


def test_config_and_argument_checks():
    layer = numbabn.BatchNormalization(synchronized=True)       # COMM_WORLD by default
    assert layer.get_config()["synchronized"] is True
    assert numbabn.BatchNormalization.from_config(layer.get_config()).synchronized
    with pytest.raises(TypeError, match="synchronized"):
        numbabn.BatchNormalization(synchronized="yes")
    with pytest.raises(ValueError, match="Received: comm="):
        numbabn.BatchNormalization(comm=MPI.COMM_SELF)
    with pytest.raises(TypeError, match="Received: comm="):
        numbabn.BatchNormalization(synchronized=True, comm=object())


@pytest.mark.parametrize("kwargs", [{}, dict(virtual_batch_size=2), dict(renorm=True)], ids=str)
def test_an_empty_batch_on_every_process_changes_nothing(kwargs):
    layer = numbabn.BatchNormalization(synchronized=True, comm=MPI.COMM_SELF, **kwargs)
    layer(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), training=True)
    before = layer.get_weights()
    y = layer(np.ones((0, 3), np.float32), training=True)
    assert y.shape == (0, 3)
    for a, b in zip(layer.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert layer.backward(np.ones((0, 3), np.float32)).shape == (0, 3)
    for grad in layer.grads.values():
        np.testing.assert_array_equal(grad, 0.0)


def test_data_parallel_example_follows_the_single_process_loss_curve():
    """examples/data_parallel.py: the demo network on 2 ranks, against 1 process."""
    pytest.importorskip("sklearn")
    env = dict(os.environ, NUMBA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py",
                           str(ROOT / "examples" / "data_parallel.py"), "--steps", "60",
                           "--check"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "largest loss difference" in proc.stdout

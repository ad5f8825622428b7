"""Synchronized batch norm on P ranks against one process on the concatenated batch.

Run under MPI, e.g. ``mpiexec -n 3 python -m mpi4py tests/mpi/sync_check.py`` (``-m mpi4py``
aborts every rank when one raises, so a failure can never leave the others waiting).
``tests/test_distributed.py`` runs it with 2 and 3 ranks.

Every rank draws the same global batches (one seed), takes its share of each (uneven, and one
rank gets an empty share in some steps), and compares, step by step: its slice of the outputs and
input gradients, the parameter gradients and every weight, with those of a plain layer that sees
the whole batch. Ghost batches stay within a rank, so there the reference is each rank's own
batch, with moving statistics averaged over the groups of every rank.
"""
import argparse
import pathlib
import sys

import numpy as np
from mpi4py import MPI

import numbabn

# float32 results of two summation orders differ by a few ulps of values of order 1
RTOL = ATOL = 5e-5

CASES = {
    "nc": (dict(momentum=0.9), (5, 7)),
    "nhwc-fused": (dict(momentum=0.5), (3, 4, 4, 6)),
    "nchw-fused": (dict(axis=1, momentum=0.5), (3, 6, 3, 3)),
    "renorm": (dict(renorm=True, renorm_clipping={"rmax": 1.5, "rmin": 0.8, "dmax": 0.2},
                    renorm_momentum=0.8, momentum=0.8), (4, 5)),
    "adjustment": (dict(adjustment=lambda shape: (np.float32(1.1), np.float32(-0.2))), (4, 5)),
    "multi-axis": (dict(axis=[1, 3], momentum=0.7), (3, 4, 2, 3)),
}


def shares(batch, size, step):
    """Uneven split points of a batch over ``size`` ranks; some steps leave a rank empty."""
    weights = np.arange(1, size + 1, dtype=float)
    if step % 2 == 1:
        weights[(step // 2) % size] = 0.0                 # this rank gets nothing
    cuts = np.floor(np.cumsum(weights) / weights.sum() * batch).astype(int)
    return np.concatenate([[0], cuts])


def check(label, got, want):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=RTOL, atol=ATOL, err_msg=label)


def run_case(name, comm, backend, steps=4):
    kwargs, unit = CASES[name]
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(7)
    sync = numbabn.BatchNormalization(synchronized=True, comm=comm, **kwargs)
    whole = numbabn.BatchNormalization(**kwargs)
    batch = 4 * size + 3
    checks = 0
    for step in range(steps):
        x = rng.normal(2.0, 3.0, size=(batch,) + unit[1:]).astype(np.float32)
        dy = rng.normal(size=x.shape).astype(np.float32)
        cut = shares(batch, size, step)
        lo, hi = cut[rank], cut[rank + 1]
        y_all = whole(x, training=True)
        dx_all = whole.backward(dy)
        y = backend.host(sync(backend.to(x[lo:hi]), training=True))
        dx = backend.host(sync.backward(backend.to(dy[lo:hi])))
        check(f"{name} y step {step}", y, y_all[lo:hi])
        check(f"{name} dx step {step}", dx, dx_all[lo:hi])
        for key, g in whole.grads.items():
            check(f"{name} d{key} step {step}", backend.host(sync.grads[key]), g)
        for w_sync, w_all, var in zip(sync.get_weights(), whole.get_weights(), whole.weights):
            check(f"{name} {var.name} step {step}", w_sync, w_all)
        inference = backend.host(sync(backend.to(x[lo:hi]), training=False))
        check(f"{name} inference step {step}", inference, whole(x[lo:hi], training=False))
        checks += 6
    return checks


def run_ghost(comm, backend, steps=3):
    """Ghost groups stay within a rank; moving statistics average every rank's groups."""
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(11)
    vbs, momentum = 2, 0.5
    sync = numbabn.BatchNormalization(virtual_batch_size=vbs, momentum=momentum,
                                      synchronized=True, comm=comm)
    local = numbabn.BatchNormalization(virtual_batch_size=vbs, momentum=momentum)
    moving_mean, moving_var = np.zeros(5), np.ones(5)
    for step in range(steps):
        sizes = [vbs * (1 + (r + step) % 3) for r in range(size)]
        xs = [rng.normal(1.0, 2.0, size=(n, 5)).astype(np.float32) for n in sizes]
        dys = [rng.normal(size=(n, 5)).astype(np.float32) for n in sizes]
        y = backend.host(sync(backend.to(xs[rank]), training=True))
        check(f"ghost y step {step}", y, local(xs[rank], training=True))
        check(f"ghost dx step {step}", backend.host(sync.backward(backend.to(dys[rank]))),
              local.backward(dys[rank]))
        means, variances, dgamma = [], [], 0.0
        for x, dy in zip(xs, dys):
            groups = x.reshape(-1, len(x) // vbs, 5)    # sample j is in group j % G
            means += list(groups.mean(axis=0, dtype=np.float64))
            variances += list(groups.var(axis=0, dtype=np.float64))
            alone = numbabn.BatchNormalization(virtual_batch_size=vbs)
            alone(x, training=True)
            alone.backward(dy)
            dgamma = dgamma + alone.grads["gamma"]
        moving_mean -= (moving_mean - np.mean(means, axis=0)) * (1 - momentum)
        moving_var -= (moving_var - np.mean(variances, axis=0)) * (1 - momentum)
        check(f"ghost moving mean step {step}", sync.moving_mean.value.reshape(-1), moving_mean)
        check(f"ghost moving variance step {step}", sync.moving_variance.value.reshape(-1),
              moving_var)
        check(f"ghost dgamma step {step}", backend.host(sync.grads["gamma"]).reshape(-1),
              np.asarray(dgamma).reshape(-1))
    return 5 * steps


class Host:
    def to(self, x):
        return x

    def host(self, a):
        return a


class Device:
    def __init__(self):
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
        import simulator_fix
        simulator_fix.install()

    def to(self, x):
        from numba import cuda
        return cuda.to_device(np.ascontiguousarray(x))

    def host(self, a):
        return a if isinstance(a, np.ndarray) else a.copy_to_host()


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(list(CASES) + ["ghost"]))
    parser.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--fail-rank", type=int, default=None,
                        help="this rank raises before its first collective (tests the abort)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    backend = Device() if args.backend == "cuda" else Host()
    if args.fail_rank == comm.Get_rank():
        raise RuntimeError(f"rank {comm.Get_rank()} fails on purpose")
    checks = 0
    for name in args.cases.split(","):
        checks += run_ghost(comm, backend) if name == "ghost" else run_case(name, comm, backend)
    total = comm.allreduce(checks)
    print(f"rank {comm.Get_rank()}/{comm.Get_size()}: {checks} checks passed "
          f"({total} on all ranks)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

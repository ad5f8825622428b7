"""What synchronization costs per training step: a synchronized layer against a plain one.

    mpiexec -n 2 python -m mpi4py examples/sync_overhead.py

Every rank times forward + backward of the same local batch on a plain layer and on a
``synchronized=True`` layer (one all-gather per forward, one per backward), interleaved, and
rank 0 prints the medians and their difference: the price of seeing the whole batch.
"""
import argparse
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

import numbabn

SHAPES = {"small": (256, 64), "NC": (8192, 256), "NHWC": (8, 56, 56, 128)}


def step(layer, x, dy):
    layer(x, training=True)
    layer.backward(dy)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(comm.rank)
    if comm.rank == 0:
        print(f"{comm.size} ranks; per-rank shapes; medians of {args.repeats} steps")
        print(f"{'case':6} {'shape':>20} {'plain ms':>9} {'sync ms':>9} {'overhead':>12}")
    for name, shape in SHAPES.items():
        x = rng.normal(size=shape).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        plain = numbabn.BatchNormalization()
        sync = numbabn.BatchNormalization(synchronized=True, comm=comm)
        step(plain, x, dy)
        step(sync, x, dy)
        times = {"plain": [], "sync": []}
        for _ in range(args.repeats):
            for label, layer in (("plain", plain), ("sync", sync)):
                comm.Barrier()                    # every rank starts the step together
                t0 = time.perf_counter()
                step(layer, x, dy)
                times[label].append(time.perf_counter() - t0)
        # a step is as slow as its slowest rank
        medians = {k: comm.allreduce(statistics.median(v), op=MPI.MAX) for k, v in times.items()}
        if comm.rank == 0:
            extra = medians["sync"] - medians["plain"]
            print(f"{name:6} {str(shape):>20} {medians['plain'] * 1e3:9.3f} "
                  f"{medians['sync'] * 1e3:9.3f} {extra * 1e6:8.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())

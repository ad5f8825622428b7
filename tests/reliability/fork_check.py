"""Child processes after numbabn has run parallel kernels in the parent.

Run as a script: ``python fork_check.py START_METHOD``. The parent runs a training step large
enough for the parallel kernels, then a ``multiprocessing`` pool of that start method runs
training steps in its children; their results must equal the parent's bitwise. Prints one JSON
line and exits 0 on success.
"""
import json
import multiprocessing
import sys

import numba
import numpy as np

import numbabn

SHAPES = [(65536, 32), (8, 16, 32, 32)]


def train(case):
    shape = SHAPES[case]
    x = np.random.default_rng(case).normal(1.0, 2.0, size=shape).astype(np.float32)
    layer = numbabn.BatchNormalization(axis=-1 if len(shape) == 2 else 1)
    y = layer(x, training=True)
    dx = layer.backward(np.cos(x))
    return y, dx, layer.moving_variance.value


def main(method):
    parent = [train(case) for case in range(len(SHAPES))]
    layer_in_parent = numba.threading_layer()
    with multiprocessing.get_context(method).Pool(2) as pool:
        children = pool.map(train, list(range(len(SHAPES))) * 2)
    same = all(np.array_equal(a, b) for got, want in zip(children, parent * 2)
               for a, b in zip(got, want))
    print(json.dumps({"method": method, "layer": layer_in_parent, "same": same}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

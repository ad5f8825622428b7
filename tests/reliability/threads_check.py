"""Python threads calling layers at the same time, for a while: no crash, exact results.

Run as a script: ``python threads_check.py SECONDS THREADS``. Each thread repeats whole training
steps on its own layers (training forward, backward, inference forward) and inference on layers
shared by every thread, and compares every result bitwise with one computed beforehand on a
single thread. Prints one JSON line: the threading layer, the steps done, the mismatches.
"""
import json
import sys
import threading
import time

import numba
import numpy as np

import numbabn

# Large enough for the parallel kernels (more than 32768 elements), one small (serial kernels),
# channels last and channels first, a transposed view, ghost batches and renorm.
CASES = [
    ((65536, 32), dict()),
    ((8, 16, 32, 32), dict(axis=1)),
    ((300, 7), dict()),
    ((4, 64, 64, 8), dict(virtual_batch_size=2)),
    ((16, 12, 20, 20), dict(axis=[1, 3], renorm=True)),
]


def main(seconds, n_threads):
    rng = np.random.default_rng(0)
    inputs = [rng.normal(2.0, 3.0, size=shape).astype(np.float32) for shape, _ in CASES]
    grads = [rng.normal(size=shape).astype(np.float32) for shape, _ in CASES]

    def fresh(i):
        return numbabn.BatchNormalization(momentum=0.9, **CASES[i][1])

    def step(layer, i):
        y = layer(inputs[i], training=True).copy()
        dx = layer.backward(grads[i]).copy()
        return y, dx, layer(inputs[i], training=False).copy(), layer.moving_mean.value.copy()

    expected = [step(fresh(i), i) for i in range(len(CASES))]
    shared = [fresh(i) for i in range(len(CASES))]
    for i, layer in enumerate(shared):
        layer(inputs[i], training=True)
    shared_expected = [layer(inputs[i]).copy() for i, layer in enumerate(shared)]

    mismatches, steps = [], [0] * n_threads
    stop = time.monotonic() + seconds

    def work(t):
        k = 0
        while time.monotonic() < stop and not mismatches:
            i = (t + k) % len(CASES)
            k += 1
            for name, got, want in zip(("y", "dx", "inference", "moving_mean"),
                                       step(fresh(i), i), expected[i]):
                if not np.array_equal(got, want):
                    mismatches.append(f"thread {t}, case {i}: {name}")
            if not np.array_equal(shared[i](inputs[i]), shared_expected[i]):
                mismatches.append(f"thread {t}, case {i}: shared-layer inference")
            steps[t] += 1

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"layer": numba.threading_layer(), "steps": steps,
                      "mismatches": mismatches[:10]}))
    return 1 if mismatches or min(steps) == 0 else 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]), int(sys.argv[2])))

"""Batch norm inside training loops: whole NumPy training steps, and a layer step between matmuls.

``TrainingStep`` times one SGD step of the networks in ``numbabn.tools.nets`` (forward, loss,
backward, update) with numbabn's batch norm and, as the baseline a NumPy user has otherwise, a
plain NumPy batch norm; ``track_bn_share`` is the fraction of the step spent inside batch norm.
``Interleaved`` times a layer training step followed by a NumPy matmul, the pattern in which two
thread pools (Numba's and OpenBLAS's) meet; ``track_interference`` is that pair's time over the
two timed apart (1.0: no interference). ``python -m numbabn loop`` adds PyTorch eager.
"""
import numpy as np

import numbabn
from numbabn.tools import loopbench, nets
from numbabn.tools.shapes import PAIR_MATMUL, PAIR_SHAPES
from numbabn.tools.timing import sample

from .common import rng

WARMUP_STEPS = 20


class TrainingStep:
    params = [list(nets.NETWORKS), ["numbabn", "numpy"]]
    param_names = ["network", "norm"]

    def setup(self, network, norm):
        self.net = nets.NETWORKS[network]["make"](norm)
        self.x, self.labels = nets.make_batch(network)
        for _ in range(WARMUP_STEPS):       # compiles, and lets the serial/parallel choice settle
            self.net.step(self.x, self.labels)

    def time_step(self, network, norm):
        self.net.step(self.x, self.labels)

    def peakmem_step(self, network, norm):
        self.net.step(self.x, self.labels)

    def track_bn_share(self, network, norm):
        steps = 10
        self.net.timer.reset()
        per_step = sample(lambda: self.net.step(self.x, self.labels), inner=steps)
        return round(self.net.timer.seconds / (steps * per_step), 3)

    track_bn_share.unit = "fraction"


class Interleaved:
    params = [["x".join(map(str, shape)) for shape in PAIR_SHAPES]]
    param_names = ["shape"]
    MATMUL = PAIR_MATMUL

    def setup(self, shape):
        dims = tuple(int(d) for d in shape.split("x"))
        self.x = rng(0).standard_normal(dims, dtype=np.float32)
        self.dy = rng(1).standard_normal(dims, dtype=np.float32)
        self.a = rng(2).standard_normal((self.MATMUL, self.MATMUL), dtype=np.float32)
        self.b = rng(3).standard_normal((self.MATMUL, self.MATMUL), dtype=np.float32)
        self.layer = numbabn.BatchNormalization()
        for _ in range(30):
            self.pair()

    def step(self):
        self.layer(self.x, training=True)
        self.layer.backward(self.dy)

    def pair(self):
        self.step()
        self.a @ self.b

    def time_step_then_matmul(self, shape):
        self.pair()

    def track_interference(self, shape):
        dims = tuple(int(d) for d in shape.split("x"))
        (row,) = loopbench.time_pairs([dims], calls=150, matmul=self.MATMUL, rounds=3)
        return round(row["ratio"], 3)

    track_interference.unit = "ratio"

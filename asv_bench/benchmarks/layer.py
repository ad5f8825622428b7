"""The layer as users call it: ``layer(x, training=...)`` and ``layer.backward(dy)``.

One class per operation, so that each ``peakmem_`` process holds only what that operation needs
(the process high-water mark also counts ``setup``, whose warm-up call runs the same operation).
Every ``setup`` calls the measured operation once on the same arrays: Numba compiles a kernel (or
loads it from the on-disk cache) on its first call, and that must never be timed.
"""
import numbabn
from numbabn.tools.timing import median_seconds
from numbabn.tools.traffic import gb_per_s

from .common import CASES, PATH_CASES, VIRTUAL_BATCH_SIZE, make_input

RENORM = {"renorm": True}
GHOST = {"virtual_batch_size": VIRTUAL_BATCH_SIZE}


def step(layer, x, dy):
    """One training step of the layer as a training loop makes it: forward, then backward."""
    layer(x, training=True)
    return layer.backward(dy)


class _LayerCase:
    params = [list(CASES)]
    param_names = ["case"]
    options = {}                  # constructor arguments besides ``axis``

    def setup(self, case):
        self.x = make_input(case)
        self.layer = numbabn.BatchNormalization(axis=CASES[case].axis, **self.options)


class TrainingForward(_LayerCase):
    """``layer(x, training=True)``: batch statistics, normalization, moving-average update."""

    def setup(self, case):
        super().setup(case)
        self.layer(self.x, training=True)

    def time_forward(self, case):
        self.layer(self.x, training=True)

    def peakmem_forward(self, case):
        self.layer(self.x, training=True)

    def track_bandwidth(self, case):
        # The least traffic a training forward can make (numbabn.tools.traffic): one read of x
        # for the statistics, then one copy's worth (read x, write y) to normalize. Timed here,
        # since a track_ benchmark reports a derived number rather than asv's own timing.
        seconds = median_seconds(lambda: self.layer(self.x, training=True), repeats=5,
                                 min_time=0.25)
        return round(gb_per_s("train", self.x.nbytes, seconds), 2)

    track_bandwidth.unit = "GB/s"


class InferenceForward(_LayerCase):
    """``layer(x, training=False)``: normalization by the moving statistics."""

    def setup(self, case):
        super().setup(case)
        self.layer(self.x, training=False)

    def time_forward(self, case):
        self.layer(self.x, training=False)

    def peakmem_forward(self, case):
        self.layer(self.x, training=False)


class Backward(_LayerCase):
    """``layer.backward(dy)`` after a training forward (run in ``setup``, not timed)."""

    def setup(self, case):
        super().setup(case)
        self.dy = make_input(case, stream=1)
        self.layer(self.x, training=True)
        self.layer.backward(self.dy)

    def time_backward(self, case):
        self.layer.backward(self.dy)

    def peakmem_backward(self, case):
        self.layer.backward(self.dy)


class TrainingStep(_LayerCase):
    """A full training step: the training forward, then the backward."""

    def setup(self, case):
        super().setup(case)
        self.dy = make_input(case, stream=1)
        step(self.layer, self.x, self.dy)

    def time_step(self, case):
        step(self.layer, self.x, self.dy)

    def peakmem_step(self, case):
        step(self.layer, self.x, self.dy)


# Batch renormalization: adds the r/d correction and two more moving statistics.
class RenormTrainingForward(TrainingForward):
    params = [PATH_CASES]
    options = RENORM


class RenormBackward(Backward):
    params = [PATH_CASES]
    options = RENORM


class RenormTrainingStep(TrainingStep):
    params = [PATH_CASES]
    options = RENORM


# Ghost batch normalization: statistics per group of samples (j, j + G, ...).
class GhostTrainingForward(TrainingForward):
    params = [PATH_CASES]
    options = GHOST


class GhostBackward(Backward):
    params = [PATH_CASES]
    options = GHOST


class GhostTrainingStep(TrainingStep):
    params = [PATH_CASES]
    options = GHOST

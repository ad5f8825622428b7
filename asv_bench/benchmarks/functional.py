"""The stateless ops of ``numbabn.functional``: no layer, no moving statistics, no weights.

Set out like ``layer.py``: one class per op, and a ``setup`` that calls the op once so that
kernel compilation is never timed.
"""
from numbabn import functional as F

from .common import CASES, make_input, per_feature


class _FunctionalCase:
    params = [list(CASES)]
    param_names = ["case"]

    def setup(self, case):
        self.x = make_input(case)
        self.axis = CASES[case].axis
        self.gamma = per_feature(case, 1.5)
        self.beta = per_feature(case, 0.5)


class Moments(_FunctionalCase):
    """``moments``: per-feature mean and biased variance (the read-only pass)."""

    def setup(self, case):
        super().setup(case)
        F.moments(self.x, axis=self.axis)

    def time_moments(self, case):
        F.moments(self.x, axis=self.axis)

    def peakmem_moments(self, case):
        F.moments(self.x, axis=self.axis)


class TrainingForward(_FunctionalCase):
    """``batch_norm_train``: batch statistics, then normalization with gamma and beta."""

    def setup(self, case):
        super().setup(case)
        self.train()

    def train(self):
        return F.batch_norm_train(self.x, self.gamma, self.beta, axis=self.axis)

    def time_forward(self, case):
        self.train()

    def peakmem_forward(self, case):
        self.train()


class InferenceForward(_FunctionalCase):
    """``batch_norm_infer``: normalization by given statistics."""

    def setup(self, case):
        super().setup(case)
        self.mean = per_feature(case, 3.0)
        self.variance = per_feature(case, 4.0)
        self.infer()

    def infer(self):
        return F.batch_norm_infer(self.x, self.mean, self.variance, self.gamma, self.beta,
                                  axis=self.axis)

    def time_forward(self, case):
        self.infer()

    def peakmem_forward(self, case):
        self.infer()


class Backward(_FunctionalCase):
    """``batch_norm_backward`` of a ``batch_norm_train`` call (made in ``setup``, not timed)."""

    def setup(self, case):
        super().setup(case)
        self.dy = make_input(case, stream=1)
        _, self.cache = F.batch_norm_train(self.x, self.gamma, self.beta, axis=self.axis)
        F.batch_norm_backward(self.dy, self.cache)

    def time_backward(self, case):
        F.batch_norm_backward(self.dy, self.cache)

    def peakmem_backward(self, case):
        F.batch_norm_backward(self.dy, self.cache)

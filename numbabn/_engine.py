"""The interface every engine module (``numbabn.cpu``, ``numbabn.cuda``) offers.

An engine is a module of functions on its own arrays (NumPy, Numba device arrays) in the
canonical views of ``numbabn/_layout.py``: ``x[R, C]`` (rows) or ``x[R, C, I]`` (planes), ``R``
rows of ``N`` samples of ``rows_per_sample`` rows each, sample ``n`` in ghost group
``n % groups``. Per-(group, feature) arrays are ``(groups, C)``, per-feature ones flat ``(C,)``;
statistics are float64. ``numbabn/_ops.py`` composes these primitives into batch
normalization; nothing else calls them, and they validate nothing.

``tests/test_engine.py`` checks that both engines define every function here with these
parameters (names, order and defaults).
"""
from typing import Protocol


class Placement(Protocol):
    """Where arrays live, and how an input becomes the canonical view and back."""

    DEVICE: str                          # the dispatcher's name for the engine: "cpu", "cuda"

    def adopt(self, x):
        """``(array, wrap)``: ``x`` as an engine array, and the function that turns engine
        arrays back into arrays of ``x``'s kind."""

    def to_host(self, a):
        """A NumPy array of ``a``'s values."""

    def to_device(self, values, like=None):
        """Host ``values`` as an engine array (ordered with ``like``'s work)."""

    def constant(self, channels, value, like=None):
        """A shared read-only ``(C,)`` float64 vector of ``value``."""

    def canonical(self, x, layout, dtype):
        """``x`` as the kernels read it for a computation in ``dtype``."""

    def restore(self, y, layout, dtype):
        """The inverse of :meth:`canonical`, in ``dtype``."""

    def astype(self, x, dtype):
        """``x`` in ``dtype`` (itself when it already is)."""

    def copy(self, x, like=None):
        """A new array of ``x``'s values (queued with ``like``'s work when given)."""

    def empty(self, shape, dtype, like=None):
        """A new uninitialized array."""

    def add_scaled(self, out, delta, alpha):
        """In place ``out += alpha * delta``."""

    def assign(self, out, values):
        """In place ``out[...] = values``."""

    def as_vector(self, a):
        """A per-feature array (a weight) as the flat vector the kernels take."""

    def mask_weights(self, mask, layout):
        """A validated mask as the canonical weights of :meth:`Primitives.masked_moments`."""


class Primitives(Protocol):
    """Reductions, O(C) coefficient passes and elementwise passes of batch normalization."""

    def moments(self, x, rows_per_sample, groups):
        """``(mean, var)``, ``(groups, C)``: per-group mean and biased variance."""

    def masked_moments(self, x, w):
        """``(mean, var, count)`` of the positions whose weight is true (one group)."""

    def group_average(self, mean, var):
        """The per-feature averages over groups, two ``(C,)`` vectors."""

    def forward_coefficients(self, x, mean, var, epsilon, affine):
        """``(inv_std, m_hi, a, b)`` of ``y = (x - m_hi) * a + b`` for ``affine``."""

    def affine(self, x, rows_per_sample, groups, m, a, b, out=None, dtype=None):
        """``(x - m) * a + b`` per (group, feature)."""

    def grad_sums(self, x, dy, rows_per_sample, groups, m_hi):
        """``(sum(dy), sum(dy * (x - m_hi)))`` per (group, feature), float64."""

    def gradient_coefficients(self, x, sum_dy, sum_dyxc, mean, m_hi, inv_std, count, training,
                              affine):
        """``(dy_mean, k_dy, k_xc, k_0, dgamma, dbeta)`` from :meth:`grad_sums`."""

    def grad_input(self, x, dy, rows_per_sample, groups, weights, m_hi, dy_mean, k_dy, k_xc,
                   k_0, out=None, dtype=None):
        """``dx = k_dy * (dy - dy_mean) + k_xc * (x - m_hi) + k_0``."""

    def train_small(self, x, epsilon, affine, out=None, dtype=None):
        """``(y, mean, var, inv_std, m_hi)`` of a one-group training pass in one kernel, or
        None where the engine has none for ``x`` (then :meth:`moments`,
        :meth:`forward_coefficients` and :meth:`affine` run)."""

    def infer_small(self, x, mean, var, epsilon, affine, out=None, dtype=None):
        """``(y, mean, var, inv_std, m_hi)``: :meth:`forward_coefficients` and :meth:`affine`
        in one kernel, the given statistics returned as float64 copies, or None."""

    def backward_small(self, x, dy, mean, m_hi, inv_std, count, training, affine, out=None,
                       dtype=None):
        """``(dx, dgamma, dbeta)`` of a one-group input in one kernel, or None."""

    def renorm_correction(self, mean, var, renorm_mean, renorm_stddev, epsilon, rmin, rmax,
                          dmax):
        """Batch renormalization's ``(r, d)``, float64 ``(C,)``."""

    def moving_averages(self, first, first_stat, second, second_stat, decay, second_scale=1.0):
        """In place ``moving -= (moving - stat) * decay`` for two weights."""

    def stddev(self, var, epsilon):
        """``sqrt(var + epsilon)``, float64."""

    def variance_from_stddev(self, variance, stddev_, epsilon):
        """In place ``variance = max(stddev^2 - epsilon, 0)``."""


class RankMath(Protocol):
    """Combining rows gathered from every process, in rank order (for ``distributed.py``)."""

    def stack(self, arrays):
        """Arrays of one size as the rows of a float64 ``(k, n)`` array."""

    def combine_moments(self, gathered):
        """Chan's merge of per-rank ``(count, mean, M2)`` rows: ``(mean, var, count)``."""

    def sum_over_ranks(self, gathered):
        """The sum over ranks of ``gathered[P, k, n]``."""

    def weighted_average(self, gathered):
        """The average over ranks of per-rank rows weighted by their first row."""


class Engine(Placement, Primitives, RankMath, Protocol):
    """The whole interface of an engine module."""


def interface():
    """``{name: inspect.Signature}`` of every function of :class:`Engine` (without ``self``)."""
    import inspect
    out = {}
    for cls in (Placement, Primitives, RankMath):
        for name, member in vars(cls).items():
            if inspect.isfunction(member) and not name.startswith("_"):
                sig = inspect.signature(member)
                out[name] = sig.replace(parameters=list(sig.parameters.values())[1:])
    return out

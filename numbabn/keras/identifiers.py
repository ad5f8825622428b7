"""Keras-style initializers, regularizers and constraints implemented in NumPy.

This module resolves the identifiers accepted by the ``*_initializer``,
``*_regularizer`` and ``*_constraint`` arguments of
``tf.compat.v1.keras.layers.BatchNormalization`` (tf.keras / tf_keras 2.x
semantics) into plain NumPy callables, and serializes them back into
Keras-style ``{"class_name": ..., "config": ...}`` dictionaries.

Three families are provided:

* initializers: ``init(shape, dtype=None) -> np.ndarray``
  (see :func:`get_initializer`, :func:`serialize_initializer`);
* regularizers: ``reg(w) -> float`` (see :func:`get_regularizer`,
  :func:`serialize_regularizer`);
* constraints: ``con(w) -> np.ndarray`` (see :func:`get_constraint`,
  :func:`serialize_constraint`).

An identifier may be a registered name (``"zeros"``, ``"Zeros"``,
``"l2"``, ``"max_norm"``, ...), a serialized dictionary (legacy
``{"class_name", "config"}`` form or the newer form that also carries
``"module"`` and ``"registered_name"``), an instance of one of the classes
below (returned unchanged), one of the classes below (instantiated with its
defaults) or any other Python callable (returned unchanged).

All identifier and configuration problems raise ``ValueError`` whose message
names the layer argument and the received value, e.g.::

    Could not interpret initializer identifier for `gamma_initializer`.
    Received: gamma_initializer='foo'
"""

import math
import numbers
import operator

import numpy as np

__all__ = [
    # base classes
    "Initializer",
    "Regularizer",
    "Constraint",
    # initializers
    "Zeros",
    "Ones",
    "Constant",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "VarianceScaling",
    "GlorotUniform",
    "GlorotNormal",
    "HeNormal",
    "HeUniform",
    "LecunNormal",
    "LecunUniform",
    "Identity",
    "Orthogonal",
    # regularizers
    "L1",
    "L2",
    "L1L2",
    # constraints
    "NonNeg",
    "UnitNorm",
    "MaxNorm",
    "MinMaxNorm",
    # resolution / serialization
    "get_initializer",
    "get_regularizer",
    "get_constraint",
    "serialize_initializer",
    "serialize_regularizer",
    "serialize_constraint",
    "compute_fans",
    "EPSILON",
]

#: Fuzz factor used by the norm constraints (``keras.backend.epsilon()``).
EPSILON = 1e-7

# Standard deviation of a standard normal truncated to [-2, 2].
_TRUNCATED_NORMAL_STD = 0.87962566103423978

_DEFAULT_DTYPE = np.dtype(np.float32)


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _is_real_number(value):
    return isinstance(value, numbers.Real) and not isinstance(
        value, (bool, np.bool_)
    )


def _plain_number(value):
    """Return ``value`` as a built-in ``int`` or ``float`` (JSON-safe)."""
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def _check_number(owner, name, value, *, positive=False, nonnegative=False,
                  low=None, high=None):
    """Validate a finite real config value and return it as int/float."""
    if not _is_real_number(value):
        raise ValueError(
            f"{owner}: `{name}` must be a real number. "
            f"Received: {name}={value!r}."
        )
    value = _plain_number(value)
    if not math.isfinite(value):
        raise ValueError(
            f"{owner}: `{name}` must be finite. Received: {name}={value!r}."
        )
    if positive and not value > 0:
        raise ValueError(
            f"{owner}: `{name}` must be positive. Received: {name}={value!r}."
        )
    if nonnegative and value < 0:
        raise ValueError(
            f"{owner}: `{name}` must be non-negative. "
            f"Received: {name}={value!r}."
        )
    if low is not None and value < low:
        raise ValueError(
            f"{owner}: `{name}` must be >= {low}. Received: {name}={value!r}."
        )
    if high is not None and value > high:
        raise ValueError(
            f"{owner}: `{name}` must be <= {high}. Received: {name}={value!r}."
        )
    return value


def _check_seed(owner, seed):
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(
        seed, numbers.Integral
    ):
        raise ValueError(
            f"{owner}: `seed` must be an integer or None. "
            f"Received: seed={seed!r}."
        )
    return int(seed)


def _check_axis(owner, axis):
    """Validate an axis (int or sequence of ints); return int or tuple."""
    if isinstance(axis, numbers.Integral) and not isinstance(
        axis, (bool, np.bool_)
    ):
        return int(axis)
    if isinstance(axis, (list, tuple)) and axis and all(
        isinstance(a, numbers.Integral) and not isinstance(a, (bool, np.bool_))
        for a in axis
    ):
        return tuple(int(a) for a in axis)
    raise ValueError(
        f"{owner}: `axis` must be an integer or a non-empty list of "
        f"integers. Received: axis={axis!r}."
    )


def _check_choice(owner, name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"{owner}: `{name}` must be one of {sorted(choices)}. "
            f"Received: {name}={value!r}."
        )
    return value


def _normalize_shape(shape):
    if isinstance(shape, numbers.Integral) and not isinstance(
        shape, (bool, np.bool_)
    ):
        shape = (shape,)
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(
            f"`shape` must be an integer or a sequence of integers. "
            f"Received: shape={shape!r}."
        ) from None
    if any(d < 0 for d in dims):
        raise ValueError(
            f"`shape` must not contain negative dimensions. "
            f"Received: shape={shape!r}."
        )
    return dims


def _resolve_dtype(owner, dtype, kinds):
    """Return ``np.dtype(dtype)`` (float32 for None) if its kind is allowed."""
    dt = _DEFAULT_DTYPE if dtype is None else np.dtype(dtype)
    if dt.kind not in kinds:
        wanted = {
            "f": "floating point",
            "fiu": "floating point or integer",
            "fiub": "numeric or boolean",
        }.get(kinds, kinds)
        raise ValueError(
            f"{owner}: expected a {wanted} dtype. Received: dtype={dt.name}."
        )
    return dt


def compute_fans(shape):
    """Compute ``(fan_in, fan_out)`` for a weight shape, as Keras does.

    Parameters
    ----------
    shape : int or sequence of int
        Weight shape.

    Returns
    -------
    tuple of int
        ``(1, 1)`` for a scalar, ``(n, n)`` for a 1-D shape ``(n,)``,
        ``(shape[0], shape[1])`` for a 2-D shape, otherwise the last two
        dimensions multiplied by the receptive field size
        ``prod(shape[:-2])``.
    """
    shape = _normalize_shape(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = 1
    for dim in shape[:-2]:
        receptive *= dim
    return shape[-2] * receptive, shape[-1] * receptive


# --------------------------------------------------------------------------
# common base
# --------------------------------------------------------------------------
class _Configurable:
    """Mixin providing ``get_config``, ``from_config`` and a readable repr."""

    # Config keys accepted by ``from_config`` (filled by subclasses).
    _config_keys = ()
    # Config keys silently dropped by ``from_config``.
    _ignored_config_keys = ()
    # Legacy config key aliases, ``{old_key: new_key}``.
    _config_aliases = {}

    def get_config(self):
        """Return the JSON-safe constructor arguments of this object.

        Returns
        -------
        dict
        """
        return {}

    @classmethod
    def from_config(cls, config):
        """Create an instance from a ``get_config()`` dictionary.

        Parameters
        ----------
        config : dict
            Constructor arguments. Unknown keys raise ``ValueError``.

        Returns
        -------
        object
            A new instance of ``cls``.
        """
        if not isinstance(config, dict):
            raise ValueError(
                f"{cls.__name__}: `config` must be a dict. "
                f"Received: config={config!r}."
            )
        kwargs = {}
        for key, value in config.items():
            if key in cls._ignored_config_keys:
                continue
            key = cls._config_aliases.get(key, key)
            if key not in cls._config_keys:
                raise ValueError(
                    f"{cls.__name__}: unknown config key {key!r}; accepted "
                    f"keys are {list(cls._config_keys)}. "
                    f"Received: config={config!r}."
                )
            if key in kwargs:
                raise ValueError(
                    f"{cls.__name__}: config key {key!r} is given twice "
                    f"(directly and through a legacy alias). "
                    f"Received: config={config!r}."
                )
            kwargs[key] = value
        return cls(**kwargs)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------
# initializers
# --------------------------------------------------------------------------
class Initializer(_Configurable):
    """Base class of the initializers.

    Subclasses implement ``__call__(shape, dtype=None)`` returning a new
    ``np.ndarray`` of that shape and dtype (``float32`` when ``dtype`` is
    None).
    """

    _ignored_config_keys = ("dtype",)  # emitted by TF1-era configs

    def __call__(self, shape, dtype=None):
        raise NotImplementedError(
            f"{type(self).__name__} does not implement __call__."
        )


class _SeededInitializer(Initializer):
    """Initializer drawing from a NumPy generator.

    With an integer ``seed`` every call restarts from
    ``np.random.default_rng(seed)`` and therefore returns the same values;
    with ``seed=None`` the instance owns a freshly seeded generator and
    successive calls return different values.
    """

    def _set_seed(self, seed):
        self.seed = _check_seed(type(self).__name__, seed)
        self._rng = None if self.seed is not None else np.random.default_rng()

    def _generator(self):
        if self.seed is None:
            return self._rng
        # SeedSequence only takes non-negative integers.
        return np.random.default_rng(self.seed % (1 << 64))


def _truncated_standard_normal(rng, shape):
    """Standard normal samples redrawn until they lie within [-2, 2]."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out


class Zeros(Initializer):
    """Initializer returning an array of zeros (``"zeros"``)."""

    def __call__(self, shape, dtype=None):
        """Return ``np.zeros(shape, dtype)``; ``dtype`` defaults to float32."""
        dt = _resolve_dtype(type(self).__name__, dtype, "fiub")
        return np.zeros(_normalize_shape(shape), dtype=dt)


class Ones(Initializer):
    """Initializer returning an array of ones (``"ones"``)."""

    def __call__(self, shape, dtype=None):
        """Return ``np.ones(shape, dtype)``; ``dtype`` defaults to float32."""
        dt = _resolve_dtype(type(self).__name__, dtype, "fiub")
        return np.ones(_normalize_shape(shape), dtype=dt)


class Constant(Initializer):
    """Initializer filling an array with a constant (``"constant"``).

    Parameters
    ----------
    value : scalar or array_like, default 0
        Fill value. An array-like value must have exactly as many elements
        as the requested shape; it is reshaped to it.
    """

    _config_keys = ("value",)

    def __init__(self, value=0):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf" or arr.size == 0:
            raise ValueError(
                "Constant: `value` must be a real number or a non-empty "
                f"array of real numbers. Received: value={value!r}."
            )
        if arr.ndim == 0:
            item = arr.item()
            self.value = bool(item) if arr.dtype.kind == "b" else (
                _plain_number(item))
        else:
            self.value = arr.tolist()

    def get_config(self):
        return {"value": self.value}

    def __call__(self, shape, dtype=None):
        """Return an array of ``shape`` filled with ``value``."""
        dt = _resolve_dtype(type(self).__name__, dtype, "fiub")
        shape = _normalize_shape(shape)
        arr = np.asarray(self.value)
        if arr.ndim == 0:
            return np.full(shape, arr, dtype=dt)
        if arr.size != math.prod(shape):
            raise ValueError(
                f"Constant: value has {arr.size} elements but shape={shape} "
                f"has {math.prod(shape)}."
            )
        return arr.astype(dt).reshape(shape)


class RandomNormal(_SeededInitializer):
    """Normal distribution initializer (``"random_normal"``, ``"normal"``).

    Parameters
    ----------
    mean : float, default 0.0
    stddev : float, default 0.05
        Must be positive.
    seed : int or None, default None
    """

    _config_keys = ("mean", "stddev", "seed")

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        name = type(self).__name__
        self.mean = _check_number(name, "mean", mean)
        self.stddev = _check_number(name, "stddev", stddev, positive=True)
        self._set_seed(seed)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}

    def __call__(self, shape, dtype=None):
        """Return normal samples of ``shape`` and floating ``dtype``."""
        dt = _resolve_dtype(type(self).__name__, dtype, "f")
        z = self._generator().standard_normal(_normalize_shape(shape))
        return (self.mean + self.stddev * z).astype(dt)


class TruncatedNormal(_SeededInitializer):
    """Truncated normal initializer (``"truncated_normal"``).

    Samples further than two ``stddev`` from ``mean`` are redrawn.

    Parameters
    ----------
    mean : float, default 0.0
    stddev : float, default 0.05
        Standard deviation before truncation; must be positive.
    seed : int or None, default None
    """

    _config_keys = ("mean", "stddev", "seed")

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        name = type(self).__name__
        self.mean = _check_number(name, "mean", mean)
        self.stddev = _check_number(name, "stddev", stddev, positive=True)
        self._set_seed(seed)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}

    def __call__(self, shape, dtype=None):
        """Return truncated normal samples of ``shape`` and ``dtype``."""
        dt = _resolve_dtype(type(self).__name__, dtype, "f")
        z = _truncated_standard_normal(self._generator(),
                                       _normalize_shape(shape))
        return (self.mean + self.stddev * z).astype(dt)


class RandomUniform(_SeededInitializer):
    """Uniform distribution initializer (``"random_uniform"``, ``"uniform"``).

    Parameters
    ----------
    minval : float, default -0.05
        Inclusive lower bound.
    maxval : float, default 0.05
        Exclusive upper bound; must not be below ``minval``.
    seed : int or None, default None
    """

    _config_keys = ("minval", "maxval", "seed")

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        name = type(self).__name__
        self.minval = _check_number(name, "minval", minval)
        self.maxval = _check_number(name, "maxval", maxval)
        if self.maxval < self.minval:
            raise ValueError(
                f"{name}: `maxval` must not be smaller than `minval`. "
                f"Received: minval={self.minval!r}, maxval={self.maxval!r}."
            )
        self._set_seed(seed)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval,
                "seed": self.seed}

    def __call__(self, shape, dtype=None):
        """Return uniform samples in ``[minval, maxval)``.

        Integer dtypes draw integers in ``[int(minval), int(maxval))``.
        """
        name = type(self).__name__
        dt = _resolve_dtype(name, dtype, "fiu")
        shape = _normalize_shape(shape)
        rng = self._generator()
        if dt.kind == "f":
            u = rng.random(shape)
            return (self.minval + (self.maxval - self.minval) * u).astype(dt)
        low, high = int(self.minval), int(self.maxval)
        if not low < high:
            raise ValueError(
                f"{name}: integer dtype {dt.name} needs int(minval) < "
                f"int(maxval). Received: minval={self.minval!r}, "
                f"maxval={self.maxval!r}."
            )
        return rng.integers(low, high, size=shape, dtype=dt)


class VarianceScaling(_SeededInitializer):
    """Variance scaling initializer (``"variance_scaling"``).

    With ``n`` = fan_in, fan_out or their mean (see :func:`compute_fans`,
    floored at 1), samples have standard deviation ``sqrt(scale / n)``
    (truncated to two standard deviations for ``"truncated_normal"``) or
    are uniform in ``[-sqrt(3 * scale / n), sqrt(3 * scale / n)]``.

    Parameters
    ----------
    scale : float, default 1.0
        Must be positive.
    mode : {"fan_in", "fan_out", "fan_avg"}, default "fan_in"
    distribution : {"truncated_normal", "untruncated_normal", "uniform"}
        Default ``"truncated_normal"``. Case-insensitive; ``"normal"`` is an
        alias of ``"truncated_normal"``.
    seed : int or None, default None
    """

    _config_keys = ("scale", "mode", "distribution", "seed")
    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale=1.0, mode="fan_in",
                 distribution="truncated_normal", seed=None):
        name = type(self).__name__
        self.scale = _check_number(name, "scale", scale, positive=True)
        self.mode = _check_choice(name, "mode", mode, self._MODES)
        if isinstance(distribution, str):
            distribution = distribution.lower()
            if distribution == "normal":
                distribution = "truncated_normal"
        self.distribution = _check_choice(
            name, "distribution", distribution, self._DISTRIBUTIONS
        )
        self._set_seed(seed)

    def get_config(self):
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            "seed": self.seed,
        }

    def __call__(self, shape, dtype=None):
        """Return scaled random samples of ``shape`` and floating ``dtype``."""
        dt = _resolve_dtype(type(self).__name__, dtype, "f")
        shape = _normalize_shape(shape)
        fan_in, fan_out = compute_fans(shape)
        if self.mode == "fan_in":
            n = fan_in
        elif self.mode == "fan_out":
            n = fan_out
        else:
            n = (fan_in + fan_out) / 2.0
        variance = self.scale / max(1.0, n)
        rng = self._generator()
        if self.distribution == "truncated_normal":
            stddev = math.sqrt(variance) / _TRUNCATED_NORMAL_STD
            out = stddev * _truncated_standard_normal(rng, shape)
        elif self.distribution == "untruncated_normal":
            out = math.sqrt(variance) * rng.standard_normal(shape)
        else:
            limit = math.sqrt(3.0 * variance)
            out = rng.uniform(-limit, limit, shape)
        return out.astype(dt)


class _FixedVarianceScaling(VarianceScaling):
    """Variance scaling preset whose only argument is ``seed``."""

    _config_keys = ("seed",)
    _preset = None  # (scale, mode, distribution)

    def __init__(self, seed=None):
        scale, mode, distribution = self._preset
        super().__init__(scale=scale, mode=mode, distribution=distribution,
                         seed=seed)

    def get_config(self):
        return {"seed": self.seed}


class GlorotUniform(_FixedVarianceScaling):
    """Glorot (Xavier) uniform initializer (``"glorot_uniform"``).

    Uniform in ``[-limit, limit]`` with
    ``limit = sqrt(6 / (fan_in + fan_out))``.

    Parameters
    ----------
    seed : int or None, default None
    """

    _preset = (1.0, "fan_avg", "uniform")


class GlorotNormal(_FixedVarianceScaling):
    """Glorot (Xavier) normal initializer (``"glorot_normal"``).

    Truncated normal with ``stddev = sqrt(2 / (fan_in + fan_out))``.

    Parameters
    ----------
    seed : int or None, default None
    """

    _preset = (1.0, "fan_avg", "truncated_normal")


class HeNormal(_FixedVarianceScaling):
    """He normal initializer (``"he_normal"``).

    Truncated normal with ``stddev = sqrt(2 / fan_in)``.

    Parameters
    ----------
    seed : int or None, default None
    """

    _preset = (2.0, "fan_in", "truncated_normal")


class HeUniform(_FixedVarianceScaling):
    """He uniform initializer (``"he_uniform"``).

    Uniform in ``[-limit, limit]`` with ``limit = sqrt(6 / fan_in)``.

    Parameters
    ----------
    seed : int or None, default None
    """

    _preset = (2.0, "fan_in", "uniform")


class LecunNormal(_FixedVarianceScaling):
    """LeCun normal initializer (``"lecun_normal"``).

    Truncated normal with ``stddev = sqrt(1 / fan_in)``.

    Parameters
    ----------
    seed : int or None, default None
    """

    _preset = (1.0, "fan_in", "truncated_normal")


class LecunUniform(_FixedVarianceScaling):
    """LeCun uniform initializer (``"lecun_uniform"``).

    Uniform in ``[-limit, limit]`` with ``limit = sqrt(3 / fan_in)``.

    Parameters
    ----------
    seed : int or None, default None
    """

    _preset = (1.0, "fan_in", "uniform")


class Identity(Initializer):
    """Identity matrix initializer (``"identity"``); 2-D shapes only.

    Parameters
    ----------
    gain : float, default 1.0
        Multiplier applied to the identity matrix.
    """

    _config_keys = ("gain",)

    def __init__(self, gain=1.0):
        self.gain = _check_number(type(self).__name__, "gain", gain)

    def get_config(self):
        return {"gain": self.gain}

    def __call__(self, shape, dtype=None):
        """Return ``gain * np.eye(*shape)``; raises for non 2-D shapes."""
        dt = _resolve_dtype(type(self).__name__, dtype, "f")
        shape = _normalize_shape(shape)
        if len(shape) != 2:
            raise ValueError(
                "Identity initializer can only be used for 2-D shapes. "
                f"Received: shape={shape}."
            )
        return (self.gain * np.eye(*shape)).astype(dt)


class Orthogonal(_SeededInitializer):
    """Orthogonal matrix initializer (``"orthogonal"``); rank >= 2 only.

    The shape is flattened to ``(prod(shape[:-1]), shape[-1])`` and filled
    with a sign-corrected QR factor of a standard normal matrix.

    Parameters
    ----------
    gain : float, default 1.0
    seed : int or None, default None
    """

    _config_keys = ("gain", "seed")

    def __init__(self, gain=1.0, seed=None):
        self.gain = _check_number(type(self).__name__, "gain", gain)
        self._set_seed(seed)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}

    def __call__(self, shape, dtype=None):
        """Return a (semi-)orthogonal array of ``shape``."""
        dt = _resolve_dtype(type(self).__name__, dtype, "f")
        shape = _normalize_shape(shape)
        if len(shape) < 2:
            raise ValueError(
                "Orthogonal initializer needs a shape of rank >= 2. "
                f"Received: shape={shape}."
            )
        rows = math.prod(shape[:-1])
        cols = shape[-1]
        if rows == 0 or cols == 0:
            return np.zeros(shape, dtype=dt)
        flat = (max(rows, cols), min(rows, cols))
        a = self._generator().standard_normal(flat)
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q.reshape(shape)).astype(dt)


# --------------------------------------------------------------------------
# regularizers
# --------------------------------------------------------------------------
def _as_float64(x):
    return np.asarray(x, dtype=np.float64)


class Regularizer(_Configurable):
    """Base class of the regularizers.

    Subclasses implement ``__call__(w)`` returning the penalty as a Python
    ``float`` computed in float64.
    """

    def __call__(self, x):
        return 0.0

    def gradient(self, x):
        """The gradient of the penalty with respect to ``x``, float64, ``x``'s shape."""
        return np.zeros(np.shape(x))


def _check_penalty(owner, name, value, default):
    if value is None:
        value = default
    return float(_check_number(owner, name, value, nonnegative=True))


class L1(Regularizer):
    """L1 penalty ``l1 * sum(abs(w))`` (``"l1"``).

    Parameters
    ----------
    l1 : float, default 0.01
        Non-negative factor; None means the default.
    """

    _config_keys = ("l1",)
    _config_aliases = {"l": "l1"}

    def __init__(self, l1=0.01):
        self.l1 = _check_penalty("L1", "l1", l1, 0.01)

    def get_config(self):
        return {"l1": self.l1}

    def __call__(self, x):
        """Return the penalty of ``x`` as a Python float."""
        with np.errstate(invalid="ignore"):  # 0 * inf -> nan, as in Keras
            return float(self.l1 * np.sum(np.abs(_as_float64(x))))

    def gradient(self, x):
        """``l1 * sign(x)``: zero at zero, as TensorFlow differentiates ``abs``."""
        return self.l1 * np.sign(_as_float64(x))


class L2(Regularizer):
    """L2 penalty ``l2 * sum(w ** 2)`` (``"l2"``).

    Parameters
    ----------
    l2 : float, default 0.01
        Non-negative factor; None means the default.
    """

    _config_keys = ("l2",)
    _config_aliases = {"l": "l2"}

    def __init__(self, l2=0.01):
        self.l2 = _check_penalty("L2", "l2", l2, 0.01)

    def get_config(self):
        return {"l2": self.l2}

    def __call__(self, x):
        """Return the penalty of ``x`` as a Python float."""
        with np.errstate(invalid="ignore"):  # 0 * inf -> nan, as in Keras
            return float(self.l2 * np.sum(np.square(_as_float64(x))))

    def gradient(self, x):
        """``2 * l2 * x``."""
        return 2.0 * self.l2 * _as_float64(x)


class L1L2(Regularizer):
    """Combined penalty ``l1 * sum(abs(w)) + l2 * sum(w ** 2)``.

    The class defaults are ``l1=0.0, l2=0.0``; the string identifier
    ``"l1_l2"`` gives ``l1=0.01, l2=0.01``. A term whose factor is zero is
    skipped entirely (so it cannot turn an infinite weight into NaN).

    Parameters
    ----------
    l1 : float, default 0.0
    l2 : float, default 0.0
    """

    _config_keys = ("l1", "l2")

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _check_penalty("L1L2", "l1", l1, 0.0)
        self.l2 = _check_penalty("L1L2", "l2", l2, 0.0)

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}

    def __call__(self, x):
        """Return the penalty of ``x`` as a Python float."""
        x = _as_float64(x)
        total = 0.0
        if self.l1:
            total += self.l1 * np.sum(np.abs(x))
        if self.l2:
            total += self.l2 * np.sum(np.square(x))
        return float(total)

    def gradient(self, x):
        """``l1 * sign(x) + 2 * l2 * x`` (a zero factor's term is left out, as in the
        penalty)."""
        x = _as_float64(x)
        total = np.zeros(x.shape)
        if self.l1:
            total += self.l1 * np.sign(x)
        if self.l2:
            total += 2.0 * self.l2 * x
        return total


# --------------------------------------------------------------------------
# constraints
# --------------------------------------------------------------------------
class Constraint(_Configurable):
    """Base class of the constraints.

    Subclasses implement ``__call__(w)`` returning a new array with the
    shape and dtype of ``w``. The base class returns a copy of ``w``.
    """

    def __call__(self, w):
        return np.array(w, copy=True)


def _float_weights(owner, w):
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise ValueError(
            f"{owner}: expected floating point weights. "
            f"Received: dtype={w.dtype.name}."
        )
    return w


def _norms(x, axis):
    return np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True))


class NonNeg(Constraint):
    """Zero out negative weights: ``w * (w >= 0)`` (``"non_neg"``)."""

    def __call__(self, w):
        """Return ``w * (w >= 0)`` in the dtype of ``w``."""
        w = np.asarray(w)
        with np.errstate(invalid="ignore"):  # -inf * 0 -> nan, as in Keras
            return np.asarray(w * (w >= 0).astype(w.dtype))


class UnitNorm(Constraint):
    """Scale weights to unit norm along ``axis`` (``"unit_norm"``).

    Computes ``w / (EPSILON + norm(w, axis))`` in float64.

    Parameters
    ----------
    axis : int or list of int, default 0
        Axis (axes) along which norms are computed.
    """

    _config_keys = ("axis",)

    def __init__(self, axis=0):
        self.axis = _check_axis(type(self).__name__, axis)

    def get_config(self):
        return {"axis": list(self.axis) if isinstance(self.axis, tuple)
                else self.axis}

    def __call__(self, w):
        """Return the normalized weights in the dtype of ``w``."""
        w = _float_weights(type(self).__name__, w)
        x = w.astype(np.float64)
        return (x / (EPSILON + _norms(x, self.axis))).astype(w.dtype)


class MaxNorm(Constraint):
    """Cap the norm along ``axis`` at ``max_value`` (``"max_norm"``).

    Computes ``w * clip(n, 0, max_value) / (EPSILON + n)`` with
    ``n = norm(w, axis)``, in float64.

    Parameters
    ----------
    max_value : float, default 2
        Non-negative maximum norm.
    axis : int or list of int, default 0
    """

    _config_keys = ("max_value", "axis")

    def __init__(self, max_value=2, axis=0):
        name = type(self).__name__
        self.max_value = _check_number(name, "max_value", max_value,
                                       nonnegative=True)
        self.axis = _check_axis(name, axis)

    def get_config(self):
        return {
            "max_value": self.max_value,
            "axis": list(self.axis) if isinstance(self.axis, tuple)
            else self.axis,
        }

    def __call__(self, w):
        """Return the rescaled weights in the dtype of ``w``."""
        w = _float_weights(type(self).__name__, w)
        x = w.astype(np.float64)
        norms = _norms(x, self.axis)
        desired = np.clip(norms, 0.0, self.max_value)
        return (x * (desired / (EPSILON + norms))).astype(w.dtype)


class MinMaxNorm(Constraint):
    """Keep the norm along ``axis`` within bounds (``"min_max_norm"``).

    Computes ``desired = rate * clip(n, min_value, max_value) +
    (1 - rate) * n`` and returns ``w * desired / (EPSILON + n)``.

    Parameters
    ----------
    min_value : float, default 0.0
        Non-negative lower bound.
    max_value : float, default 1.0
        Upper bound, at least ``min_value``.
    rate : float, default 1.0
        Enforcement rate in ``[0, 1]``.
    axis : int or list of int, default 0
    """

    _config_keys = ("min_value", "max_value", "rate", "axis")

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        name = type(self).__name__
        self.min_value = _check_number(name, "min_value", min_value,
                                       nonnegative=True)
        self.max_value = _check_number(name, "max_value", max_value,
                                       nonnegative=True)
        if self.max_value < self.min_value:
            raise ValueError(
                f"{name}: `max_value` must not be smaller than `min_value`. "
                f"Received: min_value={self.min_value!r}, "
                f"max_value={self.max_value!r}."
            )
        self.rate = _check_number(name, "rate", rate, low=0.0, high=1.0)
        self.axis = _check_axis(name, axis)

    def get_config(self):
        return {
            "min_value": self.min_value,
            "max_value": self.max_value,
            "rate": self.rate,
            "axis": list(self.axis) if isinstance(self.axis, tuple)
            else self.axis,
        }

    def __call__(self, w):
        """Return the rescaled weights in the dtype of ``w``."""
        w = _float_weights(type(self).__name__, w)
        x = w.astype(np.float64)
        norms = _norms(x, self.axis)
        desired = (self.rate * np.clip(norms, self.min_value, self.max_value)
                   + (1.0 - self.rate) * norms)
        return (x * (desired / (EPSILON + norms))).astype(w.dtype)


# --------------------------------------------------------------------------
# name registries
# --------------------------------------------------------------------------
_INITIALIZER_NAMES = {
    "Zeros": Zeros, "zeros": Zeros, "zero": Zeros, "ZerosV2": Zeros,
    "Ones": Ones, "ones": Ones, "one": Ones, "OnesV2": Ones,
    "Constant": Constant, "constant": Constant, "ConstantV2": Constant,
    "RandomNormal": RandomNormal, "random_normal": RandomNormal,
    "normal": RandomNormal, "RandomNormalV2": RandomNormal,
    "RandomUniform": RandomUniform, "random_uniform": RandomUniform,
    "uniform": RandomUniform, "RandomUniformV2": RandomUniform,
    "TruncatedNormal": TruncatedNormal, "truncated_normal": TruncatedNormal,
    "TruncatedNormalV2": TruncatedNormal,
    "VarianceScaling": VarianceScaling, "variance_scaling": VarianceScaling,
    "VarianceScalingV2": VarianceScaling,
    "GlorotUniform": GlorotUniform, "glorot_uniform": GlorotUniform,
    "GlorotUniformV2": GlorotUniform, "glorot_uniformV2": GlorotUniform,
    "GlorotNormal": GlorotNormal, "glorot_normal": GlorotNormal,
    "GlorotNormalV2": GlorotNormal, "glorot_normalV2": GlorotNormal,
    "HeNormal": HeNormal, "he_normal": HeNormal,
    "HeNormalV2": HeNormal, "he_normalV2": HeNormal,
    "HeUniform": HeUniform, "he_uniform": HeUniform,
    "HeUniformV2": HeUniform, "he_uniformV2": HeUniform,
    "LecunNormal": LecunNormal, "lecun_normal": LecunNormal,
    "LecunNormalV2": LecunNormal, "lecun_normalV2": LecunNormal,
    "LecunUniform": LecunUniform, "lecun_uniform": LecunUniform,
    "LecunUniformV2": LecunUniform, "lecun_uniformV2": LecunUniform,
    "Identity": Identity, "identity": Identity, "IdentityV2": Identity,
    "Orthogonal": Orthogonal, "orthogonal": Orthogonal,
    "OrthogonalV2": Orthogonal,
}

_REGULARIZER_NAMES = {
    "L1": L1, "l1": L1,
    "L2": L2, "l2": L2,
    "L1L2": L1L2,
    # The string "l1_l2" uses other defaults than the L1L2 class.
    "l1_l2": (L1L2, {"l1": 0.01, "l2": 0.01}),
}

_CONSTRAINT_NAMES = {
    "NonNeg": NonNeg, "non_neg": NonNeg, "nonneg": NonNeg,
    "UnitNorm": UnitNorm, "unit_norm": UnitNorm, "unitnorm": UnitNorm,
    "MaxNorm": MaxNorm, "max_norm": MaxNorm, "maxnorm": MaxNorm,
    "MinMaxNorm": MinMaxNorm, "min_max_norm": MinMaxNorm,
}

# Top-level keys of a serialized dict besides class_name/config.
_IGNORED_TOP_LEVEL_KEYS = ("module", "registered_name", "shared_object_id")

_FAMILIES = {
    "initializer": (Initializer, _INITIALIZER_NAMES, "keras.initializers"),
    "regularizer": (Regularizer, _REGULARIZER_NAMES, "keras.regularizers"),
    "constraint": (Constraint, _CONSTRAINT_NAMES, "keras.constraints"),
}


# --------------------------------------------------------------------------
# resolution
# --------------------------------------------------------------------------
def _not_interpretable(kind, argument, identifier):
    return ValueError(
        f"Could not interpret {kind} identifier for `{argument}`. "
        f"Received: {argument}={identifier!r}"
    )


def _instantiate(kind, argument, identifier, target, config):
    """Build an object from a registry/custom entry and its config."""
    defaults = {}
    if isinstance(target, tuple):  # (class, default config overrides)
        target, defaults = target
    if isinstance(target, type):
        try:
            if hasattr(target, "from_config"):
                return target.from_config({**defaults, **config})
            return target(**defaults, **config)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"Invalid {kind} configuration for `{argument}`: {exc} "
                f"Received: {argument}={identifier!r}"
            ) from exc
    if callable(target):
        # A plain function registered through custom_objects.
        if config:
            raise ValueError(
                f"Invalid {kind} configuration for `{argument}`: the custom "
                f"function {target!r} takes no config. "
                f"Received: {argument}={identifier!r}"
            )
        return target
    raise _not_interpretable(kind, argument, identifier)


def _lookup(kind, name, custom_objects):
    if custom_objects and name in custom_objects:
        return custom_objects[name]
    return _FAMILIES[kind][1].get(name)


def _get(kind, identifier, argument, custom_objects):
    base = _FAMILIES[kind][0]
    if isinstance(identifier, base):
        return identifier
    if isinstance(identifier, str):
        target = _lookup(kind, identifier, custom_objects)
        if target is None:
            raise _not_interpretable(kind, argument, identifier)
        return _instantiate(kind, argument, identifier, target, {})
    if isinstance(identifier, dict):
        extra = set(identifier) - {"class_name", "config"} - set(
            _IGNORED_TOP_LEVEL_KEYS
        )
        class_name = identifier.get("class_name")
        config = identifier.get("config", None)
        if extra or not isinstance(class_name, str) or not isinstance(
            config, dict
        ):
            raise ValueError(
                f"Improper {kind} config for `{argument}`: expected a dict "
                "with a string 'class_name' and a dict 'config' (optionally "
                "'module' and 'registered_name'). "
                f"Received: {argument}={identifier!r}"
            )
        target = _lookup(kind, class_name, custom_objects)
        registered = identifier.get("registered_name")
        if target is None and isinstance(registered, str):
            target = _lookup(kind, registered, custom_objects)
        if target is None:
            raise ValueError(
                f"Unknown {kind} class_name {class_name!r} for `{argument}`. "
                f"Received: {argument}={identifier!r}"
            )
        return _instantiate(kind, argument, identifier, target, config)
    if isinstance(identifier, type):
        if issubclass(identifier, base):
            return _instantiate(kind, argument, identifier, identifier, {})
        if kind == "initializer":
            try:
                return identifier()
            except TypeError as exc:
                raise ValueError(
                    f"Could not instantiate initializer class for "
                    f"`{argument}` without arguments: {exc} "
                    f"Received: {argument}={identifier!r}"
                ) from exc
        return identifier
    if callable(identifier):
        return identifier
    raise _not_interpretable(kind, argument, identifier)


def get_initializer(identifier, argument="initializer", custom_objects=None):
    """Resolve an initializer identifier.

    Parameters
    ----------
    identifier : str, dict, Initializer, type or callable
        A registered name such as ``"zeros"``/``"Zeros"``, a serialized dict,
        an :class:`Initializer` instance (returned as is), an initializer
        class (instantiated without arguments) or a plain callable
        ``f(shape, dtype=None)`` (returned as is; its result is not
        converted).
    argument : str, default "initializer"
        Name of the layer argument, used in error messages.
    custom_objects : dict, optional
        Extra ``{name: class_or_function}`` entries consulted before the
        built-in names (for deserializing user objects).

    Returns
    -------
    callable
        Never None.

    Raises
    ------
    ValueError
        For None, unknown names, malformed dicts, invalid configs and
        uninterpretable types.
    """
    if identifier is None:
        raise _not_interpretable("initializer", argument, identifier)
    return _get("initializer", identifier, argument, custom_objects)


def get_regularizer(identifier, argument="regularizer", custom_objects=None):
    """Resolve a regularizer identifier.

    Parameters
    ----------
    identifier : None, str, dict, Regularizer, type or callable
        None, a registered name (``"l1"``, ``"L2"``, ``"l1_l2"``, ``"L1L2"``,
        ...), a serialized dict, a :class:`Regularizer` instance (returned as
        is) or a plain callable ``f(w) -> float`` (returned as is).
    argument : str, default "regularizer"
        Name of the layer argument, used in error messages.
    custom_objects : dict, optional
        Extra ``{name: class_or_function}`` entries.

    Returns
    -------
    callable or None
        None when ``identifier`` is None.

    Raises
    ------
    ValueError
        For unknown names, malformed dicts, invalid configs and
        uninterpretable types.
    """
    if identifier is None:
        return None
    return _get("regularizer", identifier, argument, custom_objects)


def get_constraint(identifier, argument="constraint", custom_objects=None):
    """Resolve a constraint identifier.

    Parameters
    ----------
    identifier : None, str, dict, Constraint, type or callable
        None, a registered name (``"non_neg"``, ``"max_norm"``, ...), a
        serialized dict, a :class:`Constraint` instance (returned as is) or a
        plain callable ``f(w) -> array`` (returned as is).
    argument : str, default "constraint"
        Name of the layer argument, used in error messages.
    custom_objects : dict, optional
        Extra ``{name: class_or_function}`` entries.

    Returns
    -------
    callable or None
        None when ``identifier`` is None.

    Raises
    ------
    ValueError
        For unknown names, malformed dicts, invalid configs and
        uninterpretable types.
    """
    if identifier is None:
        return None
    return _get("constraint", identifier, argument, custom_objects)


# --------------------------------------------------------------------------
# serialization
# --------------------------------------------------------------------------
def _serialize(kind, obj, with_module):
    if obj is None:
        return None
    base, _, keras_module = _FAMILIES[kind]
    if isinstance(obj, type):
        name = obj.__name__
        config = {}
        module = obj.__module__
    elif isinstance(obj, base):
        name = type(obj).__name__
        config = obj.get_config()
        module = keras_module if type(obj).__module__ == __name__ else (
            type(obj).__module__
        )
    elif callable(obj):
        get_config = getattr(obj, "get_config", None)
        if callable(get_config):
            name = type(obj).__name__
            config = dict(get_config())
            module = type(obj).__module__
        else:
            name = getattr(obj, "__name__", None) or type(obj).__name__
            config = {}
            module = getattr(obj, "__module__", None) or type(obj).__module__
    else:
        raise ValueError(
            f"Cannot serialize {kind} {obj!r}: it is neither None, a "
            f"{base.__name__} nor a callable."
        )
    if not with_module:
        return {"class_name": name, "config": config}
    is_builtin = module == keras_module
    return {
        "module": module,
        "class_name": name,
        "config": config,
        "registered_name": None if is_builtin else name,
    }


def serialize_initializer(initializer, with_module=False):
    """Serialize an initializer to a Keras-style dict.

    Parameters
    ----------
    initializer : Initializer, callable or None
        Objects of this module give ``{"class_name": <class name>,
        "config": get_config()}``. A foreign callable gives its type name and
        its own ``get_config()`` when it has one, otherwise its ``__name__``
        and an empty config; such dicts round-trip only through
        ``custom_objects``.
    with_module : bool, default False
        Also emit ``"module"`` and ``"registered_name"``, as the
        non-legacy tf_keras format does.

    Returns
    -------
    dict or None
        None for None.
    """
    return _serialize("initializer", initializer, with_module)


def serialize_regularizer(regularizer, with_module=False):
    """Serialize a regularizer to a Keras-style dict.

    Parameters
    ----------
    regularizer : Regularizer, callable or None
        See :func:`serialize_initializer` for foreign callables.
    with_module : bool, default False
        Also emit ``"module"`` and ``"registered_name"``.

    Returns
    -------
    dict or None
        None for None.
    """
    return _serialize("regularizer", regularizer, with_module)


def serialize_constraint(constraint, with_module=False):
    """Serialize a constraint to a Keras-style dict.

    Parameters
    ----------
    constraint : Constraint, callable or None
        See :func:`serialize_initializer` for foreign callables.
    with_module : bool, default False
        Also emit ``"module"`` and ``"registered_name"``.

    Returns
    -------
    dict or None
        None for None.
    """
    return _serialize("constraint", constraint, with_module)

"""The ``BatchNormalization`` layer: state and policy; the arithmetic lives in ``functional``.

It follows ``tf.compat.v1.keras.layers.BatchNormalization`` (tf_keras' V1 class) argument for
argument; ``docs/numerics.md`` lists the conventions and the few places where numbabn
deliberately differs (it refuses what TF silently turns into NaN, and its config round-trips).
"""
import functools
import itertools
import threading

import numpy as np

from . import _dispatch, _validate
from . import functional as F
from . import keras_compat as kc
from ._buffers import OutputPool
from ._layout import Layout

__all__ = ["BatchNormalization", "Variable"]

_CLIPPING_KEYS = ("rmax", "rmin", "dmax")
# Keyword arguments every Keras layer accepts; numbabn records them and needs no more.
_LAYER_KWARGS = ("dtype", "input_shape", "batch_input_shape", "batch_size", "input_dim", "weights",
                 "autocast", "dynamic")
# dtype policy -> (compute dtype, variable dtype)
_POLICIES = {
    "float32": (np.float32, np.float32),
    "float64": (np.float64, np.float64),
    "float16": (np.float16, np.float32),
    "mixed_float16": (np.float16, np.float32),
    "bfloat16": ("bfloat16", np.float32),
    "mixed_bfloat16": ("bfloat16", np.float32),
}


def _np_dtype(t):
    """A NumPy dtype; ``"bfloat16"`` comes from ml_dtypes, imported only when asked for."""
    if t == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise ValueError("bfloat16 layers need ml_dtypes: pip install ml_dtypes. "
                             "Received: dtype='bfloat16'") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(t)


class Variable:
    """A named layer weight: a NumPy array plus its Keras metadata, with a device copy.

    ``value`` is the live NumPy array, updated in place by training steps on NumPy inputs.
    After calls on CUDA arrays the device copy is the current one: reading ``value`` copies it
    back (and the next CUDA call uploads whatever the host then holds), so the host and the
    device never disagree about a weight. :meth:`numpy` returns a copy.
    """

    def __init__(self, name, value, trainable, regularizer=None, constraint=None):
        self.name = name
        self._host = value
        self._device = None
        self._on_device = False          # the device copy holds the current value
        self.trainable = trainable
        self.regularizer = regularizer
        self.constraint = constraint

    @property
    def value(self):
        if self._on_device:
            self._host[...] = _dispatch.engine(_dispatch.CUDA).to_host(self._device)
            self._on_device = False
        return self._host

    @value.setter
    def value(self, new):
        # ``var.value -= step`` updates the array in place and then sets it back
        if new is not self._host:
            self.assign(new)

    def live(self, device):
        """The array on ``device`` that calls read and update in place (moved there if need be)."""
        if device == _dispatch.CPU:
            return self.value
        if not self._on_device:
            self._device = _dispatch.engine(device).to_device(self._host)
            self._on_device = True
        return self._device

    @property
    def shape(self):
        return self._host.shape

    @property
    def dtype(self):
        return self._host.dtype

    def numpy(self):
        return self.value.copy()

    def assign(self, value):
        """Overwrite the value in place (same shape; cast to the weight's dtype). A CUDA array
        is copied into the device copy."""
        if _dispatch.device_of(value) == _dispatch.CUDA:
            eng = _dispatch.engine(_dispatch.CUDA)
            eng.assign(self.live(_dispatch.CUDA), self._device_value(eng, value))
            return self
        value = _validate.as_real_array(value, self.name, self._host.dtype)
        if value.shape != self.shape and value.size != self._host.size:
            raise ValueError(f"Cannot assign a value of shape {value.shape} to {self.name} of "
                             f"shape {self.shape}")
        self.value[...] = value.reshape(self.shape)
        return self

    def _device_value(self, eng, value):
        v, _ = eng.adopt(value)
        if v.size != self._host.size:
            raise ValueError(f"Cannot assign a value of shape {tuple(v.shape)} to {self.name} of "
                             f"shape {self.shape}")
        return v

    def _add(self, delta, sign):
        if _dispatch.device_of(delta) == _dispatch.CUDA:
            eng = _dispatch.engine(_dispatch.CUDA)
            eng.add_scaled(self.live(_dispatch.CUDA), self._device_value(eng, delta), sign)
            return self
        return self.assign(self.value + sign * np.asarray(delta))

    def assign_add(self, delta):
        return self._add(delta, 1.0)

    def assign_sub(self, delta):
        return self._add(delta, -1.0)

    # ``layer.gamma -= lr * grad`` updates the weight in place (on the device for CUDA grads).
    def __iadd__(self, delta):
        return self.assign_add(delta)

    def __isub__(self, delta):
        return self.assign_sub(delta)

    def __array__(self, dtype=None, copy=None):
        return self.value.copy() if dtype is None else self.value.astype(dtype)

    def __repr__(self):
        return f"<Variable {self.name!r} shape={self.shape} dtype={self.dtype.name}>"


class _Names:
    """Keras-style unique default names: batch_normalization, batch_normalization_1, ..."""
    _counters = {}
    _lock = threading.Lock()

    @classmethod
    def unique(cls, base):
        with cls._lock:
            counter = cls._counters.setdefault(base, itertools.count())
            n = next(counter)
        return base if n == 0 else f"{base}_{n}"


def _policy_name(dtype):
    if dtype is None:
        return "float32"
    if isinstance(dtype, dict):       # a serialized Keras policy: {"class_name": "Policy", ...}
        dtype = dtype.get("config", {}).get("name", dtype)
    name = getattr(dtype, "name", dtype)
    if isinstance(name, type) and issubclass(name, np.generic):
        name = np.dtype(name).name
    if not isinstance(name, str) or name not in _POLICIES:
        raise ValueError(
            f"`dtype` must be one of {sorted(_POLICIES)}. Received: dtype={dtype!r}")
    return name


def _check_input_shape(input_shape):
    """A shape as a tuple of non-negative ints (``None`` for an unknown dimension)."""
    def is_int(d):
        return isinstance(d, (int, np.integer)) and not isinstance(d, bool)
    try:
        dims = tuple(input_shape)
    except TypeError:
        dims = None
    if dims is None or not all(d is None or is_int(d) for d in dims):
        raise TypeError("`input_shape` must be a tuple of ints (None for unknown dimensions). "
                        f"Received: input_shape={input_shape!r}")
    if any(d is not None and d < 0 for d in dims):
        raise ValueError("`input_shape` cannot have negative dimensions. "
                         f"Received: input_shape={input_shape!r}")
    return tuple(None if d is None else int(d) for d in dims)


class BatchNormalization:
    """Batch normalization layer (Ioffe and Szegedy, 2015), as tf.compat.v1.keras defines it.

    Normalizes each feature with the statistics of the current batch in training, and with
    moving averages of them in inference, then scales by ``gamma`` and shifts by ``beta``.
    Runs on NumPy arrays with Numba CPU kernels, and on CUDA arrays (CuPy, Numba device arrays)
    with Numba CUDA kernels; results are arrays of the input's kind.

    Parameters
    ----------
    axis : int or list of int, default -1
        The feature axis or axes; statistics are computed over all other axes.
    momentum : float, default 0.99
        Momentum of the moving averages.
    epsilon : float, default 1e-3
        Added to the variance before the square root.
    center, scale : bool, default True
        Whether to learn the offset ``beta`` / the scale ``gamma``.
    beta_initializer, gamma_initializer, moving_mean_initializer, moving_variance_initializer
        Keras initializer identifiers (``'zeros'``, ``'ones'``, ``{'class_name': 'Constant',
        'config': {'value': 2.0}}``, ...) or callables ``f(shape, dtype)``.
    beta_regularizer, gamma_regularizer : optional
        Keras regularizer identifiers (``'l2'``, ...) or callables; their values are in
        :attr:`losses`.
    beta_constraint, gamma_constraint : optional
        Keras constraint identifiers (``'non_neg'``, ...) or callables, applied by
        :meth:`apply_constraints` (as a Keras optimizer does after each update).
    renorm : bool, default False
        Use batch renormalization (Ioffe, 2017): adds ``moving_stddev``, ``renorm_mean`` and
        ``renorm_stddev``.
    renorm_clipping : dict, optional
        Bounds for the renorm correction, keys among ``'rmax'``, ``'rmin'``, ``'dmax'``.
    renorm_momentum : float, default 0.99
        Momentum of the renorm statistics.
    fused : bool or None, default None
        ``None``/``True`` use the fused algorithm when the reference class would (rank 4/5 input
        with the channel axis first after the batch or last, no renorm, ghost batches or
        adjustment, not float64). The only visible effect: the moving variance then tracks the
        Bessel-corrected batch variance ``n/(n-1) * var``.
    trainable : bool, default True
        ``False`` freezes gamma and beta and stops the moving-average updates (batch statistics
        are still used when called with ``training=True``, as in the V1 Keras class).
    virtual_batch_size : int, optional
        Ghost batch normalization: the batch is split into ``B // virtual_batch_size`` groups
        (sample ``j`` in group ``j % G``), each normalized with its own statistics.
    adjustment : callable, optional
        ``adjustment(shape) -> (scale, bias)``, called in training with the input shape (int32
        array); the normalized value becomes ``scale * xhat + bias`` before gamma and beta.
    name : str, optional
        Layer name; default ``batch_normalization`` (made unique).
    synchronized : bool, default False
        Batch statistics over the batches of every process of ``comm`` (data-parallel
        training): P processes compute what one process computes on the concatenated batch.
        See ``docs/distributed.md``. Needs mpi4py (or, for CUDA arrays, a CuPy NCCL
        communicator).
    comm : optional
        The communicator of a synchronized layer: an mpi4py communicator
        (``mpi4py.MPI.COMM_WORLD`` by default) or a ``cupy.cuda.nccl.NcclCommunicator``.
    **kwargs
        ``dtype`` (``'float32'`` default, ``'float64'``, ``'float16'``, ``'mixed_float16'``,
        ``'bfloat16'``, ``'mixed_bfloat16'`` (these two need ml_dtypes)) and
        the other keyword arguments every Keras layer accepts (``input_shape``, ``weights``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> import numbabn
    >>> layer = numbabn.BatchNormalization(momentum=0.9)
    >>> x = np.random.default_rng(0).normal(5.0, 3.0, size=(64, 8)).astype(np.float32)
    >>> y = layer(x, training=True)
    >>> bool(abs(y.mean()) < 1e-5), layer.moving_mean.shape
    (True, (8,))
    >>> dx = layer.backward(np.ones_like(y))
    >>> sorted(layer.grads)
    ['beta', 'gamma']
    """

    #: Hand out output arrays again once the caller has dropped them (see ``numbabn/_buffers``):
    #: saves the page faults of a fresh allocation, at the cost of keeping at most one spare
    #: output (and one spare input gradient) per layer. Set to False on a layer or the class to
    #: always allocate.
    reuse_outputs = True

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, renorm=False, renorm_clipping=None, renorm_momentum=0.99,
                 fused=None, trainable=True, virtual_batch_size=None, adjustment=None, name=None,
                 **kwargs):
        # `synchronized` is Keras' name for cross-replica statistics (the V1 class drops it);
        # here the replicas are processes sharing the communicator `comm`.
        self.synchronized = _validate.check_bool(kwargs.pop("synchronized", False),
                                                 "synchronized")
        comm = kwargs.pop("comm", None)
        if comm is not None and not self.synchronized:
            raise ValueError("`comm` is only used with `synchronized=True`. "
                             f"{_validate.received('comm', comm)}")
        unknown = sorted(set(kwargs) - set(_LAYER_KWARGS))
        if unknown:
            raise TypeError(f"Keyword argument not understood: {unknown[0]!r}. "
                            f"Received: {unknown[0]}={kwargs[unknown[0]]!r}")
        self._policy = _policy_name(kwargs.get("dtype"))
        axes = _validate.check_axis_type(axis)
        self.axis = list(axes) if isinstance(axis, (list, tuple)) else axes[0]
        self.momentum = _validate.check_finite(momentum, "momentum")
        self.epsilon = _validate.check_epsilon(epsilon)
        self.center = _validate.check_bool(center, "center")
        self.scale = _validate.check_bool(scale, "scale")
        self.beta_initializer = kc.get_initializer(beta_initializer, "beta_initializer")
        self.gamma_initializer = kc.get_initializer(gamma_initializer, "gamma_initializer")
        self.moving_mean_initializer = kc.get_initializer(moving_mean_initializer,
                                                          "moving_mean_initializer")
        self.moving_variance_initializer = kc.get_initializer(moving_variance_initializer,
                                                              "moving_variance_initializer")
        self.beta_regularizer = kc.get_regularizer(beta_regularizer, "beta_regularizer")
        self.gamma_regularizer = kc.get_regularizer(gamma_regularizer, "gamma_regularizer")
        self.beta_constraint = kc.get_constraint(beta_constraint, "beta_constraint")
        self.gamma_constraint = kc.get_constraint(gamma_constraint, "gamma_constraint")
        self.renorm = _validate.check_bool(renorm, "renorm")
        if self.renorm:
            self.renorm_clipping = self._check_clipping(renorm_clipping)
            self.renorm_momentum = _validate.check_finite(renorm_momentum, "renorm_momentum")
        if fused is not None and not isinstance(fused, (bool, np.bool_)):
            raise TypeError(f"`fused` must be None, True or False. "
                            f"{_validate.received('fused', fused)}")
        self.fused = None if fused is None else bool(fused)
        self._trainable = _validate.check_bool(trainable, "trainable")
        virtual_batch_size = _validate.check_virtual_batch_size(virtual_batch_size)
        if virtual_batch_size is not None:
            if adjustment is not None:
                raise ValueError("When using `virtual_batch_size`, adjustment cannot be specified. "
                                 f"Received: adjustment={adjustment!r}")
        self.virtual_batch_size = virtual_batch_size
        if adjustment is not None and not callable(adjustment):
            raise TypeError(f"`adjustment` must be a callable or None. "
                            f"{_validate.received('adjustment', adjustment)}")
        self.adjustment = adjustment
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string. {_validate.received('name', name)}")
        self.name = name if name else _Names.unique("batch_normalization")
        self._sync = None
        if self.synchronized:
            from .distributed import Synchronizer
            self._sync = Synchronizer(comm)
        self._compute_dtype, self._param_dtype = (_np_dtype(t) for t in _POLICIES[self._policy])
        self._layer_kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
        self._variables = {}
        self._input_spec = None
        self._fused_path = False
        self._cache = None
        self._layouts = {}
        self._valid_shapes = set()
        self._outputs = OutputPool()
        self.grads = {}
        self.built = False

    # --------------------------------------------------------------------------------------------
    # construction

    @staticmethod
    def _check_clipping(clipping):
        clipping = {} if clipping is None else clipping
        if not isinstance(clipping, dict):
            raise TypeError("`renorm_clipping` must be a dict or None. "
                            f"{_validate.received('renorm_clipping', clipping)}")
        bad = set(clipping) - set(_CLIPPING_KEYS)
        if bad:
            raise ValueError(f"Received invalid keys for `renorm_clipping` argument: {bad}. "
                             f"Supported values: {list(_CLIPPING_KEYS)}.")
        out = {}
        for key, value in clipping.items():
            out[key] = None if value is None else _validate.check_float(
                value, f"renorm_clipping['{key}']")
        return out

    @property
    def dtype(self):
        """The variable dtype name (``'float32'`` for the mixed policies)."""
        return self._param_dtype.name

    @property
    def compute_dtype(self):
        return self._compute_dtype.name

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = _validate.check_bool(value, "trainable")
        for v in self._variables.values():
            if v.name.split("/")[-1] in ("gamma", "beta"):
                v.trainable = self._trainable

    def _resolve_axes(self, ndim):
        axes = _validate.resolve_axes(self.axis, ndim)
        if self.virtual_batch_size is not None:
            _validate.check_ghost_axes(axes, self.axis)
        return axes

    def build(self, input_shape):
        """Create the weights for inputs of ``input_shape`` (feature dims must be known).

        Raises
        ------
        ValueError
            Undefined rank, a bad ``axis``, or an unknown feature dimension.
        """
        if self.built:
            return
        shape = _check_input_shape(input_shape)
        given = _validate.resolve_axes(self.axis, len(shape), sort=False)
        axes = self._resolve_axes(len(shape))
        if any(shape[a] is None for a in axes):
            raise ValueError("Input has undefined `axis` dimension. "
                             f"Received input with shape {shape} and axis={self.axis!r}")
        ndim = len(shape)
        if len(axes) == 1 and self.virtual_batch_size is None:
            param_shape = (shape[axes[0]],)
        else:
            param_shape = tuple(shape[a] if a in axes else 1 for a in range(ndim))
            if self.virtual_batch_size is not None:
                param_shape = param_shape[:1] + (1,) + param_shape[1:]
        values = self._initial_values(param_shape)
        initial = self._layer_kwargs.get("weights")
        if initial is not None:
            values = dict(zip(values, self._checked_weights(
                initial, [(f"{self.name}/{k}:0", v.shape) for k, v in values.items()])))
        self._axes = axes
        self._param_shape = param_shape
        self._input_spec = (ndim, {a: shape[a] for a in axes})
        self._fused_path = self._takes_fused_path(ndim, axes)
        self._variables = {}
        for key, value in values.items():
            trainable = key in ("gamma", "beta") and self._trainable
            self._variables[key] = Variable(
                f"{self.name}/{key}:0", value, trainable,
                regularizer=getattr(self, f"{key}_regularizer", None),
                constraint=getattr(self, f"{key}_constraint", None))
        self._given_axis = self.axis
        self.axis = list(given)
        self.built = True

    def _unbuild(self):
        """Undo :meth:`build` (for a first call that failed after building)."""
        self._variables = {}
        self._input_spec = None
        self._layouts.clear()
        self._valid_shapes.clear()
        self.axis = self._given_axis
        self.built = False

    def _initial_values(self, shape):
        """Every weight's initial value, in Keras' creation order; validated before use."""
        def make(init, name):
            value = _validate.as_real_array(init(shape, self._param_dtype),
                                            f"the output of {name}", self._param_dtype)
            if value.shape != shape:
                raise ValueError(f"`{name}` returned shape {value.shape}, expected {shape}")
            return np.ascontiguousarray(value)

        values = {}
        if self.scale:
            values["gamma"] = make(self.gamma_initializer, "gamma_initializer")
        if self.center:
            values["beta"] = make(self.beta_initializer, "beta_initializer")
        values["moving_mean"] = make(self.moving_mean_initializer, "moving_mean_initializer")
        values["moving_variance"] = make(self.moving_variance_initializer,
                                         "moving_variance_initializer")
        if self.renorm:
            values["moving_stddev"] = np.sqrt(
                make(self.moving_variance_initializer, "moving_variance_initializer"))
            values["renorm_mean"] = make(self.moving_mean_initializer, "moving_mean_initializer")
            values["renorm_stddev"] = np.sqrt(
                make(self.moving_variance_initializer, "moving_variance_initializer"))
        return values

    def _takes_fused_path(self, ndim, axes):
        """Whether the V1 Keras class would run its fused kernel (§3.4 of the semantics)."""
        if self.fused is False or self.renorm or self.virtual_batch_size is not None:
            return False
        if self.adjustment is not None or self._compute_dtype == np.float64:
            return False
        return (ndim == 4 and axes in ((1,), (3,))) or (ndim == 5 and axes in ((1,), (4,)))

    # --------------------------------------------------------------------------------------------
    # weights

    _WEIGHT_NAMES = ("gamma", "beta", "moving_mean", "moving_variance", "moving_stddev",
                     "renorm_mean", "renorm_stddev")

    def __getattr__(self, key):
        # gamma, beta, moving_mean, ... as attributes, like the Keras layer's variables.
        variables = self.__dict__.get("_variables", {})
        if key in variables:
            return variables[key]
        if key in self._WEIGHT_NAMES:
            hint = ("it is created when the layer is built: call build(input_shape) or the layer "
                    "first" if not self.__dict__.get("built") else "this layer has no such weight")
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r} "
                                 f"({hint})")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    def __setattr__(self, key, value):
        # Rebinding a weight name would hide the weight; in-place updates keep it
        # (``layer.gamma -= lr * g`` assigns back the same Variable).
        variables = self.__dict__.get("_variables", {})
        if key in variables:
            if value is not variables[key]:
                raise AttributeError(f"Cannot replace weight {key!r}; update it in place with "
                                     f"layer.{key}.assign(value) or set_weights()")
            return
        object.__setattr__(self, key, value)

    @property
    def weights(self):
        """All weights, in Keras order: gamma, beta, moving_mean, moving_variance, [renorm's]."""
        return list(self._variables.values())

    @property
    def trainable_weights(self):
        return [v for v in self._variables.values() if v.trainable]

    @property
    def non_trainable_weights(self):
        return [v for v in self._variables.values() if not v.trainable]

    def get_weights(self):
        """Copies of every weight, in :attr:`weights` order (the Keras order and shapes)."""
        return [v.value.copy() for v in self._variables.values()]

    def set_weights(self, weights):
        """Set every weight from a list in :attr:`weights` order.

        Each array has the weight's shape, or is flat with one value per feature. Nothing is
        changed unless every array is valid.
        """
        if not self.built:
            raise RuntimeError(f"Layer {self.name!r} has no weights yet: call it or build() first")
        variables = list(self._variables.values())
        new = self._checked_weights(weights, [(v.name, v.shape) for v in variables])
        for var, w in zip(variables, new):
            var.value[...] = w

    def _checked_weights(self, weights, specs):
        """``weights`` validated against ``specs`` [(name, shape)], as param-dtype arrays."""
        if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
            raise TypeError(f"`weights` must be a list of arrays. "
                            f"{_validate.received('weights', weights)}")
        if len(weights) != len(specs):
            raise ValueError(
                f"You called `set_weights(weights)` on layer {self.name!r} with a weight list of "
                f"length {len(weights)}, but the layer was expecting {len(specs)} weights. "
                f"Received: weights of length {len(weights)}")
        new = []
        for (name, shape), w in zip(specs, weights):
            w = _validate.as_real_array(w, name, self._param_dtype)
            if w.shape != shape and not (w.ndim == 1 and w.size == int(np.prod(shape))):
                raise ValueError(
                    f"Layer {self.name!r} weight shape {shape} is not compatible with "
                    f"provided weight shape {w.shape}. Received: {name} of shape {w.shape}")
            new.append(np.ascontiguousarray(w.reshape(shape)))
        return new

    @property
    def losses(self):
        """Regularization losses of gamma and beta (floats), from their current values."""
        out = []
        for key in ("gamma", "beta"):
            var = self._variables.get(key)
            if var is not None and var.regularizer is not None:
                out.append(float(var.regularizer(var.value)))
        return out

    def apply_constraints(self):
        """Project gamma and beta with their constraints, as a Keras optimizer does per step."""
        updates = {}
        for key in ("gamma", "beta"):
            var = self._variables.get(key)
            if var is not None and var.constraint is not None:
                value = np.asarray(var.constraint(var.value.copy()))
                if value.shape != var.shape:
                    raise ValueError(f"`{key}_constraint` returned shape {value.shape}, "
                                     f"expected {var.shape}")
                updates[key] = value.astype(self._param_dtype)
        for key, value in updates.items():
            self._variables[key].value[...] = value

    # --------------------------------------------------------------------------------------------
    # forward and backward

    def __call__(self, inputs, training=None, mask=None):
        """Normalize ``inputs``.

        Parameters
        ----------
        inputs : array
            NumPy array (or array-like) of any rank, or a CUDA array (CuPy, Numba device
            array, ...); integer input is cast to the layer dtype.
        training : bool, 0/1 or None
            ``True``: normalize with this batch's statistics and update the moving statistics
            (unless the layer is not trainable). ``False``/``None``: use the moving statistics.
        mask : array of bool, optional
            In training, the positions whose values make the batch statistics (and so the
            moving statistics, with the masked count): the input's shape without the feature
            axes, e.g. ``(N, T)`` for ``(N, T, C)`` as a Keras ``Embedding(mask_zero=True)``
            gives, or any shape that broadcasts to the input with size 1 on the feature axes.
            Every position is normalized, and :meth:`backward` is exact. Ignored in inference.

        Returns
        -------
        array
            Same shape and kind (NumPy, CuPy, ...) as ``inputs``, in the layer's compute dtype.
        """
        x, device = _validate.as_input_array(inputs, "inputs")
        eng = _dispatch.engine(device)       # an unavailable engine fails before any state change
        x, wrap = eng.adopt(x)
        training = self._check_training(training)
        if mask is not None and training and self.virtual_batch_size is not None:
            raise ValueError("`mask` cannot be combined with `virtual_batch_size`. "
                             f"Received: a mask for layer {self.name!r} with "
                             f"virtual_batch_size={self.virtual_batch_size}")
        checked = (x.shape, training)
        if not (self.built and checked in self._valid_shapes):
            self._check_call(x.shape, training)
        building = not self.built
        if building:
            self.build(x.shape)
        try:
            if training:
                y, cache, commit = self._train(x, device, mask)
            else:
                y, cache = self._infer(x, device)
                commit = None
            y = wrap(eng.astype(y, self._compute_dtype))
            cache.wrap = wrap
        except BaseException:
            if building:                 # a failed first call leaves the layer as it found it
                self._unbuild()
            raise
        if len(self._valid_shapes) > 64:
            self._valid_shapes.clear()
        self._valid_shapes.add(checked)      # passed every check: skip them next time
        if commit is not None:
            commit()                     # state changes only once everything has succeeded
        self._cache = (cache, np.dtype(x.dtype).newbyteorder("="))
        return y

    def _check_call(self, shape, training):
        """Checks of an input shape that do not depend on the values (memoized per shape)."""
        if self.built:
            self._check_input_spec(shape)
        self._resolve_axes(len(shape))
        if training:
            # a synchronized layer's process may hold none of the batch (the others do)
            if 0 in shape and not (self.synchronized and shape and shape[0] == 0):
                raise ValueError(
                    "Cannot compute batch statistics of an empty batch in training: the moving "
                    f"statistics would become NaN. Received: inputs with shape {tuple(shape)}")
            if self.virtual_batch_size is not None and not (self.synchronized and shape[0] == 0):
                _validate.check_ghost_batch(self.virtual_batch_size, shape)

    def _check_training(self, training):
        if training is None:
            return False                 # Keras' learning phase outside fit(): inference
        if isinstance(training, (bool, np.bool_)):
            return bool(training)
        if isinstance(training, (int, np.integer)) and training in (0, 1):
            return bool(training)
        raise TypeError("`training` must be a boolean, 0/1 or None. "
                        f"{_validate.received('training', training)}")

    def _check_input_spec(self, shape):
        ndim, dims = self._input_spec
        if len(shape) != ndim:
            raise ValueError(
                f"Input 0 of layer {self.name!r} is incompatible with the layer: expected "
                f"ndim={ndim}, found ndim={len(shape)}. Full shape received: {tuple(shape)}")
        for a, dim in dims.items():
            if shape[a] != dim:
                raise ValueError(
                    f"Input 0 of layer {self.name!r} is incompatible with the layer: expected "
                    f"axis {a} of input shape to have value {dim}, but received input with "
                    f"shape {tuple(shape)}")

    def _layout(self, shape, ghost):
        key = (tuple(shape), ghost)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) > 64:
                self._layouts.clear()
            layout = Layout(shape, self._axes, self.virtual_batch_size if ghost else None)
            self._layouts[key] = layout
        return layout

    def _flat(self, key, device):
        """Weight ``key`` as the flat vector the engine of ``device`` takes (None if absent)."""
        var = self._variables.get(key)
        return None if var is None else _dispatch.engine(device).as_vector(var.live(device))

    def _adjustment_factors(self, shape):
        """Call ``adjustment`` and reduce its outputs to per-feature ``(C,)`` vectors."""
        out = self.adjustment(np.array(shape, dtype=np.int32))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ValueError("`adjustment` must return a pair (scale, bias). "
                             f"Received: {type(out).__name__} {out!r}")
        ndim = len(shape)
        feature_shape = tuple(shape[a] if a in self._axes else 1 for a in range(ndim))
        factors = []
        for label, value in zip(("scale", "bias"), out):
            v = _validate.as_real_array(value, f"the {label} returned by adjustment")
            try:
                if v.ndim > ndim:
                    raise ValueError
                full = np.broadcast_to(v.reshape((1,) * (ndim - v.ndim) + v.shape), feature_shape)
            except ValueError:
                raise ValueError(
                    f"The {label} returned by `adjustment` must broadcast to the per-feature "
                    f"shape {feature_shape} of inputs with shape {tuple(shape)}. "
                    f"Received: {label} with shape {v.shape}") from None
            factors.append(np.ascontiguousarray(full).reshape(-1))
        return factors

    def _train(self, x, device, mask=None):
        layout = self._layout(x.shape, self.virtual_batch_size is not None)
        eng = _dispatch.engine(device)
        xc = eng.canonical(x, layout, self._compute_dtype)
        weights = None
        if mask is not None:
            weights = F.mask_weights(mask, layout, device)
            mean, var, count = eng.masked_moments(xc, weights)
            if self._sync is None:
                F.check_masked_count(count, layout)
        else:
            mean, var = eng.moments(xc, layout.rows_per_sample, layout.groups)
            count = layout.count
        reduce_sums = None
        if self._sync is None:
            # under ghost batching the moving statistics take the average over groups
            batch_mean, batch_var = eng.group_average(mean, var)
        elif self.virtual_batch_size is None:
            mean, var, count = self._sync.moments(eng, mean, var, count)
            if count == 0:
                raise ValueError("Cannot compute batch statistics of an empty batch in training: "
                                 "every process of the synchronized layer received an empty "
                                 f"batch. Received: inputs with shape {tuple(x.shape)}")
            batch_mean, batch_var = mean[0], var[0]
            reduce_sums = functools.partial(self._sync.sums, eng)   # the backward's collective
        else:                            # ghost groups stay within a process
            batch_mean, batch_var = self._sync.group_average(eng, mean, var)
        C = layout.channels
        ones, zeros = eng.constant(C, 1.0), eng.constant(C, 0.0)
        r, d = (self._renorm_correction(eng, device, batch_mean, batch_var) if self.renorm
                else (ones, zeros))
        adj_scale, adj_bias = ([eng.to_device(f, xc) for f in self._adjustment_factors(x.shape)]
                               if self.adjustment is not None else (ones, zeros))
        gamma, beta = self._flat("gamma", device), self._flat("beta", device)
        y, cache = F.normalize_vectors(
            xc, layout, device, mean, var, self.epsilon, ones if gamma is None else gamma,
            zeros if beta is None else beta, r, d, adj_scale, adj_bias,
            out=self._output(layout, self._compute_dtype, "y", device), dtype=self._compute_dtype)
        cache.count, cache.reduce_sums, cache.weights = count, reduce_sums, weights

        def commit():
            self._update_statistics(eng, device, batch_mean, batch_var, count)
        return y, cache, commit

    def _infer(self, x, device):
        layout = self._layout(x.shape, False)
        eng = _dispatch.engine(device)
        xc = eng.canonical(x, layout, self._compute_dtype)
        return F.normalize_moving(xc, layout, device, self._flat("moving_mean", device),
                                  self._flat("moving_variance", device), self.epsilon,
                                  self._flat("gamma", device), self._flat("beta", device),
                                  out=self._output(layout, self._compute_dtype, "y", device),
                                  dtype=self._compute_dtype)

    def _output(self, layout, dtype, role, device):
        """A reusable array for a result of ``layout``'s shape, or None to let the op allocate.

        Only NumPy results are pooled: whether an array is free is read from its reference
        count, which a device array's owners (CuPy, a memory pool) do not reflect.
        """
        if (not self.reuse_outputs or device != _dispatch.CPU or layout.perm is not None
                or dtype != self._compute_dtype):
            return None
        return self._outputs.take(layout.shape, dtype, role)

    def _renorm_correction(self, eng, device, mean, var):
        """Batch renormalization's r and d from pre-update renorm statistics (held constant)."""
        clip = self.renorm_clipping
        return eng.renorm_correction(mean, var, self._variables["renorm_mean"].live(device),
                                     self._variables["renorm_stddev"].live(device), self.epsilon,
                                     clip.get("rmin"), clip.get("rmax"), clip.get("dmax"))

    def _decay(self, momentum):
        # Keras forms 1 - momentum in Python and stores it as a float32 tensor.
        return float(np.float32(1.0 - momentum))

    def _update_statistics(self, eng, device, mean, var, count):
        """The moving-average updates of one training step (``mean``/``var``: biased, (C,))."""
        def live(key):
            return self._variables[key].live(device)
        frozen = not self._trainable
        if self.renorm:
            stddev = eng.stddev(var, self.epsilon)
            decay = self._decay(self.renorm_momentum)
            eng.moving_averages(live("renorm_mean"), mean, live("renorm_stddev"), stddev, decay)
            if frozen:
                return
            decay = self._decay(self.momentum)
            eng.moving_averages(live("moving_mean"), mean, live("moving_stddev"), stddev, decay)
            eng.variance_from_stddev(live("moving_variance"), live("moving_stddev"),
                                     self.epsilon)
            return
        if frozen:
            return
        bessel = count / max(count - 1, 1) if self._fused_path else 1.0
        decay = self._decay(self.momentum)
        eng.moving_averages(live("moving_mean"), mean, live("moving_variance"), var, decay,
                            second_scale=bessel)

    def backward(self, dy):
        """Gradient of the last call with respect to its input.

        Training calls differentiate through the batch statistics; inference calls through the
        (constant) moving statistics. Also sets :attr:`grads` to ``{"gamma": ..., "beta": ...}``
        for the parameters that exist and are trainable (an empty dict when the layer is frozen).

        The layer keeps a reference to the last input (no copy, to keep the forward pass at
        memory speed): do not write into that array between the call and ``backward``.

        Parameters
        ----------
        dy : array
            Gradient of the loss with respect to the last output (same shape).

        Returns
        -------
        ndarray
            ``dx``, same shape as the last input, in its floating dtype (the compute dtype for
            integer input).
        """
        if self._cache is None:
            raise RuntimeError(f"backward() called on layer {self.name!r} before any forward call")
        cache, input_dtype = self._cache
        dy, device = _validate.as_input_array(dy, "dy")
        _dispatch.check_same_device(cache.device, [("dy", dy)])
        if tuple(dy.shape) != cache.layout.shape:
            raise ValueError(f"`dy` must have the shape of the last input {cache.layout.shape}. "
                             f"Received: dy with shape {tuple(dy.shape)}")
        eng = _dispatch.engine(device)
        dy, _ = eng.adopt(dy)
        dx_dtype = input_dtype if _validate.is_float(input_dtype) else self._compute_dtype
        dx, dgamma, dbeta = F.backward(dy, cache, dtype=dx_dtype,
                                       out=self._output(cache.layout, dx_dtype, "dx", device))
        if self._sync is not None and cache.training and cache.layout.ghost:
            dgamma, dbeta = self._sync.sums(eng, dgamma, dbeta)    # the whole batch's gradients
        grads = {}
        wrap = cache.wrap
        if self._trainable:
            if self.scale:
                grads["gamma"] = wrap(eng.astype(dgamma, self._param_dtype).reshape(
                    self._param_shape))
            if self.center:
                grads["beta"] = wrap(eng.astype(dbeta, self._param_dtype).reshape(
                    self._param_shape))
        self.grads = grads
        return wrap(eng.astype(dx, dx_dtype))

    # --------------------------------------------------------------------------------------------
    # config

    def get_config(self):
        """Constructor arguments, JSON-safe, in the Keras key order (``fused`` and ``adjustment``
        are not included, as in Keras)."""
        config = {
            "name": self.name,
            "trainable": self._trainable,
            "dtype": self._policy,
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": kc.serialize_initializer(self.beta_initializer),
            "gamma_initializer": kc.serialize_initializer(self.gamma_initializer),
            "moving_mean_initializer": kc.serialize_initializer(self.moving_mean_initializer),
            "moving_variance_initializer": kc.serialize_initializer(
                self.moving_variance_initializer),
            "beta_regularizer": kc.serialize_regularizer(self.beta_regularizer),
            "gamma_regularizer": kc.serialize_regularizer(self.gamma_regularizer),
            "beta_constraint": kc.serialize_constraint(self.beta_constraint),
            "gamma_constraint": kc.serialize_constraint(self.gamma_constraint),
        }
        if self.renorm:
            config["renorm"] = True
            config["renorm_clipping"] = dict(self.renorm_clipping)
            config["renorm_momentum"] = self.renorm_momentum
        if self.virtual_batch_size is not None:
            config["virtual_batch_size"] = self.virtual_batch_size
        if self.synchronized:
            config["synchronized"] = True
        return config

    @classmethod
    def from_config(cls, config):
        """A new, unbuilt layer from :meth:`get_config` output."""
        return cls(**config)

    # --------------------------------------------------------------------------------------------
    # persistence, tf.keras, inference folding

    def save(self, path):
        """Write the configuration and weights to one ``.npz`` file at ``path``.

        The file is written beside ``path`` and renamed over it when complete, so a crash never
        leaves a half-written file; it holds no pickled objects. Read it back with
        :func:`numbabn.load`. The ``adjustment`` callable and ``comm`` are not stored (they
        are not in the configuration either).

        Raises
        ------
        ValueError
            The configuration holds Python callables that cannot be written to a file.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(momentum=0.5)
        >>> _ = layer(np.arange(12.0).reshape(4, 3), training=True)
        >>> path = os.path.join(tempfile.mkdtemp(), "bn.npz")
        >>> _ = layer.save(path)
        >>> again = numbabn.load(path)
        >>> bool(np.array_equal(again.moving_mean.value, layer.moving_mean.value))
        True
        """
        from . import persistence
        return persistence.save(self, path)

    @classmethod
    def from_keras(cls, keras_layer):
        """A layer with the configuration and weights of a tf.keras ``BatchNormalization``."""
        from . import persistence
        return persistence.from_keras(keras_layer, cls)

    def to_keras(self):
        """A ``tf.compat.v1.keras.layers.BatchNormalization`` with this layer's configuration and
        weights (needs TensorFlow)."""
        from . import persistence
        return persistence.to_keras(self)

    def fold(self, kernel, bias=None, axis=-1):
        """Fold this layer's inference transform into the preceding Dense or Conv layer.

        In inference the layer computes ``gamma * (z - moving_mean) / sqrt(moving_variance +
        epsilon) + beta`` for each output feature ``z`` of the previous layer. With
        ``s = gamma / sqrt(moving_variance + epsilon)``, the previous layer with kernel
        ``kernel * s`` (along its output-feature axis) and bias ``(bias - moving_mean) * s +
        beta`` computes the same thing alone.

        Parameters
        ----------
        kernel : array
            The previous layer's weights; ``kernel.shape[axis]`` is its number of output
            features, this layer's number of features (e.g. ``axis=-1`` for a Keras Dense or
            Conv2D kernel ``(kh, kw, c_in, c_out)``, ``axis=0`` for PyTorch's
            ``(c_out, c_in, kh, kw)``).
        bias : array, optional
            The previous layer's bias ``(c_out,)``; ``None`` for none.
        axis : int
            The kernel's output-feature axis.

        Returns
        -------
        kernel, bias : ndarray
            New arrays in the kernel's floating dtype (float32 for other dtypes); the inputs are
            not changed.

        Raises
        ------
        RuntimeError
            The layer is not built (it has no moving statistics yet).
        ValueError
            The layer normalizes several axes, or the kernel, axis or bias do not match its
            number of features.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> rng = np.random.default_rng(0)
        >>> w, b = rng.normal(size=(5, 3)), rng.normal(size=3)
        >>> bn = numbabn.BatchNormalization(momentum=0.0)
        >>> _ = bn(rng.normal(2.0, 3.0, size=(64, 3)), training=True)
        >>> w2, b2 = bn.fold(w, b)
        >>> x = rng.normal(size=(4, 5))
        >>> bool(np.allclose(x @ w2 + b2, bn(x @ w + b), atol=1e-5))
        True
        """
        if not self.built:
            raise RuntimeError(f"Layer {self.name!r} has no moving statistics yet: call it or "
                               "build() before fold()")
        channels = int(np.prod(self._param_shape))
        if len(self._axes) != 1:
            raise ValueError(f"fold() needs a layer with one feature axis. Received: layer "
                             f"{self.name!r} with axis={self.axis!r}")
        kernel = _validate.as_real_array(kernel, "kernel", None)
        axis = _validate.resolve_axes(axis, kernel.ndim, "axis")[0]
        if kernel.shape[axis] != channels:
            raise ValueError(f"The kernel's axis {axis} must have one entry per feature "
                             f"({channels}). Received: kernel with shape {kernel.shape}")
        dtype = kernel.dtype if kernel.dtype.kind == "f" else np.dtype(np.float32)
        if bias is not None:
            bias = _validate.as_real_array(bias, "bias")
            if bias.size != channels:
                raise ValueError(f"`bias` must have one value per feature ({channels}). "
                                 f"Received: bias with shape {bias.shape}")
            bias = bias.reshape(-1)

        def weight(key, default):
            var = self._variables.get(key)
            return np.full(channels, default) if var is None else (
                var.value.reshape(-1).astype(np.float64))
        scale = weight("gamma", 1.0) / np.sqrt(weight("moving_variance", 1.0) + self.epsilon)
        shape = [1] * kernel.ndim
        shape[axis] = channels
        new_kernel = (kernel.astype(np.float64) * scale.reshape(shape)).astype(dtype)
        offset = np.zeros(channels) if bias is None else bias
        new_bias = ((offset - weight("moving_mean", 0.0)) * scale
                    + weight("beta", 0.0)).astype(dtype)
        return new_kernel, new_bias

    def __repr__(self):
        state = "built" if self.built else "not built"
        return f"<BatchNormalization name={self.name!r} axis={self.axis!r} ({state})>"

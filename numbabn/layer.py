"""The ``BatchNormalization`` layer: state and policy; the arithmetic lives in ``_ops``.

It follows ``tf.compat.v1.keras.layers.BatchNormalization`` (tf_keras' V1 class) argument for
argument; ``docs/numerics.md`` lists the conventions and the few places where numbabn
deliberately differs (it refuses what TF silently turns into NaN, and its config round-trips).
"""
import functools
import itertools
import threading

import numpy as np

from . import _dispatch, _dtypes, _interrupts, _ops, _validate, folding, persistence
from ._buffers import OutputPool
from ._layout import Layout
from .keras import identifiers as kc
from .keras import interchange
from .variable import Variable

__all__ = ["BatchNormalization", "load"]

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
        config = dtype.get("config")
        dtype = config.get("name", dtype) if isinstance(config, dict) else dtype
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


class _Plan:
    """What every call with one ``(shape, dtype, training, device)`` decides the same way,
    decided once (after the shape has passed every check): the canonical layout, the dtype of
    the backward's ``dx``, and whether the results may come from the output pool."""

    __slots__ = ("layout", "dx_dtype", "pooled_y", "pooled_dx")

    def __init__(self, layout, dx_dtype, pooled_y, pooled_dx):
        self.layout, self.dx_dtype = layout, dx_dtype
        self.pooled_y, self.pooled_dx = pooled_y, pooled_dx


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
    **kwargs
        Keyword-only arguments beyond the V1 Keras signature:

        ``synchronized`` (bool, default False)
            Batch statistics over the batches of every process of ``comm`` (data-parallel
            training): P processes compute what one process computes on the concatenated
            batch. See ``docs/distributed.md``. Needs mpi4py (or, for CUDA arrays, a CuPy NCCL
            communicator).
        ``comm``
            The communicator of a synchronized layer: an mpi4py communicator
            (``mpi4py.MPI.COMM_WORLD`` by default) or a ``cupy.cuda.nccl.NcclCommunicator``.
        ``dtype``
            ``'float32'`` (default), ``'float64'``, ``'float16'``, ``'mixed_float16'``,
            ``'bfloat16'`` or ``'mixed_bfloat16'`` (these two need ml_dtypes).

        and the other keyword arguments every Keras layer accepts (``input_shape``,
        ``weights``, ...).

    Attributes
    ----------
    grads : dict
        The parameter gradients of the last :meth:`backward` call: ``"gamma"`` and ``"beta"``
        (for those that exist and are trainable), arrays of the input's kind. A training call
        empties it: that call's gradients come with its :meth:`backward`.
    fused : bool
        Whether the fused path is taken, as in the V1 class: ``True`` after construction
        unless ``fused=False`` was given; once built, whether the input takes the fused path
        (4-D/5-D input with the channel axis 1 or last, no renorm, ghost batches or
        adjustment, not float64).
    supports_masking : bool
        ``True``: calls take a ``mask``.
    built : bool
        Whether the weights exist (after :meth:`build` or the first call).
    name : str
        The layer name; weights are named ``"<name>/<weight>:0"``.
    reuse_outputs : bool
        Class attribute, default True: hand out output arrays again once the caller has
        dropped them, which saves the page faults of a fresh allocation at the cost of keeping
        at most one spare output (and one spare input gradient) per input shape. Set it to
        False on a layer or on the class to always allocate.

    Raises
    ------
    TypeError
        An argument of the wrong type (``axis``, ``fused``, ``adjustment``, ``name``, a
        boolean flag) or a keyword argument no Keras layer takes.
    ValueError
        A bad value (a negative ``epsilon``, unknown ``renorm_clipping`` keys, a
        ``virtual_batch_size`` that is not a positive integer or comes with ``adjustment``, an
        unknown ``dtype``, ``comm`` without ``synchronized=True``). Nothing is created.
    ImportError
        ``synchronized=True`` without ``comm`` and without mpi4py.

    See Also
    --------
    numbabn.functional.batch_norm_train : The same normalization without state.

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

    # A fresh multi-megabyte output costs a page fault per page; see numbabn/_buffers.py.
    reuse_outputs = True
    # Keras' flag: the layer takes a `mask` argument (it is not passed on: a layer returns no
    # mask of its own)
    supports_masking = True

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
        self.momentum = _validate.check_momentum(momentum, "momentum")
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
            self.renorm_momentum = _validate.check_momentum(renorm_momentum, "renorm_momentum")
        if fused is not None and not isinstance(fused, (bool, np.bool_)):
            raise TypeError(f"`fused` must be None, True or False. "
                            f"{_validate.received('fused', fused)}")
        # V1 reads None as True; `build` resolves it to the path actually taken
        self._fused_arg = None if fused is None else bool(fused)
        self.fused = self._fused_arg is not False
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
        self._pooled_dx = False
        self._plans = {}                 # (shape, dtype, training, device) -> _Plan
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
            out[key] = None if value is None else _validate.check_not_nan(
                value, f"renorm_clipping['{key}']")
        return out

    @property
    def dtype(self):
        """The variable dtype name (``'float32'`` for the mixed policies).

        Examples
        --------
        >>> import numbabn
        >>> numbabn.BatchNormalization(dtype="mixed_float16").dtype
        'float32'
        """
        return self._param_dtype.name

    @property
    def compute_dtype(self):
        """The dtype name the layer computes and returns its outputs in.

        Examples
        --------
        >>> import numbabn
        >>> numbabn.BatchNormalization(dtype="mixed_float16").compute_dtype
        'float16'
        """
        return self._compute_dtype.name

    @property
    def trainable(self):
        """Whether gamma and beta train and the moving statistics update (settable).

        A frozen layer (``False``) still normalizes with batch statistics when called with
        ``training=True``, as the V1 Keras class does, but leaves its moving statistics alone
        (renorm's ``renorm_mean`` and ``renorm_stddev`` excepted, as in Keras) and
        :meth:`backward` leaves ``grads`` empty.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization()
        >>> layer.trainable = False
        >>> _ = layer(np.random.default_rng(0).normal(size=(8, 2)), training=True)
        >>> layer.moving_mean.value.tolist(), len(layer.trainable_weights)
        ([0.0, 0.0], 0)
        """
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = _validate.check_bool(value, "trainable")
        for key in ("gamma", "beta"):
            if key in self._variables:
                self._variables[key].trainable = self._trainable

    def _resolve_axes(self, ndim):
        axes = _validate.resolve_axes(self.axis, ndim)
        if self.virtual_batch_size is not None:
            _validate.check_ghost_axes(axes, self.axis)
        return axes

    def build(self, input_shape):
        """Create the weights for inputs of ``input_shape``.

        The first call builds the layer by itself; calling :meth:`build` first is only needed
        to read or set weights before any data has passed. A built layer ignores the call.

        Parameters
        ----------
        input_shape : tuple of int or None
            The input shape; ``None`` for a dimension not known yet (the batch), but every
            feature dimension must be known.

        Raises
        ------
        ValueError
            Undefined rank, a bad ``axis``, an unknown feature dimension, or ``weights`` given
            to the constructor that do not fit.
        TypeError
            ``input_shape`` is not a tuple of ints and ``None``.

        Examples
        --------
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(axis=1)
        >>> layer.build((None, 3, 4, 4))
        >>> layer.built, layer.axis, layer.gamma.shape
        (True, [1], (3,))
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
        self.fused = self._fused_path
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
        self._plans.clear()
        self.axis = self._given_axis
        self._fused_path = False
        self.fused = self._fused_arg is not False
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
        if self._fused_arg is False or self.renorm or self.virtual_batch_size is not None:
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
        """All weights as :class:`Variable` objects, in Keras order.

        The order is gamma, beta, moving_mean, moving_variance, then with ``renorm=True``
        moving_stddev, renorm_mean, renorm_stddev; gamma is absent with ``scale=False`` and beta
        with ``center=False``. Empty before the layer is built.

        Examples
        --------
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(center=False, name="bn")
        >>> layer.build((None, 4))
        >>> [w.name for w in layer.weights]
        ['bn/gamma:0', 'bn/moving_mean:0', 'bn/moving_variance:0']
        """
        return list(self._variables.values())

    @property
    def trainable_weights(self):
        """The weights an optimizer updates: gamma and beta, if they exist and the layer trains.

        Examples
        --------
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(name="bn")
        >>> layer.build((None, 4))
        >>> [w.name for w in layer.trainable_weights]
        ['bn/gamma:0', 'bn/beta:0']
        """
        return [v for v in self._variables.values() if v.trainable]

    @property
    def non_trainable_weights(self):
        """The weights the layer updates itself: the moving (and renorm) statistics.

        Examples
        --------
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(renorm=True, name="bn")
        >>> layer.build((None, 4))
        >>> for w in layer.non_trainable_weights:
        ...     print(w.name)
        bn/moving_mean:0
        bn/moving_variance:0
        bn/moving_stddev:0
        bn/renorm_mean:0
        bn/renorm_stddev:0
        """
        return [v for v in self._variables.values() if not v.trainable]

    def get_weights(self):
        """Return copies of every weight, in :attr:`weights` order.

        Returns
        -------
        list of numpy.ndarray
            The Keras order and shapes, so the list can go to a tf.keras layer's
            ``set_weights`` unchanged. Empty before the layer is built.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(momentum=0.0)
        >>> _ = layer(np.array([[1.0, 2.0], [3.0, 6.0]]), training=True)
        >>> [w.tolist() for w in layer.get_weights()]
        [[1.0, 1.0], [0.0, 0.0], [2.0, 4.0], [1.0, 4.0]]
        """
        return [v.value.copy() for v in self._variables.values()]

    def set_weights(self, weights):
        """Set every weight from a list in :attr:`weights` order.

        Nothing is changed unless every array is valid.

        Parameters
        ----------
        weights : list of array-like
            One array per weight, of the weight's shape or flat with one value per feature;
            cast to the weights' dtype.

        Raises
        ------
        RuntimeError
            The layer is not built yet.
        TypeError
            ``weights`` is not a list, or holds a non-numeric array.
        ValueError
            A wrong number of arrays, or an array of the wrong shape.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(epsilon=0.0)
        >>> layer.build((None, 2))
        >>> layer.set_weights([[2.0, 2.0], [0.0, 1.0], [1.0, 1.0], [4.0, 4.0]])
        >>> layer(np.array([[3.0, 3.0]])).tolist()      # 2 * (3 - 1) / 2 + beta
        [[2.0, 3.0]]
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
        """Regularization losses of gamma and beta, from their current values.

        A list of floats, one per regularized weight (gamma's first); empty without
        regularizers. Add them to the loss, as Keras' ``fit`` does.

        Examples
        --------
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(gamma_regularizer="l2")
        >>> layer.build((None, 3))
        >>> [round(loss, 6) for loss in layer.losses]       # 0.01 * sum(gamma ** 2)
        [0.03]
        """
        out = []
        for key in ("gamma", "beta"):
            var = self._variables.get(key)
            if var is not None and var.regularizer is not None:
                out.append(float(var.regularizer(var.value)))
        return out

    @property
    def loss_grads(self):
        """Gradients of ``sum(losses)`` with respect to gamma and beta, at their current values.

        What a NumPy training loop adds to ``grads`` to train on ``loss + sum(losses)`` (in
        Keras the tape differentiates the regularization losses): a dict keyed like
        ``grads``, for each trainable weight that has a regularizer, in the weight's dtype
        and of the last input's kind; empty without regularizers or when the layer is frozen.

        Raises
        ------
        TypeError
            A regularizer that is a plain callable without a ``gradient(w)`` method (the
            regularizers of ``numbabn.keras.identifiers`` all have one).

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(gamma_regularizer="l2")
        >>> layer.build((None, 2))
        >>> [round(g, 6) for g in layer.loss_grads["gamma"].tolist()]    # 2 * 0.01 * gamma
        [0.02, 0.02]
        >>> x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
        >>> y = layer(x, training=True)
        >>> dx = layer.backward(np.ones_like(y))
        >>> step = {k: g + layer.loss_grads.get(k, 0.0) for k, g in layer.grads.items()}
        >>> layer.gamma -= 0.1 * step["gamma"]          # SGD on loss + sum(layer.losses)
        >>> layer.beta -= 0.1 * step["beta"]
        """
        out = {}
        if not self._trainable:
            return out
        for key in ("gamma", "beta"):
            var = self._variables.get(key)
            if var is None or var.regularizer is None:
                continue
            gradient = getattr(var.regularizer, "gradient", None)
            if gradient is None:
                raise TypeError(
                    f"`{key}_regularizer` has no gradient: give the callable a `gradient(w)` "
                    f"method returning d penalty / d w, or use a Keras identifier such as 'l2'. "
                    f"{_validate.received(f'{key}_regularizer', var.regularizer)}")
            out[key] = np.asarray(gradient(var.value), np.float64).astype(self._param_dtype)
        if out and self._cache is not None:
            cache = self._cache
            if cache.device != _dispatch.CPU:
                eng = _dispatch.engine(cache.device)
                out = {k: cache.wrap(_ops.to_device(eng, v, cache.x)) for k, v in out.items()}
        return out

    def apply_constraints(self):
        """Project gamma and beta with their constraints, as a Keras optimizer does per step.

        The forward pass never applies constraints; call this after each parameter update.

        Raises
        ------
        ValueError
            A constraint returned an array of another shape (no weight is changed).

        Examples
        --------
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(gamma_constraint="non_neg")
        >>> layer.build((None, 3))
        >>> _ = layer.gamma.assign([-1.0, 2.0, -3.0])
        >>> layer.apply_constraints()
        >>> layer.gamma.value.tolist() == [0.0, 2.0, 0.0]
        True
        """
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

        Raises
        ------
        TypeError
            Non-numeric input, a ``training`` that is not a boolean, 0/1 or ``None``, or a bad
            ``mask``.
        ValueError
            An input the layer cannot take (another rank or feature size than the one it was
            built for, a bad ``axis``), a batch that ``virtual_batch_size`` does not divide,
            or a mask of the wrong shape or with no true value. No state changes. (An empty
            batch in training is normalized to an empty output and changes no state; its
            :meth:`backward` gives an empty ``dx`` and zero gradients.)

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> x = np.random.default_rng(0).normal(2.0, 3.0, size=(32, 4, 4, 3)).astype(np.float32)
        >>> layer = numbabn.BatchNormalization(momentum=0.0)        # NHWC: features last
        >>> y = layer(x, training=True)
        >>> y.shape, y.dtype, bool(np.allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-3))
        ((32, 4, 4, 3), dtype('float32'), True)
        >>> y_eval = layer(x, training=False)                      # the moving statistics
        >>> bool(np.allclose(y_eval.mean(axis=(0, 1, 2)), 0.0, atol=1e-5))
        True

        A mask leaves padded positions out of the statistics (here the last time step):

        >>> seq = np.random.default_rng(0).normal(size=(2, 5, 3))
        >>> keep = np.array([[True] * 4 + [False]] * 2)
        >>> y = numbabn.BatchNormalization()(seq, training=True, mask=keep)
        >>> bool(np.allclose(y[:, :4].mean(axis=(0, 1)), 0.0, atol=1e-5))
        True
        """
        x, device, eng, wrap = _ops.adopt(inputs, "inputs")
        training = self._check_training(training)
        if mask is not None and training and self.virtual_batch_size is not None:
            raise ValueError("`mask` cannot be combined with `virtual_batch_size`. "
                             f"Received: a mask for layer {self.name!r} with "
                             f"virtual_batch_size={self.virtual_batch_size}")
        key = (x.shape, x.dtype, training, device)
        plan = self._plans.get(key) if self.built else None
        building = not self.built
        planned = plan is not None
        if not planned:
            self._check_call(x.shape, training)
            if building:
                self.build(x.shape)
            plan = self._plan(x, training, device)
        try:
            if training:
                y, cache, commit = self._train(x, eng, wrap, plan, mask)
            else:
                y, cache = self._infer(x, eng, wrap, plan)
                commit = None
            y = wrap(y)
        except BaseException:
            if building:                 # a failed first call leaves the layer as it found it
                self._unbuild()
            raise
        if not planned:                  # passed every check: skip them next time
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan
        if commit is not None:
            commit()                     # state changes only once everything has succeeded
        # straight into __dict__: these names are never weights (see __setattr__)
        self.__dict__["_cache"] = cache
        self.__dict__["_pooled_dx"] = plan.pooled_dx
        if training:
            self.__dict__["grads"] = {}  # this call's gradients come with its backward
        return y

    def _check_call(self, shape, training):
        """Checks of an input shape that do not depend on the values (memoized per shape)."""
        if self.built:
            self._check_input_spec(shape)
        self._resolve_axes(len(shape))
        # an empty batch is normalized to an empty output and changes no state (PyTorch's rule)
        if training and self.virtual_batch_size is not None:
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

    def _plan(self, x, training, device):
        """The :class:`_Plan` of calls like this one (``x`` has passed :meth:`_check_call`)."""
        layout = Layout(x.shape, self._axes,
                        self.virtual_batch_size if training else None)
        dx_dtype = (_dtypes.result(x.dtype) if _validate.is_float(x.dtype)
                    else self._compute_dtype)
        # only NumPy results are pooled: whether an array is free is read from its reference
        # count, which a device array's owners (CuPy, a memory pool) do not reflect
        pooled = device == _dispatch.CPU and layout.perm is None
        return _Plan(layout, dx_dtype, pooled, pooled and dx_dtype == self._compute_dtype)

    def _flat(self, key, eng, copy_for=None):
        """Weight ``key`` as the flat vector the engine ``eng`` takes (None if absent); with
        ``copy_for`` (the call's input), one that the weight's later updates do not reach."""
        var = self._variables.get(key)
        return None if var is None else _ops.vector(eng, var.live(eng.DEVICE), copy_for)

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

    def _train(self, x, eng, wrap, plan, mask=None):
        layout = plan.layout
        xc = _ops.canonical(eng, x, layout, self._compute_dtype)
        if mask is None and self._sync is None and not self.renorm:
            return self._train_plain(x, xc, plan, eng, wrap)
        weights = None if mask is None else _ops.mask_weights(mask, layout, eng.DEVICE)
        mean, var, count = _ops.statistics(eng, xc, layout, weights)
        if weights is not None and self._sync is None:
            _ops.check_masked_count(count, layout)
        reduce_sums = None
        if self._sync is None:
            # under ghost batching the moving statistics take the average over groups
            batch_mean, batch_var = _ops.group_average(eng, mean, var)
        elif self.virtual_batch_size is None:
            mean, var, count = self._sync.moments(eng, mean, var, count)
            batch_mean, batch_var = mean[0], var[0]
            reduce_sums = functools.partial(self._sync.sums, eng)   # the backward's collective
        else:                            # ghost groups stay within a process
            batch_mean, batch_var, groups = self._sync.group_average(eng, mean, var)
        r = d = adj_scale = adj_bias = None
        if self.renorm:
            r, d = _ops.renorm_correction(
                eng, batch_mean, batch_var, self._variables["renorm_mean"].live(eng.DEVICE),
                self._variables["renorm_stddev"].live(eng.DEVICE), self.epsilon,
                self.renorm_clipping)
        if self.adjustment is not None:
            adj_scale, adj_bias = self._adjustment_factors(x.shape)
        affine = _ops.compose(eng, layout.channels, xc, self._flat("gamma", eng, xc),
                              self._flat("beta", eng), r, d, adj_scale, adj_bias)
        y, cache = _ops.normalize(
            eng, xc, layout, mean, var, self.epsilon, affine, training=True,
            dx_dtype=plan.dx_dtype, count=count, weights=weights, reduce_sums=reduce_sums,
            out=self._output(plan.pooled_y, layout, self._compute_dtype, "y"),
            dtype=self._compute_dtype, wrap=wrap)
        # ghost groups stay within a process: there only the group count says whether any
        # process held data
        ghost_sync = self._sync is not None and self.virtual_batch_size is not None
        if (groups == 0) if ghost_sync else (count == 0):
            return y, cache, None        # an empty batch (on every process): no statistics

        def commit():
            if self.renorm:              # five weights, one after another: all or none
                with _interrupts.deferred():
                    self._update_statistics(eng, batch_mean, batch_var, count)
            else:                        # one kernel updates both weights
                self._update_statistics(eng, batch_mean, batch_var, count)
        return y, cache, commit

    def _train_plain(self, x, xc, plan, eng, wrap):
        """A training call normalized by this batch's own statistics (no mask, no collective,
        no renormalization): the common case, fused for small inputs."""
        layout = plan.layout
        adj_scale = adj_bias = None
        if self.adjustment is not None:
            adj_scale, adj_bias = self._adjustment_factors(x.shape)
        affine = _ops.compose(eng, layout.channels, xc, self._flat("gamma", eng, xc),
                              self._flat("beta", eng), adj_scale=adj_scale, adj_bias=adj_bias)
        y, cache = _ops.train(eng, xc, layout, self.epsilon, affine, dx_dtype=plan.dx_dtype,
                              out=self._output(plan.pooled_y, layout, self._compute_dtype, "y"),
                              dtype=self._compute_dtype, wrap=wrap)
        if layout.count == 0:
            return y, cache, None        # an empty batch: no statistics
        count = layout.count
        # under ghost batching the moving statistics take the average over groups
        mean, var = _ops.group_average(eng, cache._mean, cache._var)
        return y, cache, lambda: self._update_statistics(eng, mean, var, count)

    def _infer(self, x, eng, wrap, plan):
        layout = plan.layout
        xc = _ops.canonical(eng, x, layout, self._compute_dtype)
        C = layout.channels
        affine = _ops.compose(eng, C, xc, self._flat("gamma", eng, xc),
                              self._flat("beta", eng))
        return _ops.normalize(
            eng, xc, layout, self._flat("moving_mean", eng).reshape(1, C),
            self._flat("moving_variance", eng).reshape(1, C), self.epsilon, affine,
            training=False, dx_dtype=plan.dx_dtype,
            out=self._output(plan.pooled_y, layout, self._compute_dtype, "y"),
            dtype=self._compute_dtype, wrap=wrap)

    def _output(self, pooled, layout, dtype, role):
        """A reusable array for a result of ``layout``'s shape, or None to let the op allocate
        (``pooled``: whether the call's plan lets the result come from the pool)."""
        if not (pooled and self.reuse_outputs):
            return None
        return self._outputs.take(layout.shape, dtype, role)

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def _decay(momentum):
        # Keras forms 1 - momentum in Python and stores it as a float32 tensor.
        return float(np.float32(1.0 - momentum))

    def _update_statistics(self, eng, mean, var, count):
        """The moving-average updates of one training step (``mean``/``var``: biased, (C,))."""
        variables = self._variables

        def live(key):
            return variables[key].live(eng.DEVICE)
        frozen = not self._trainable
        if self.renorm:
            moving = None if frozen else (live("moving_mean"), live("moving_stddev"),
                                          live("moving_variance"), self._decay(self.momentum))
            _ops.update_renorm(eng, live("renorm_mean"), live("renorm_stddev"), mean, var,
                               self.epsilon, self._decay(self.renorm_momentum), moving)
            return
        if frozen:
            return
        bessel = count / max(count - 1, 1) if self._fused_path else 1.0
        _ops.update_moving(eng, live("moving_mean"), live("moving_variance"), mean, var,
                           self._decay(self.momentum), variance_scale=bessel)

    def backward(self, dy):
        """Gradient of the last call with respect to its input.

        Training calls differentiate through the batch statistics; inference calls through the
        (constant) moving statistics. Also sets ``grads`` to ``{"gamma": ..., "beta": ...}``
        for the parameters that exist and are trainable (an empty dict when the layer is frozen).

        The layer keeps a reference to the last input (no copy, to keep the forward pass at
        memory speed): do not write into that array between the call and ``backward``.

        Parameters
        ----------
        dy : array
            Gradient of the loss with respect to the last output (same shape).

        Returns
        -------
        array
            ``dx``, same shape and kind as the last input, in its floating dtype (the compute
            dtype for integer input).

        Raises
        ------
        RuntimeError
            No forward call yet.
        ValueError
            ``dy`` does not have the shape of the last input.
        TypeError
            ``dy`` is not numeric, or is on another device than the last input.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(16, 3))
        >>> layer = numbabn.BatchNormalization()
        >>> y = layer(x, training=True)
        >>> dx = layer.backward(2.0 * y)            # the gradient of sum(y ** 2)
        >>> dx.shape, sorted(layer.grads), layer.grads["beta"].shape
        ((16, 3), ['beta', 'gamma'], (3,))

        A constant ``dy`` only shifts every output of a feature equally; batch normalization
        removes any shift, so the input gradient is zero:

        >>> bool(np.allclose(layer.backward(np.ones_like(y)), 0.0, atol=1e-6))
        True
        """
        if self._cache is None:
            raise RuntimeError(f"backward() called on layer {self.name!r} before any forward call")
        cache = self._cache
        dy, device, eng, _ = _ops.adopt(dy, "dy", cache.device)
        if tuple(dy.shape) != cache.layout.shape:
            raise ValueError(f"`dy` must have the shape of the last input {cache.layout.shape}. "
                             f"Received: dy with shape {tuple(dy.shape)}")
        dx, dgamma, dbeta = _ops.backward(
            eng, dy, cache, out=self._output(self._pooled_dx, cache.layout, cache.dx_dtype, "dx"))
        if self._sync is not None and cache.training and cache.layout.ghost:
            dgamma, dbeta = self._sync.sums(eng, dgamma, dbeta)    # the whole batch's gradients
        grads = {}
        wrap = cache.wrap
        if self._trainable:
            if self.scale:
                grads["gamma"] = wrap(_ops.as_weight(eng, dgamma, self._param_dtype,
                                                     self._param_shape))
            if self.center:
                grads["beta"] = wrap(_ops.as_weight(eng, dbeta, self._param_dtype,
                                                    self._param_shape))
        self.__dict__["grads"] = grads
        return wrap(dx)

    # --------------------------------------------------------------------------------------------
    # config

    def get_config(self):
        """Return the constructor arguments, JSON-safe, in the Keras key order.

        ``fused`` and ``adjustment`` are not included, as in Keras; ``renorm``'s arguments,
        ``virtual_batch_size`` and ``synchronized`` only when they are used.

        Returns
        -------
        dict
            Arguments for :meth:`from_config` (or a tf.keras layer's ``from_config``).

        Examples
        --------
        >>> import numbabn
        >>> config = numbabn.BatchNormalization(momentum=0.9, name="bn").get_config()
        >>> list(config)[:6], config["momentum"], config["gamma_initializer"]["class_name"]
        (['name', 'trainable', 'dtype', 'axis', 'momentum', 'epsilon'], 0.9, 'Ones')
        """
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
        """Make a new, unbuilt layer from :meth:`get_config` output.

        Parameters
        ----------
        config : dict
            Constructor arguments, as :meth:`get_config` returns them.

        Returns
        -------
        BatchNormalization
            A layer with that configuration and fresh weights.

        Examples
        --------
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(axis=1, renorm=True, name="bn")
        >>> again = numbabn.BatchNormalization.from_config(layer.get_config())
        >>> again.get_config() == layer.get_config()
        True
        """
        return cls(**config)

    # --------------------------------------------------------------------------------------------
    # persistence, tf.keras, inference folding

    def save(self, path):
        """Write the configuration and weights to one ``.npz`` file at ``path``.

        The file is written beside ``path`` and renamed over it when complete, so a crash never
        leaves a half-written file; it holds no pickled objects. Read it back with
        :func:`numbabn.load`. The ``adjustment`` callable and ``comm`` are not stored (they
        are not in the configuration either).

        Parameters
        ----------
        path : str or path-like
            The file to write (replaced if it exists); its directory must exist.

        Returns
        -------
        str
            ``path``.

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
        return persistence.save(self, path)

    @classmethod
    def from_keras(cls, keras_layer):
        """Make a layer with the configuration and weights of a tf.keras ``BatchNormalization``.

        Parameters
        ----------
        keras_layer : tf.keras.layers.BatchNormalization
            A tf.keras (Keras 2 / tf_keras) layer, built or not; a built layer's weights are
            copied.

        Returns
        -------
        BatchNormalization
            A new layer, built if ``keras_layer`` is.

        Examples
        --------
        The TensorFlow lines need TensorFlow with tf_keras (``TF_USE_LEGACY_KERAS=1``), so
        they are not run here:

        >>> import numbabn
        >>> import tensorflow as tf                                     # doctest: +SKIP
        >>> KerasBN = tf.compat.v1.keras.layers.BatchNormalization      # doctest: +SKIP
        >>> layer = numbabn.BatchNormalization.from_keras(KerasBN(momentum=0.9))  # doctest: +SKIP
        >>> layer.momentum                                              # doctest: +SKIP
        0.9
        """
        return interchange.from_keras(keras_layer, cls)

    def to_keras(self):
        """Make a ``tf.compat.v1.keras.layers.BatchNormalization`` with this layer's state.

        The Keras layer gets this layer's configuration, and its weights if this layer is
        built. ``synchronized`` is dropped (the V1 Keras class has no such argument).

        Returns
        -------
        tf.compat.v1.keras.layers.BatchNormalization
            A tf.keras (V1) layer.

        Raises
        ------
        ImportError
            TensorFlow is not installed.

        Examples
        --------
        Only the conversion needs TensorFlow (with tf_keras, ``TF_USE_LEGACY_KERAS=1``), so
        that line is not run here:

        >>> import numpy as np
        >>> import numbabn
        >>> layer = numbabn.BatchNormalization(momentum=0.9)
        >>> _ = layer(np.ones((4, 2)), training=True)
        >>> keras_layer = layer.to_keras()                              # doctest: +SKIP
        >>> len(layer.get_weights())
        4
        """
        return interchange.to_keras(self)

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
        if len(self._axes) != 1:
            raise ValueError(f"fold() needs a layer with one feature axis. Received: layer "
                             f"{self.name!r} with axis={self.axis!r}")

        def weight(key):
            var = self._variables.get(key)
            return None if var is None else var.value
        return folding.fold(kernel, bias, mean=weight("moving_mean"),
                            variance=weight("moving_variance"), gamma=weight("gamma"),
                            beta=weight("beta"), epsilon=self.epsilon, axis=axis)

    def __repr__(self):
        state = "built" if self.built else "not built"
        return f"<BatchNormalization name={self.name!r} axis={self.axis!r} ({state})>"


def load(path):
    """Load a layer saved by :meth:`BatchNormalization.save`, built and with its weights.

    The file is read without unpickling anything, so loading cannot run code from it.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    BatchNormalization
        The saved configuration, built for the saved input shape with the saved weights (an
        unbuilt layer if it was saved unbuilt).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a numbabn layer file, is corrupt, or its weights do not fit its
        configuration; the message says which.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import numbabn
    >>> layer = numbabn.BatchNormalization(axis=1, momentum=0.0)
    >>> x = np.random.default_rng(0).normal(3.0, 1.0, size=(4, 2, 3, 3))
    >>> _ = layer(x, training=True)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     loaded = numbabn.load(layer.save(os.path.join(tmp, "bn.npz")))
    >>> loaded.built, loaded.axis, bool(np.array_equal(loaded(x), layer(x)))
    (True, [1], True)
    """
    return persistence.load(path, BatchNormalization)

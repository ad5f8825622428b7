"""``Variable``: a layer weight, a NumPy array with its Keras metadata and a device copy.

The layer creates one per weight when it is built; optimizers and users update it in place.
It keeps the host and the device copies coherent, so neither the layer nor its callers ever
ask which one is current.
"""
import numpy as np

from . import _dispatch, _validate

__all__ = ["Variable"]


class Variable:
    """A named layer weight: a NumPy array plus its Keras metadata, with a device copy.

    ``value`` is the live NumPy array, updated in place by training steps on NumPy inputs.
    After calls on CUDA arrays the device copy is the current one: reading ``value`` copies it
    back (and the next CUDA call uploads whatever the host then holds), so the host and the
    device never disagree about a weight. :meth:`numpy` returns a copy.

    A layer creates its variables when it is built; they are reached as attributes
    (``layer.gamma``, ``layer.moving_mean``, ...) and listed by
    :attr:`BatchNormalization.weights`.

    Parameters
    ----------
    name : str
        Keras-style name, ``"<layer>/<weight>:0"``.
    value : numpy.ndarray
        The initial value; the variable keeps this array (no copy) and updates it in place.
    trainable : bool
        Whether an optimizer should update it (``gamma`` and ``beta`` of a trainable layer).
    regularizer : callable, optional
        ``regularizer(value) -> float``, read by :attr:`BatchNormalization.losses`.
    constraint : callable, optional
        ``constraint(value) -> array``, applied by :meth:`BatchNormalization.apply_constraints`.

    Examples
    --------
    >>> import numpy as np
    >>> import numbabn
    >>> layer = numbabn.BatchNormalization(name="bn")
    >>> layer.build((None, 3))
    >>> layer.gamma
    <Variable 'bn/gamma:0' shape=(3,) dtype=float32>
    >>> layer.gamma.value.tolist(), layer.gamma.trainable
    ([1.0, 1.0, 1.0], True)
    >>> layer.gamma -= np.array([0.5, 0.25, 0.0])      # in place, like an optimizer step
    >>> layer.gamma.numpy().tolist()
    [0.5, 0.75, 1.0]
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
        """The live NumPy array (copied back from the device first if the device copy is newer).

        Writing into it changes the weight; assigning to it (``var.value = new``) copies ``new``
        in, as :meth:`assign` does.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> var = numbabn.Variable("w", np.zeros(2, np.float32), trainable=True)
        >>> var.value[0] = 3.0
        >>> var.value = [1.0, 2.0]
        >>> var.value.tolist()
        [1.0, 2.0]
        """
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
        """Return the array on ``device`` that calls read and update in place.

        Parameters
        ----------
        device : {"cpu", "cuda"}
            Where the caller computes. ``"cuda"`` uploads the host value if the device copy is
            not the current one (this needs a GPU).

        Returns
        -------
        array
            The NumPy array itself for ``"cpu"``, the device copy for ``"cuda"``.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> var = numbabn.Variable("w", np.ones(3), trainable=False)
        >>> var.live("cpu") is var.value
        True
        """
        if device == _dispatch.CPU:
            return self.value if self._on_device else self._host
        if not self._on_device:
            self._device = _dispatch.engine(device).to_device(self._host)
            self._on_device = True
        return self._device

    @property
    def shape(self):
        """The weight's shape (a tuple).

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> numbabn.Variable("w", np.zeros((1, 3, 1)), trainable=False).shape
        (1, 3, 1)
        """
        return self._host.shape

    @property
    def dtype(self):
        """The weight's NumPy dtype.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> numbabn.Variable("w", np.zeros(3, np.float32), trainable=False).dtype
        dtype('float32')
        """
        return self._host.dtype

    def numpy(self):
        """Return a NumPy copy of the current value.

        Returns
        -------
        numpy.ndarray
            A new array; later updates of the weight do not reach it.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> var = numbabn.Variable("w", np.zeros(2), trainable=True)
        >>> snapshot = var.numpy()
        >>> _ = var.assign([4.0, 5.0])
        >>> snapshot.tolist(), var.numpy().tolist()
        ([0.0, 0.0], [4.0, 5.0])
        """
        return self.value.copy()

    def assign(self, value):
        """Overwrite the value in place.

        Parameters
        ----------
        value : array-like or CUDA array
            The new value: the weight's shape, or any shape with as many elements; cast to the
            weight's dtype. A CUDA array is copied into the device copy.

        Returns
        -------
        Variable
            This variable.

        Raises
        ------
        ValueError
            ``value`` has a different number of elements.
        TypeError
            ``value`` is not a real numeric array.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> var = numbabn.Variable("w", np.zeros((1, 2), np.float32), trainable=True)
        >>> var.assign([3, 4]).value
        array([[3., 4.]], dtype=float32)
        """
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
        if not _validate.is_float(v.dtype) and np.dtype(v.dtype).kind not in "iu":
            raise TypeError(f"The value for {self.name} must hold real numbers. Received: a "
                            f"device array of dtype {np.dtype(v.dtype).name}")
        if v.size != self._host.size:
            raise ValueError(f"Cannot assign a value of shape {tuple(v.shape)} to {self.name} of "
                             f"shape {self.shape}")
        return v

    def _add(self, delta, sign):
        if _dispatch.device_of(delta) == _dispatch.CUDA:
            eng = _dispatch.engine(_dispatch.CUDA)
            eng.add_scaled(self.live(_dispatch.CUDA), self._device_value(eng, delta), sign)
            return self
        delta = _validate.as_real_array(delta, "delta", None)
        try:
            moved = self.value + sign * delta
        except ValueError:
            moved = None
        if moved is None or moved.shape != self.shape:
            raise ValueError(f"Cannot add a delta of shape {delta.shape} to {self.name} of shape "
                             f"{self.shape}: it must broadcast to the weight's shape")
        return self.assign(moved)

    def assign_add(self, delta):
        """Add ``delta`` to the value in place (``var += delta`` does the same).

        Parameters
        ----------
        delta : array-like or CUDA array
            Broadcasts to the weight's shape (a CUDA array: as many elements); a CUDA array
            updates the device copy.

        Returns
        -------
        Variable
            This variable.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> var = numbabn.Variable("w", np.ones(2), trainable=True)
        >>> var.assign_add([0.5, 1.5]).value.tolist()
        [1.5, 2.5]
        """
        return self._add(delta, 1.0)

    def assign_sub(self, delta):
        """Subtract ``delta`` from the value in place (``var -= delta`` does the same).

        Parameters
        ----------
        delta : array-like or CUDA array
            Broadcasts to the weight's shape (a CUDA array: as many elements); a CUDA array
            updates the device copy.

        Returns
        -------
        Variable
            This variable.

        Examples
        --------
        >>> import numpy as np
        >>> import numbabn
        >>> var = numbabn.Variable("w", np.ones(2), trainable=True)
        >>> var.assign_sub(0.25).value.tolist()
        [0.75, 0.75]
        """
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

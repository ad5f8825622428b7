"""Argument checks shared by the layer and the functional API.

Every message names the argument and shows what was received, in the form
"`name` must be ... Received: name=value".
"""
import numbers

import numpy as np

from . import _dispatch, _dtypes


def received(name, value):
    return f"Received: {name}={value!r}"


def as_input_array(x, name="inputs"):
    """Return ``(array, device)``: a NumPy array (array-likes are converted) or a CUDA array.

    Rejects complex, boolean, object, string and other non-numeric data with a ``TypeError``.
    """
    device = _dispatch.device_of(x)
    if device is None:
        if isinstance(x, (str, bytes)) or x is None:
            raise TypeError(f"`{name}` must be a numeric array. {received(name, x)}")
        try:
            x = np.asarray(x)
        except Exception as err:  # ragged lists and the like
            raise TypeError(f"`{name}` must be a numeric array. {received(name, x)}") from err
        device = _dispatch.CPU
    elif device == _dispatch.CUDA and not getattr(x, "__cuda_ndarray__", False):
        try:
            x.__cuda_array_interface__
        except Exception as err:        # e.g. a torch CUDA tensor that requires grad
            raise TypeError(
                f"`{name}` has a `__cuda_array_interface__` that cannot be read "
                f"({type(err).__name__}: {err}). {received(name, x)}") from err
    dtype = np.dtype(x.dtype)
    if dtype.kind not in "fiu" and not is_float(dtype):
        raise TypeError(
            f"`{name}` must hold real numbers (float or integer); got an array of dtype {dtype}. "
            f"Received: {name} with dtype={dtype.name}")
    return x, device


def is_float(dtype):
    """Floating point, bfloat16 (ml_dtypes' extension type, of kind 'V') included."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or _dtypes.is_bfloat16(dtype)


def resolve_axes(axis, ndim, name="axis", sort=True):
    """Normalize ``axis`` (int or list/tuple of ints, negatives allowed) to non-negative ints.

    Sorted unless ``sort`` is false (the layer reports its axes in the order they were given).
    """
    axes = check_axis_type(axis, name)
    if ndim == 0:
        raise ValueError(
            "Input has undefined rank: a scalar cannot be normalized. Received: input rank=0")
    resolved = []
    for a in axes:
        r = a + ndim if a < 0 else a
        if not 0 <= r < ndim:
            raise ValueError(
                f"Invalid value for `{name}` argument. Expected 0 <= axis < inputs.rank "
                f"(with inputs.rank={ndim}). Received: {name}={axis!r}")
        resolved.append(r)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"Duplicate axis: {tuple(resolved)}. Received: {name}={axis!r}")
    return tuple(sorted(resolved)) if sort else tuple(resolved)


def check_axis_type(axis, name="axis"):
    """``axis`` as a tuple of Python ints; ``TypeError`` unless an int or a list/tuple of ints."""
    def is_int(a):
        return isinstance(a, numbers.Integral) and not isinstance(a, (bool, np.bool_))
    if is_int(axis):
        return (int(axis),)
    if isinstance(axis, (list, tuple)) and axis and all(is_int(a) for a in axis):
        return tuple(int(a) for a in axis)
    raise TypeError(
        f"Expected an int or a non-empty list/tuple of ints for the argument '{name}', "
        f"but received: {axis!r}")


def check_float(value, name):
    """A finite-or-not real number as a Python float (bools are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number. {received(name, value)}")
    try:
        return float(value)
    except OverflowError:                # an int beyond float range, e.g. 10**400
        raise ValueError(f"`{name}` must be a number within float range. "
                         f"{received(name, value)}") from None


def check_epsilon(value, name="epsilon"):
    """``epsilon`` as a float: a finite number >= 0."""
    eps = check_float(value, name)
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"`{name}` must be a finite number >= 0. {received(name, value)}")
    return eps


def check_finite(value, name):
    """A finite real number as a Python float."""
    v = check_float(value, name)
    if not np.isfinite(v):
        raise ValueError(f"`{name}` must be finite. {received(name, value)}")
    return v


def check_momentum(value, name="momentum"):
    """A finite momentum whose float32 decay ``1 - momentum`` is finite too (Keras stores the
    decay as a float32 tensor: 1e39 would make it -inf and every moving statistic NaN)."""
    v = check_finite(value, name)
    with np.errstate(over="ignore"):
        decay = np.float32(1.0 - v)
    if not np.isfinite(decay):
        raise ValueError(f"`{name}` must be a number whose decay 1 - {name} is finite in float32. "
                         f"{received(name, value)}")
    return v


def check_not_nan(value, name):
    """A real number that is not NaN (infinities allowed), as a Python float."""
    v = check_float(value, name)
    if np.isnan(v):
        raise ValueError(f"`{name}` must not be NaN. {received(name, value)}")
    return v


def check_virtual_batch_size(value, name="virtual_batch_size"):
    """``None`` or a positive int."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int or None. {received(name, value)}")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive integer that divides the true batch size "
                         f"of the input tensor. {received(name, value)}")
    return int(value)


def check_ghost_axes(axes, shown_axis):
    """Ghost batches split axis 0, so it cannot be a feature axis (``shown_axis``: as given)."""
    if 0 in axes:
        raise ValueError(
            "When using `virtual_batch_size`, the batch dimension must be 0 and thus axis "
            f"cannot include 0. Received axis={shown_axis!r}")


def check_ghost_batch(virtual_batch_size, shape):
    """A training batch must be a multiple of ``virtual_batch_size`` (an empty one is: it has no
    ghost batch, and changes nothing)."""
    if not shape or shape[0] % virtual_batch_size:
        raise ValueError(
            "`virtual_batch_size` must divide the batch size in training. Received: "
            f"virtual_batch_size={virtual_batch_size} for inputs with shape {tuple(shape)}")


def as_real_array(value, name, dtype=np.float64):
    """``value`` as a real array of ``dtype`` (``None``: its own); ``TypeError`` naming ``name``
    for anything else."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        arr = None
    if value is None or arr is None or arr.dtype.kind not in "fiu":
        kind = "" if arr is None else f" (got dtype {arr.dtype})"
        raise TypeError(f"`{name}` must be a real numeric array{kind}. "
                        f"{received(name, value)}")
    return arr if dtype is None else arr.astype(dtype)


def as_real_dtype(dtype, name):
    """``True`` for a real (float or integer) dtype; ``TypeError`` naming ``name`` otherwise."""
    if np.dtype(dtype).kind not in "fiu":
        raise TypeError(f"`{name}` must be a real numeric array (got dtype {dtype}). "
                        f"Received: {name} with dtype={np.dtype(dtype).name}")
    return True


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a boolean. {received(name, value)}")
    return bool(value)

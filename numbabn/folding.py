"""Folding a trained layer's inference transform into the Dense or Conv layer before it.

Inference computes ``gamma * (z - mean) / sqrt(variance + epsilon) + beta`` per feature ``z``
of the previous layer: an affine map, so it folds into that layer's kernel and bias
(``BatchNormalization.fold``). The arithmetic runs in float64 and is rounded once.
"""
import numpy as np

from . import _validate

__all__ = ["fold"]


def fold(kernel, bias, *, mean, variance, gamma, beta, epsilon, axis=-1):
    """The kernel and bias of the previous layer with the inference transform folded in.

    Parameters
    ----------
    kernel : array
        The previous layer's weights; ``kernel.shape[axis]`` is its number of output features.
    bias : array or None
        The previous layer's bias, one value per feature; ``None`` for none.
    mean, variance : ndarray
        The moving statistics, one value per feature (any shape of that size).
    gamma, beta : ndarray or None
        The scale and offset, one value per feature; ``None`` where the layer has none (``1``
        and ``0``).
    epsilon : float
        Added to the variance.
    axis : int
        The kernel's output-feature axis.

    Returns
    -------
    kernel, bias : ndarray
        New arrays in the kernel's floating dtype (float32 for other dtypes).

    Raises
    ------
    TypeError
        ``kernel`` or ``bias`` is not a real numeric array.
    ValueError
        The kernel's ``axis`` or the bias does not have one entry per feature.

    Examples
    --------
    >>> import numpy as np
    >>> from numbabn.folding import fold
    >>> kernel, bias = fold(np.ones((2, 3)), None, mean=np.array([0.0, 1.0, 2.0]),
    ...                     variance=np.full(3, 4.0), gamma=None, beta=np.ones(3), epsilon=0.0)
    >>> kernel.tolist(), bias.tolist()
    ([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], [1.0, 0.5, 0.0])
    """
    channels = np.size(mean)
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

    def per_feature(w, default):
        return np.full(channels, default) if w is None else np.reshape(w, -1).astype(np.float64)
    mean, variance = per_feature(mean, 0.0), per_feature(variance, 1.0)
    scale = per_feature(gamma, 1.0) / np.sqrt(variance + epsilon)
    shape = [1] * kernel.ndim
    shape[axis] = channels
    new_kernel = (kernel.astype(np.float64) * scale.reshape(shape)).astype(dtype)
    offset = np.zeros(channels) if bias is None else bias
    new_bias = ((offset - mean) * scale + per_feature(beta, 0.0)).astype(dtype)
    return new_kernel, new_bias

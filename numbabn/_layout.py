"""Map an input of any rank and any feature axes onto the canonical views the kernels use.

An input is viewed as ``N`` samples x ``P`` rows x ``C`` features x ``I`` inner values:

    channels last  (I == 1)  x[R, C]       R = N * P
    channels first (I > 1)   x[R, C, I]

The feature axes, once sorted, must be one consecutive run of axes for this to be a free reshape
of a C-contiguous array; otherwise the reduced axes are first moved in front of the feature axes
(one transposing copy). Without ghost batching ``N == 1`` and ``G == 1``; with it, sample ``n``
belongs to ghost group ``n % G`` where ``G = batch // virtual_batch_size``.
"""
import math

import numpy as np


class Layout:
    """How arrays of one shape map to the canonical kernel view.

    Parameters
    ----------
    shape : tuple of int
        Input shape.
    axes : tuple of int
        Resolved, sorted, non-negative feature axes.
    virtual_batch_size : int or None
        Ghost batch size; the batch (axis 0) must be a multiple of it.
    """

    def __init__(self, shape, axes, virtual_batch_size=None):
        self.shape = tuple(int(s) for s in shape)
        self.axes = tuple(axes)
        self.feature_shape = tuple(self.shape[a] for a in self.axes)
        self.ghost = virtual_batch_size is not None
        ndim = len(self.shape)
        reduced = tuple(a for a in range(ndim) if a not in self.axes)
        consecutive = self.axes == tuple(range(self.axes[0], self.axes[-1] + 1))
        self.perm = None if consecutive else reduced + self.axes
        moved = self.shape if self.perm is None else tuple(self.shape[a] for a in self.perm)
        first = self.axes[0] if self.perm is None else len(reduced)
        last = first + len(self.axes)
        self.moved_shape = moved
        self.channels = math.prod(moved[first:last])
        self.inner = math.prod(moved[last:])
        outer = math.prod(moved[:first])
        if virtual_batch_size is None:
            self.samples, self.rows_per_sample, self.groups = 1, outer, 1
        else:
            self.samples = moved[0]
            self.rows_per_sample = math.prod(moved[1:first])
            self.groups = self.samples // virtual_batch_size
        self.rows = outer
        # elements averaged into each (group, feature) statistic
        self.count = (self.samples // self.groups if self.groups else 0) * (
            self.rows_per_sample * self.inner)
        self.canonical_shape = ((self.rows, self.channels) if self.inner == 1
                                else (self.rows, self.channels, self.inner))
        # a mask holds one value per position: the input's shape with 1 on the feature axes
        self.mask_shape = tuple(1 if a in self.axes else d for a, d in enumerate(self.shape))
        self.weights_shape = (self.rows,) if self.inner == 1 else (self.rows, self.inner)

    def canonical(self, x):
        """``x`` as a C-contiguous (R, C) or (R, C, I) array; a view whenever possible."""
        if self.perm is not None:
            x = np.transpose(x, self.perm)
        return np.ascontiguousarray(x).reshape(self.canonical_shape)

    def restore(self, y):
        """Inverse of :meth:`canonical`: back to the input's shape (C-contiguous)."""
        y = y.reshape(self.moved_shape)
        if self.perm is not None:
            y = np.ascontiguousarray(np.transpose(y, np.argsort(self.perm)))
        return y

    def mask_dims(self, shape, strides=None):
        """The dims (and strides) of a mask of ``shape`` seen at the input's rank.

        A mask of rank ``ndim - len(axes)`` is the input's shape without its feature axes
        (Keras' convention: ``(N, T)`` for an ``(N, T, C)`` input); any other mask broadcasts
        to the input by NumPy's rules. Either way it must hold one value per position: size 1
        on every feature axis. Returns ``(dims, strides)`` with ``strides`` 0 where a dim is
        broadcast; ``ValueError`` naming ``mask`` otherwise.
        """
        ndim = len(self.shape)
        strides = [0] * len(shape) if strides is None else list(strides)
        pairs = list(zip(shape, strides))
        if len(shape) == ndim - len(self.axes):
            it = iter(pairs)
            pairs = [(1, 0) if a in self.axes else next(it) for a in range(ndim)]
        elif len(shape) <= ndim:
            pairs = [(1, 0)] * (ndim - len(shape)) + pairs
        else:
            pairs = None
        if pairs is None or any(
                d not in (1, self.shape[a]) or (a in self.axes and d != 1)
                for a, (d, _) in enumerate(pairs)):
            raise ValueError(
                "`mask` must have the input's shape without its feature axes, or broadcast to "
                "the input with size 1 on the feature axes (one value per position). Received: "
                f"mask with shape {tuple(shape)} for inputs with shape {self.shape} and "
                f"feature axes {list(self.axes)}")
        return ([d for d, _ in pairs],
                [0 if d == 1 else st for d, st in pairs])

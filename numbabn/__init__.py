"""numbabn: batch normalization on Numba CPU kernels, with the Keras layer's exact behaviour.

Public names: :class:`BatchNormalization` (the ``tf.compat.v1.keras.layers.BatchNormalization``
layer with an explicit ``backward``), :func:`load` (a layer saved with
:meth:`BatchNormalization.save`) and :mod:`numbabn.functional` (the stateless ops).
Importing the package compiles nothing; kernels compile on first use and are cached on disk.
"""
from . import functional
from .layer import BatchNormalization, load
from .variable import Variable

__version__ = "0.1.0"
__all__ = ["BatchNormalization", "Variable", "functional", "load", "__version__"]

"""Reusable output arrays.

A fresh multi-megabyte NumPy array is mapped from the kernel page by page and zero-filled on
first touch, which costs about as much as writing it once more: for a memory-bound operation that
is a third of its time. A training loop asks for arrays of the same shapes every step, so a layer
keeps the arrays it returned and hands one out again once nothing outside refers to it any more
(every NumPy view keeps its base array alive, so a free array has no views either).
"""
import sys

import numpy as np



def _free_refcount():
    """The reference count :meth:`OutputPool.take` sees for an array nothing else holds.

    Measured with the same code shape rather than assumed: it is 3 (the list, the loop
    variable, getrefcount's argument) on CPython up to 3.13, and interpreters that borrow
    references for local variables report less.
    """
    arrays = [np.empty(1)]
    for array in arrays:
        return sys.getrefcount(array)


_FREE_REFCOUNT = _free_refcount()


class OutputPool:
    """Arrays by (shape, dtype, role), reused once the caller has dropped them.

    At most ``per_key`` arrays are kept for each key: in a loop that holds on to the previous
    step's output while asking for the next, two suffice, so the pool holds at most one array
    more than the caller does.
    """

    def __init__(self, per_key=2, max_keys=8):
        self.per_key = per_key
        self.max_keys = max_keys
        self._arrays = {}

    def take(self, shape, dtype, role):
        """An array of ``shape`` (a tuple) and ``dtype`` (a ``numpy.dtype``) for ``role``."""
        key = (shape, dtype, role)
        arrays = self._arrays.get(key)
        if arrays is None:
            if len(self._arrays) >= self.max_keys:
                self._arrays.clear()          # shapes keep changing: stop holding memory
            arrays = self._arrays[key] = []
        for array in arrays:
            if sys.getrefcount(array) == _FREE_REFCOUNT:
                return array
        array = np.empty(shape, dtype)
        if len(arrays) < self.per_key:
            arrays.append(array)
        return array

    def clear(self):
        self._arrays.clear()

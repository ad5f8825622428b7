"""Synchronized batch normalization: batch statistics over the batches of every process.

In data-parallel training each process (rank) holds part of the batch. A layer built with
``synchronized=True`` makes its training calls see the whole batch: P ranks holding B_1 ... B_P
samples compute exactly what one process computes on their concatenation (outputs, input
gradients, parameter gradients and moving statistics), to rounding.

* Forward: each rank computes its (count, mean, M2) per feature; one all-gather of those
  ``3 x C`` floats per rank; every rank merges the P rows with Chan's formula in rank order (exact
  for uneven and empty batches, never an average of averages, and the same bits on every rank).
* Backward: one all-gather of the ``2 x C`` sums ``sum(dy)`` and ``sum(dy * (x - mean))``, summed
  in rank order; ``dx`` then follows locally, and ``dgamma``/``dbeta`` are those of the whole
  batch on every rank (do not all-reduce them again).
* Ghost batches stay within a rank: each rank normalizes its own ghost groups; the moving
  statistics average the groups of every rank, and ``dgamma``/``dbeta`` are summed over ranks.
* Inference needs no communication.

The transport is the communicator the user passes: an mpi4py communicator (``COMM_WORLD`` by
default), or for CUDA arrays a ``cupy.cuda.nccl.NcclCommunicator``. With MPI, device buffers are
passed to MPI directly when the MPI library reports CUDA support, and staged through the host
otherwise.
"""
import numpy as np

from . import _dispatch

__all__ = ["Synchronizer"]


def _default_comm():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError(
            "`synchronized=True` needs mpi4py and an MPI library: "
            "pip install 'numbabn[mpi]' (mpi4py and mpich), or pass `comm`") from None
    return MPI.COMM_WORLD


def _is_nccl(comm):
    return hasattr(comm, "allGather") and hasattr(comm, "rank_id")


class Synchronizer:
    """The collectives of synchronized batch normalization over one communicator.

    A layer built with ``synchronized=True`` makes one and calls it; a training loop never
    needs to. Every method is a collective: each process of ``comm`` must call it, in the same
    order, with arrays of the same shapes.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or cupy.cuda.nccl.NcclCommunicator, optional
        The processes that share a batch; ``mpi4py.MPI.COMM_WORLD`` when ``None``. Any object
        with mpi4py's ``Get_size``, ``Get_rank`` and buffer ``Allgather`` works.

    Attributes
    ----------
    size, rank : int
        The number of processes and this process's index among them.

    Raises
    ------
    TypeError
        ``comm`` is neither kind of communicator.
    ImportError
        ``comm`` is ``None`` and mpi4py is not installed.

    Examples
    --------
    >>> import numpy as np
    >>> from numbabn import cpu
    >>> from numbabn.distributed import Synchronizer
    >>> class Alone:                      # one process; mpi4py's COMM_SELF behaves the same
    ...     def Get_size(self): return 1
    ...     def Get_rank(self): return 0
    ...     def Allgather(self, send, recv): recv[0] = send
    >>> sync = Synchronizer(Alone())
    >>> sync.size, sync.rank
    (1, 0)

    With MPI (needs mpi4py, so not run here), as the layer does for ``synchronized=True``:

    >>> from mpi4py import MPI                                   # doctest: +SKIP
    >>> sync = Synchronizer(MPI.COMM_WORLD)                      # doctest: +SKIP
    """

    def __init__(self, comm=None):
        self.comm = _default_comm() if comm is None else comm
        if _is_nccl(self.comm):
            self.size, self.rank = self.comm.size(), self.comm.rank_id()
        elif hasattr(self.comm, "Allgather") and hasattr(self.comm, "Get_size"):
            self.size, self.rank = self.comm.Get_size(), self.comm.Get_rank()
        else:
            raise TypeError("`comm` must be an mpi4py communicator or a CuPy NCCL communicator. "
                            f"Received: comm={comm!r}")

    # --------------------------------------------------------------------------------------------
    # the one collective

    def allgather(self, eng, local):
        """Gather every rank's float64 ``local`` array, stacked in rank order.

        Parameters
        ----------
        eng : module
            The engine of ``local`` (``numbabn.cpu`` for NumPy arrays, ``numbabn.cuda`` for
            device arrays).
        local : array
            This rank's float64 array, the same shape on every rank.

        Returns
        -------
        array
            ``(P,) + local.shape``, row ``p`` from rank ``p``.

        Examples
        --------
        >>> import numpy as np
        >>> from numbabn import cpu
        >>> from numbabn.distributed import Synchronizer
        >>> class Alone:                      # one process; mpi4py's COMM_SELF behaves the same
        ...     def Get_size(self): return 1
        ...     def Get_rank(self): return 0
        ...     def Allgather(self, send, recv): recv[0] = send
        >>> Synchronizer(Alone()).allgather(cpu, np.array([1.0, 2.0])).tolist()
        [[1.0, 2.0]]
        """
        if eng is _dispatch.engine(_dispatch.CPU):
            out = np.empty((self.size,) + local.shape)
            self.comm.Allgather(np.ascontiguousarray(local), out)
            return out
        return self._allgather_device(eng, local)

    def _allgather_device(self, eng, local):
        out = eng.empty((self.size,) + tuple(local.shape), np.float64, local)
        if _is_nccl(self.comm):
            from cupy.cuda import nccl
            stream = getattr(local, "stream", 0) or 0
            self.comm.allGather(local.device_ctypes_pointer.value, out.device_ctypes_pointer.value,
                                local.size, nccl.NCCL_FLOAT64, int(stream))
            return out
        if _mpi_cuda_aware():
            eng.to_host(local[:0])           # MPI knows no streams: the sums must be complete
            self.comm.Allgather(local, out)
            return out
        host = np.empty((self.size,) + tuple(local.shape))
        self.comm.Allgather(eng.to_host(local), host)
        return eng.to_device(host, local)

    # --------------------------------------------------------------------------------------------
    # what the layer asks

    def moments(self, eng, mean, var, count):
        """Merge every rank's statistics into those of the whole batch.

        Chan's formula on (count, mean, M2) rows in rank order: exact for uneven counts and for
        ranks with no values, and the same bits on every rank.

        Parameters
        ----------
        eng : module
            The engine of the arrays (``numbabn.cpu`` or ``numbabn.cuda``).
        mean, var : array
            This rank's float64 mean and biased variance, ``(1, C)`` (NaN when it has no
            values).
        count : int
            Values per feature on this rank.

        Returns
        -------
        mean, variance : array
            The whole batch's, float64 ``(1, C)``.
        count : int
            Values per feature over every rank.

        Examples
        --------
        >>> import numpy as np
        >>> from numbabn import cpu
        >>> from numbabn.distributed import Synchronizer
        >>> class Alone:                      # one process; mpi4py's COMM_SELF behaves the same
        ...     def Get_size(self): return 1
        ...     def Get_rank(self): return 0
        ...     def Allgather(self, send, recv): recv[0] = send
        >>> sync = Synchronizer(Alone())
        >>> mean, var, count = sync.moments(cpu, np.array([[2.0]]), np.array([[4.0]]), 10)
        >>> mean.tolist(), var.tolist(), int(count)
        ([[2.0]], [[4.0]], 10)
        """
        C = mean.shape[1]
        counts = eng.to_device(np.full(C, float(count)), mean)
        m2 = eng.copy(eng.astype(var, np.float64)).reshape(-1)
        eng.add_scaled(m2, m2, float(count) - 1.0)         # M2 = count * var
        return eng.combine_moments(self.allgather(eng, eng.stack([counts, mean, m2])))

    def group_average(self, eng, mean, var):
        """Average the ghost-group statistics of every rank, for the moving averages.

        Parameters
        ----------
        eng : module
            The engine of the arrays (``numbabn.cpu`` or ``numbabn.cuda``).
        mean, var : array
            This rank's float64 group statistics, ``(G, C)``.

        Returns
        -------
        mean, variance : array
            float64 ``(C,)``: the averages over all groups of all ranks (NaN when no rank has
            a group).
        groups : int
            This rank's number of groups when it has any, else the number over all ranks (zero
            exactly when no rank has a group).

        Examples
        --------
        >>> import numpy as np
        >>> from numbabn import cpu
        >>> from numbabn.distributed import Synchronizer
        >>> class Alone:                      # one process; mpi4py's COMM_SELF behaves the same
        ...     def Get_size(self): return 1
        ...     def Get_rank(self): return 0
        ...     def Allgather(self, send, recv): recv[0] = send
        >>> groups_mean, groups_var = np.array([[1.0], [3.0]]), np.array([[2.0], [4.0]])
        >>> mean, var, groups = Synchronizer(Alone()).group_average(cpu, groups_mean, groups_var)
        >>> mean.tolist(), var.tolist(), groups
        ([2.0], [3.0], 2)
        """
        G, C = mean.shape
        batch_mean, batch_var = eng.group_average(mean, var)
        weights = eng.to_device(np.full(C, float(G)), mean)
        gathered = self.allgather(eng, eng.stack([weights, batch_mean, batch_var]))
        average = eng.weighted_average(gathered)
        # only a rank with no group of its own needs the others' counts (a device read-back)
        groups = G if G or not C else int(eng.to_host(gathered)[:, 0, 0].sum())
        return average[0], average[1], groups

    def sums(self, eng, *arrays):
        """Sum each array over ranks, in rank order (the same bits on every rank).

        Parameters
        ----------
        eng : module
            The engine of the arrays (``numbabn.cpu`` or ``numbabn.cuda``).
        *arrays : array
            Arrays of one shape; one collective carries them all.

        Returns
        -------
        tuple of array
            float64 arrays of that shape, one per argument.

        Examples
        --------
        >>> import numpy as np
        >>> from numbabn import cpu
        >>> from numbabn.distributed import Synchronizer
        >>> class Alone:                      # one process; mpi4py's COMM_SELF behaves the same
        ...     def Get_size(self): return 1
        ...     def Get_rank(self): return 0
        ...     def Allgather(self, send, recv): recv[0] = send
        >>> dgamma, dbeta = Synchronizer(Alone()).sums(cpu, np.ones(2), np.arange(2.0))
        >>> dgamma.tolist(), dbeta.tolist()
        ([1.0, 1.0], [0.0, 1.0])
        """
        shape = arrays[0].shape
        total = eng.sum_over_ranks(self.allgather(eng, eng.stack(arrays)))
        return tuple(total[i].reshape(shape) for i in range(len(arrays)))


_CUDA_AWARE = None


def _mpi_cuda_aware():
    """Whether the MPI library takes device buffers (mpi4py >= 4 asks MPIX_Query_cuda_support)."""
    global _CUDA_AWARE
    if _CUDA_AWARE is None:
        try:
            from mpi4py import MPI
            _CUDA_AWARE = bool(MPI.Query_cuda_support())
        except Exception:
            _CUDA_AWARE = False
    return _CUDA_AWARE

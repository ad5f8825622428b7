"""Data-parallel training of the demo network with synchronized batch norm over MPI.

    mpiexec -n 2 python -m mpi4py examples/data_parallel.py --check

Every process loads the same data, builds the same network from the same seed and draws the same
mini-batches; each takes its own (uneven) share of every batch. The two batch-norm layers are
``synchronized=True``, so they normalize with the statistics of the whole batch; the Dense
layers' gradients are summed over the processes with one all-reduce. The loss of every step is
then the loss of the whole batch, and the run follows the same curve as one process training on
whole batches: ``--check`` trains that single process too (on rank 0) and compares the curves.
"""
import argparse
import sys

import numpy as np
from mpi4py import MPI

from numbabn import BatchNormalization
from numbabn.tools import demo


def share(batch, rank, size):
    """This rank's slice of a batch, uneven on purpose (rank r gets r + 1 parts)."""
    weights = np.arange(1, size + 1)
    cuts = np.concatenate([[0], np.cumsum(weights) * batch // weights.sum()])
    return slice(cuts[rank], cuts[rank + 1])


def train(data, steps, seed, learning_rate, comm=None):
    """Loss of every step; with ``comm``, data-parallel over its processes."""
    options = {} if comm is None else {"synchronized": True, "comm": comm}
    layers = demo.build_mlp(True, seed, data.x_train.shape[1], **options)
    order = demo.batches(len(data.y_train), demo.BATCH_SIZE, np.random.default_rng([seed, 1]))
    mine = slice(None) if comm is None else share(demo.BATCH_SIZE, comm.rank, comm.size)
    losses = []
    for _, idx in zip(range(steps), order):
        idx = idx[mine]
        logits = demo.forward(layers, data.x_train[idx], training=True)
        loss, dlogits = demo.softmax_cross_entropy(logits, data.y_train[idx])
        # the loss of the whole batch is the mean over every process's samples
        fraction = np.float32(len(idx) / demo.BATCH_SIZE)
        demo.backward(layers, dlogits * fraction)
        if comm is not None:
            loss = comm.allreduce(loss * len(idx)) / demo.BATCH_SIZE
            for layer in layers:
                if not isinstance(layer, BatchNormalization):      # BN's grads are global
                    for _, grad in demo.parameters(layer):
                        comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        demo.sgd_step(layers, learning_rate)
        losses.append(loss)
    accuracy = demo.accuracy(layers, data.x_test, data.y_test)
    return np.array(losses), accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=demo.LEARNING_RATES["high"])
    parser.add_argument("--check", action="store_true",
                        help="also train one process on whole batches and compare the losses")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    data = demo.load_data(args.seed)
    losses, accuracy = train(data, args.steps, args.seed, args.lr, comm)
    if comm.rank != 0:
        return 0
    print(f"{comm.size} processes: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {args.steps} "
          f"steps, test accuracy {accuracy:.1%}")
    if args.check:
        single, single_accuracy = train(data, args.steps, args.seed, args.lr)
        gap = float(np.max(np.abs(losses - single)))
        print(f"1 process:   loss {single[0]:.4f} -> {single[-1]:.4f}, test accuracy "
              f"{single_accuracy:.1%}; largest loss difference over the run {gap:.2e}")
        if not gap < 1e-3:
            print("the curves differ", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Batch normalization on a small MLP: what ``python -m numbabn demo`` shows.

Ioffe and Szegedy (2015) report two headline effects of batch normalization: a network reaches a
given accuracy in fewer training steps, and it tolerates learning rates at which the same
network without it diverges. This demo reproduces both, qualitatively, in a few seconds on a CPU.
As in the paper, the speed-up comes from the higher learning rate that BN makes usable: at the
"normal" learning rate, which suits the network without BN, the two networks need a similar
number of steps (which one is faster depends on the seed).

The network is ``Dense(64) -> BN -> ReLU -> Dense(64) -> BN -> ReLU -> Dense(10) -> softmax``,
trained with plain mini-batch SGD on scikit-learn's bundled 8x8 handwritten digits. The inputs
are the raw pixel values 0..16, deliberately *not* standardized, so the first layer sees badly
scaled inputs: the situation batch normalization is meant to fix.

Four runs: {without BN, with BN} x {normal learning rate, high learning rate}. "Without BN" is
the same network with the BN layers removed and biases added to the hidden Dense layers; both
start from the same weights and see the same mini-batches. Test accuracy is measured every
``EVAL_EVERY`` steps with the BN layers in inference mode (``training=False``, moving
statistics). Each run records the steps it took to reach ``TARGET_ACCURACY`` on the test set,
its final test accuracy, its peak training loss, and whether the loss became NaN or infinite
(which ends the run).

Everything except the BN layers (Dense, ReLU, softmax cross-entropy, SGD) is written out in NumPy
below, as a template for a custom training loop around :class:`numbabn.BatchNormalization`.
"""
import dataclasses
import sys
import time
from typing import Optional

import numpy as np

from ..layer import BatchNormalization
from ._cli import ProgressBar, positive_int

TARGET_ACCURACY = 0.95
HIDDEN_UNITS = 64
CLASSES = 10
BATCH_SIZE = 32
DEFAULT_STEPS = 1000
EVAL_EVERY = 10
BN_MOMENTUM = 0.9         # Keras' default 0.99 makes the moving statistics lag a short run
TEST_FRACTION = 0.25
# "normal" is about the best learning rate for the network WITHOUT BN. In a sweep from 0.003 to 1
# it reached 95% in 160-450 steps at 0.03 (seeds 0-9), failed at 0.1 on 4 of 5 seeds and at 0.3
# and 1 on all 10. "high" is 10x "normal" (the paper went up to 30x). With BN, 0.1, 0.3 and 1
# all reached 95% within 100 steps on every seed tried.
LEARNING_RATES = {"normal": 0.03, "high": 0.3}
# Step counts within this factor of each other are reported as "similar".
SIMILAR_RATIO = 1.25
INSTALL_HINT = 'pip install "numbabn[demo]"'
DESCRIPTION = """\
Train a small MLP (Dense-BN-ReLU x2, Dense, softmax) on scikit-learn's handwritten digits with
plain NumPy SGD, with and without numbabn's BatchNormalization, at a normal and at a high learning
rate. The pixels are left raw (0..16), not standardized. Prints how many steps each run needed to
reach {target:.0%} test accuracy and writes the accuracy curves as a PNG (needs matplotlib).
Needs scikit-learn: pip install "numbabn[demo]".
""".format(target=TARGET_ACCURACY)


class MissingDependency(RuntimeError):
    """An optional package the demo needs is not installed."""


# ------------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data(seed):
    """The digits data set (1797 8x8 images), split into train and test with a fixed seed.

    Pixels stay raw float32 values in 0..16: no centering, no scaling.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise MissingDependency(
            "the demo needs scikit-learn (it trains on its bundled digits data set).\n"
            f"Install it with: {INSTALL_HINT}") from err
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)
    return Data(x_train, y_train, x_test, y_test)


def batches(n, batch_size, rng):
    """Endless index batches: a fresh shuffle every epoch, the last partial batch dropped."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


# ------------------------------------------------------------------------------------------------
# the layers numbabn does not provide


class Dense:
    """``y = x @ w (+ b)`` with He-normal initial weights."""

    def __init__(self, n_in, n_out, rng, bias):
        self.w = (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        self.b = np.zeros(n_out, np.float32) if bias else None
        self.dw = self.db = None

    def __call__(self, x, training):
        self.x = x
        y = x @ self.w
        return y if self.b is None else y + self.b

    def backward(self, dy):
        self.dw = self.x.T @ dy
        if self.b is not None:
            self.db = dy.sum(axis=0)
        return dy @ self.w.T

    def parameters(self):
        """``(value, gradient)`` pairs from the last backward call."""
        pairs = [(self.w, self.dw)]
        return pairs if self.b is None else pairs + [(self.b, self.db)]


class ReLU:
    def __call__(self, x, training):
        self.positive = x > 0
        return np.where(self.positive, x, np.float32(0))

    def backward(self, dy):
        return np.where(self.positive, dy, np.float32(0))

    def parameters(self):
        return []


def parameters(layer):
    """``(value, gradient)`` pairs of any layer, numbabn's BatchNormalization included."""
    if isinstance(layer, BatchNormalization):
        return [(layer.gamma.value, layer.grads["gamma"]), (layer.beta.value, layer.grads["beta"])]
    return layer.parameters()


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``softmax(logits)`` and its gradient with respect to ``logits``."""
    n = len(labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(n), labels].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1
    return float(loss), dlogits / np.float32(n)


# ------------------------------------------------------------------------------------------------
# the network


def build_mlp(batch_norm, seed, n_in=64, **bn_options):
    """The demo MLP as a list of layers; with and without BN it starts from the same weights.

    ``bn_options`` go to every BatchNormalization layer (e.g. ``synchronized=True``).
    """
    rng = np.random.default_rng(seed)
    layers = []
    for width in (HIDDEN_UNITS, HIDDEN_UNITS):
        layers.append(Dense(n_in, width, rng, bias=not batch_norm))   # BN's beta is the bias
        if batch_norm:
            layers.append(BatchNormalization(momentum=BN_MOMENTUM, **bn_options))
        layers.append(ReLU())
        n_in = width
    layers.append(Dense(n_in, CLASSES, rng, bias=True))
    return layers


def forward(layers, x, training):
    for layer in layers:
        x = layer(x, training=training)
    return x


def backward(layers, dlogits):
    for layer in reversed(layers):
        dlogits = layer.backward(dlogits)


def sgd_step(layers, learning_rate):
    lr = np.float32(learning_rate)
    for layer in layers:
        for value, grad in parameters(layer):
            value -= lr * grad          # in place: the BN layer keeps using the same arrays


def accuracy(layers, x, y):
    """Test accuracy, with every BN layer in inference mode (moving statistics)."""
    return float(np.mean(forward(layers, x, training=False).argmax(axis=1) == y))


# ------------------------------------------------------------------------------------------------
# one training run and the four-run comparison


@dataclasses.dataclass
class RunResult:
    """What one training run did. ``steps_to_target`` and ``diverged_at`` are None if never."""
    batch_norm: bool
    lr_name: str                # "normal" or "high"
    learning_rate: float
    eval_steps: list            # steps at which test accuracy was measured, from 0
    test_accuracy: list
    losses: list                # training loss of every step
    steps_to_target: Optional[int] = None
    diverged_at: Optional[int] = None

    @property
    def label(self):
        return f"{'with' if self.batch_norm else 'without'} BN, lr={self.learning_rate:g}"

    @property
    def final_accuracy(self):
        return self.test_accuracy[-1]

    @property
    def peak_loss(self):
        return float(np.max(self.losses)) if self.losses else float("nan")

    @property
    def diverged(self):
        return self.diverged_at is not None


def train(data, batch_norm, learning_rate, steps, seed, lr_name="", on_step=None):
    """Train one network for ``steps`` SGD steps (fewer if the loss becomes NaN or infinite)."""
    layers = build_mlp(batch_norm, seed, data.x_train.shape[1])
    run = RunResult(batch_norm, lr_name, learning_rate, [0],
                    [accuracy(layers, data.x_test, data.y_test)], [])
    batch_rng = np.random.default_rng([seed, 1])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step, idx in enumerate(batches(len(data.y_train), BATCH_SIZE, batch_rng), start=1):
            logits = forward(layers, data.x_train[idx], training=True)
            loss, dlogits = softmax_cross_entropy(logits, data.y_train[idx])
            run.losses.append(loss)
            if not np.isfinite(loss):
                run.diverged_at = step
            else:
                backward(layers, dlogits)
                sgd_step(layers, learning_rate)
            if step % EVAL_EVERY == 0 or step == steps or run.diverged:
                run.eval_steps.append(step)
                run.test_accuracy.append(accuracy(layers, data.x_test, data.y_test))
                if run.steps_to_target is None and run.test_accuracy[-1] >= TARGET_ACCURACY:
                    run.steps_to_target = step
            if on_step is not None:
                on_step(step)
            if step == steps or run.diverged:
                return run


def compare(steps=DEFAULT_STEPS, seed=0, learning_rates=None, data=None, progress=None):
    """The four runs: for each learning rate (normal, high), without BN and then with BN.

    ``progress``, if given, is a :class:`ProgressBar` over ``4 * steps`` steps.
    """
    data = load_data(seed) if data is None else data
    learning_rates = LEARNING_RATES if learning_rates is None else learning_rates
    results = []
    for lr_name, lr in learning_rates.items():
        for batch_norm in (False, True):
            done = len(results) * steps
            label = f"{'with' if batch_norm else 'without'} BN, lr={lr:g}"

            def on_step(step, done=done, label=label):
                if progress is not None:
                    progress.update(done + step, label)
            results.append(train(data, batch_norm, lr, steps, seed, lr_name, on_step))
    if progress is not None:
        progress.update(len(results) * steps, "done")
    return results


# ------------------------------------------------------------------------------------------------
# reporting


def _steps_text(run):
    return "never" if run.steps_to_target is None else str(run.steps_to_target)


def format_table(results):
    """The runs as an aligned text table."""
    header = ("network", "learning rate", f"steps to {TARGET_ACCURACY:.0%}", "final test acc",
              "peak loss", "NaN/inf loss")
    rows = [(f"{'with' if r.batch_norm else 'without'} BN", f"{r.learning_rate:g} ({r.lr_name})",
             _steps_text(r), f"{r.final_accuracy:.1%}", f"{r.peak_loss:.3g}",
             f"yes, at step {r.diverged_at}" if r.diverged else "no") for r in results]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fate(run):
    """How a run that missed the target ended, in a few words."""
    if run.diverged:
        return f"diverged (NaN/inf loss at step {run.diverged_at})"
    return (f"ended at {run.final_accuracy:.1%} test accuracy after its loss peaked at "
            f"{run.peak_loss:.2g}")


def _best_clause(plain_runs, bn_runs, target):
    """Fewest steps to the target of each network, each at its best learning rate."""
    def best(runs):
        reached = [r for r in runs if r.steps_to_target is not None]
        return min(reached, key=lambda r: r.steps_to_target) if reached else None
    plain, bn = best(plain_runs), best(bn_runs)
    if plain is None and bn is None:
        return f"neither network reached {target}"
    if plain is None:
        return (f"only the network with BN reached {target} "
                f"(in {bn.steps_to_target} steps at lr={bn.learning_rate:g})")
    if bn is None:
        return (f"only the network without BN reached {target} "
                f"(in {plain.steps_to_target} steps at lr={plain.learning_rate:g})")
    pair = (f"{bn.steps_to_target} steps at lr={bn.learning_rate:g} vs "
            f"{plain.steps_to_target} at lr={plain.learning_rate:g}, best of each")
    ratio = plain.steps_to_target / bn.steps_to_target
    if ratio >= SIMILAR_RATIO:
        return f"with BN the network reached {target} {ratio:.1f}x sooner ({pair})"
    if ratio > 1 / SIMILAR_RATIO:
        return f"with and without BN the network reached {target} about as soon ({pair})"
    return f"with BN the network reached {target} {1 / ratio:.1f}x LATER ({pair})"


def _same_lr_clause(plain, bn, target):
    """The two networks at one learning rate."""
    lr = f"at lr={plain.learning_rate:g}"
    if plain.steps_to_target is None and bn.steps_to_target is None:
        return (f"{lr} neither reached {target} (without BN the network {_fate(plain)}; "
                f"with BN it {_fate(bn)})")
    if plain.steps_to_target is None:
        return f"{lr} only BN reached {target}; without it the network {_fate(plain)}"
    if bn.steps_to_target is None:
        return f"{lr} only the network without BN reached {target}; with BN it {_fate(bn)}"
    ratio = plain.steps_to_target / bn.steps_to_target
    steps = f"{bn.steps_to_target} vs {plain.steps_to_target} steps"
    if ratio >= SIMILAR_RATIO:
        return f"{lr} BN took {ratio:.1f}x fewer steps ({steps})"
    if ratio > 1 / SIMILAR_RATIO:
        return f"{lr} both took a similar number of steps (BN {steps})"
    return f"{lr} BN took {1 / ratio:.1f}x MORE steps ({steps})"


def conclusion(results):
    """One line summarizing the comparison, computed from the results."""
    target = f"{TARGET_ACCURACY:.0%}"
    plain_runs = [r for r in results if not r.batch_norm]
    bn_runs = [r for r in results if r.batch_norm]
    clauses = [_best_clause(plain_runs, bn_runs, target)]
    for plain in plain_runs:
        for bn in bn_runs:
            if bn.learning_rate == plain.learning_rate:
                clauses.append(_same_lr_clause(plain, bn, target))
    return "Conclusion: " + "; ".join(clauses) + "."


def plot(results, path):
    """Write the test-accuracy curves to ``path``; False if matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for run in results:
        color = "tab:blue" if run.batch_norm else "tab:orange"
        style = "-" if run.lr_name == "normal" else "--"
        ax.plot(run.eval_steps, run.test_accuracy, style, color=color, label=run.label)
        if run.diverged:
            ax.plot(run.eval_steps[-1], run.test_accuracy[-1], "x", color=color, markersize=9)
    ax.axhline(TARGET_ACCURACY, color="gray", linestyle=":", linewidth=1,
               label=f"target {TARGET_ACCURACY:.0%}")
    ax.set_xlabel(f"SGD step (batch {BATCH_SIZE})")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Digits MLP on raw 0..16 pixels, with and without batch normalization")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def describe_setup(data, steps, seed):
    return (f"numbabn demo: digits MLP 64-64-10, {len(data.y_train)} train / "
            f"{len(data.y_test)} test images, seed {seed}\n"
            "inputs: raw pixel values 0..16, deliberately NOT standardized\n"
            f"plain SGD, batch {BATCH_SIZE}, {steps} steps per run, test accuracy every "
            f"{EVAL_EVERY} steps with BN in inference mode (moving statistics, "
            f"momentum {BN_MOMENTUM})")


# ------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser):
    """The ``demo`` subcommand's options."""
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, metavar="N",
                        help=f"SGD steps per run (default {DEFAULT_STEPS})")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed for the train/test split, the weights and the batch order "
                             "(default 0)")
    parser.add_argument("--plot", default="numbabn-demo.png", metavar="PATH",
                        help="where to write the test-accuracy curves (default numbabn-demo.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    """Run the demo from parsed arguments; returns the exit status."""
    try:
        data = load_data(args.seed)
    except MissingDependency as err:
        print(f"numbabn demo: {err}", file=sys.stderr)
        return 1
    print(describe_setup(data, args.steps, args.seed), flush=True)
    progress = None if args.quiet else ProgressBar(4 * args.steps)
    start = time.perf_counter()
    try:
        results = compare(args.steps, args.seed, data=data, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    print(f"trained 4 runs in {time.perf_counter() - start:.1f}s\n")
    print(format_table(results))
    print()
    print(conclusion(results))
    if args.no_plot:
        return 0
    try:
        written = plot(results, args.plot)
    except OSError as err:
        print(f"numbabn demo: could not write the plot: {err}", file=sys.stderr)
        return 1
    if written:
        print(f"test-accuracy curves written to {args.plot}")
    else:
        print(f"no plot: matplotlib is not installed (to get it: {INSTALL_HINT})")
    return 0

"""Batch norm where users run it: whole training steps of NumPy networks, against PyTorch eager.

``python -m numbabn loop`` times one training step (forward, softmax cross-entropy, backward,
SGD update) of the networks in :mod:`numbabn.tools.nets`:

* ``numbabn``: the NumPy network with numbabn's layer for every batch norm;
* ``numpy``: the same network with a plain NumPy batch norm (what a NumPy user has otherwise);
* ``torch``: the same network in PyTorch eager (``nn.Conv2d`` / ``nn.BatchNorm*`` /
  ``nn.Linear``, channels-last memory format for NHWC, ``torch.optim.SGD``), when installed;
* ``tf``: the same network in tf.keras with the V1 ``BatchNormalization`` (``tf_keras``), one
  ``tf.function`` step with ``GradientTape`` and SGD, when TensorFlow is installed (NHWC and
  the MLP: TensorFlow's CPU convolutions take NHWC only).

All run on the same number of threads, in one process, round-robin: a sample is ``BLOCK``
consecutive steps of one implementation (a loop, so every library's worker threads are in the
state a training loop leaves them in), after an idle gap and one untimed step, then the next
implementation's block. Each cell is the median over samples of the time per step; for the NumPy
networks also the time spent inside batch normalization. Before timing, every implementation
takes its first steps from the same weights and data, and their losses must agree.

Two more sections:

* ``pairs``: a training step of the layer (forward + backward) alternating with one NumPy matrix
  product, against the two timed apart, on two medium shapes: the cost of two thread pools
  meeting (1.0 = no interference).
* ``--variations``: the numbabn networks again in fresh processes under each threading set-up a
  user could otherwise tune (passive OpenMP waiting, the workqueue and tbb layers, one Numba
  thread) next to the default, so ``default / best`` says what is left to tune.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from . import nets, timing
from ._cli import ProgressBar, positive_int
from .bench import _name_list, _threading_layer, default_threads, format_table, numba_threads
from .shapes import PAIR_MATMUL, PAIR_SHAPES

BLOCK = 5
ROUNDS = 8
QUICK_ROUNDS = 3
# Steps before timing: compilation, then the serial/parallel choice of every kernel site settles
# (its probes come at 32 and 128 calls, then rarely); a long training run lives in that state.
WARMUP = 150
QUICK_WARMUP = 60
# Idle seconds before each block: every library's worker threads (OpenBLAS's, OpenMP's) spin for a
# while after their last parallel region; without the pause they slow the next library's block.
GAP = 0.3
PAIR_CALLS = 300
PAIR_ROUNDS = 5
PAIR_PAUSE = 0.3
VARIATION_PASSES = 3
# Losses of the first steps from the same weights agree to float32 rounding of a few thousand ops.
AGREE_STEPS = 3
LOSS_RTOL = 1e-4

VARIATIONS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"},
    "tbb": {"NUMBA_THREADING_LAYER": "tbb"},
    "1 thread": {"NUMBA_NUM_THREADS": "1"},
}

DESCRIPTION = """\
Time whole training steps of small NumPy networks (an MLP and a residual CNN in NHWC and NCHW)
with numbabn's batch norm, with a plain NumPy batch norm, and in PyTorch eager when installed,
interleaved in one process on the same threads; then a layer step alternating with a NumPy
matmul. --variations repeats the numbabn networks under other threading set-ups.
PyTorch and matplotlib: pip install "numbabn[bench]".
"""


# ------------------------------------------------------------------------------------------------
# implementations: each gives a step() -> loss for a network

def numpy_step(name, norm):
    net = nets.NETWORKS[name]["make"](norm)
    x, labels = nets.make_batch(name)
    return net, (lambda: net.step(x, labels))


def torch_model(torch, net):
    """The PyTorch twin of the NumPy network ``net``, with ``net``'s weights."""
    nn = torch.nn

    def linear(dense):
        lin = nn.Linear(*dense.w.shape, bias=dense.b is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(dense.w.T.copy()))
            if dense.b is not None:
                lin.bias.copy_(torch.from_numpy(dense.b))
        return lin

    def conv(c):
        layer = nn.Conv2d(c.c_in, c.c_out, 3, stride=c.stride, padding=1, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(c.kernel.transpose(3, 2, 0, 1).copy()))
        return layer

    def norm(kind, channels):
        return kind(channels, eps=nets.EPSILON, momentum=1 - nets.MOMENTUM)

    if isinstance(net, nets.MLP):
        class MLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.d1, self.bn1 = linear(net.d1), norm(nn.BatchNorm1d, net.d1.w.shape[1])
                self.d2, self.bn2 = linear(net.d2), norm(nn.BatchNorm1d, net.d2.w.shape[1])
                self.d3 = linear(net.d3)

            def forward(self, x):
                relu = torch.relu
                return self.d3(relu(self.bn2(self.d2(relu(self.bn1(self.d1(x)))))))
        return MLP()

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = conv(net.conv1), norm(nn.BatchNorm2d, net.conv1.c_out)
            self.conv2, self.bn2 = conv(net.conv2), norm(nn.BatchNorm2d, net.conv2.c_out)
            self.conv3, self.bn3 = conv(net.conv3), norm(nn.BatchNorm2d, net.conv3.c_out)
            self.fc = linear(net.dense)

        def forward(self, x):
            h1 = torch.relu(self.bn1(self.conv1(x)))
            h2 = torch.relu(self.bn2(self.conv2(h1)))
            h3 = torch.relu(self.bn3(self.conv3(h2) + h2))
            return self.fc(h3.mean(dim=(2, 3)))
    return CNN()


def torch_step(torch, name):
    net, _ = numpy_step(name, "numpy")          # the weights every implementation starts from
    model = torch_model(torch, net)
    x, labels = nets.make_batch(name)
    x = torch.from_numpy(x)
    if name.endswith("nhwc"):                   # the same memory as logical NCHW, channels last
        x = x.permute(0, 3, 1, 2)
        model = model.to(memory_format=torch.channels_last)
    labels = torch.from_numpy(labels)
    opt = torch.optim.SGD(model.parameters(), lr=nets.LEARNING_RATE)
    loss_fn = torch.nn.functional.cross_entropy

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def tf_step(tf, name):
    """The network in tf.keras (the V1 ``BatchNormalization``), one ``tf.function`` SGD step."""
    net, _ = numpy_step(name, "numpy")
    keras = tf.keras
    layers = keras.layers
    x, labels = nets.make_batch(name)

    def norm():
        return tf.compat.v1.keras.layers.BatchNormalization(momentum=nets.MOMENTUM,
                                                            epsilon=nets.EPSILON)
    inputs = keras.Input(shape=x.shape[1:])
    if isinstance(net, nets.MLP):
        dense = [layers.Dense(d.w.shape[1], use_bias=d.b is not None)
                 for d in (net.d1, net.d2, net.d3)]
        h = layers.ReLU()(norm()(dense[0](inputs)))
        h = layers.ReLU()(norm()(dense[1](h)))
        outputs = dense[2](h)
        model = keras.Model(inputs, outputs)
        for layer, d in zip(dense, (net.d1, net.d2, net.d3)):
            layer.set_weights([d.w] + ([d.b] if d.b is not None else []))
    else:
        # explicit padding: Keras' "same" pads a stride-2 convolution on one side only
        def conv(c):
            return layers.Conv2D(c.c_out, 3, strides=c.stride, padding="valid", use_bias=False)
        convs = [conv(c) for c in (net.conv1, net.conv2, net.conv3)]
        pad = layers.ZeroPadding2D(1)
        h1 = layers.ReLU()(norm()(convs[0](pad(inputs))))
        h2 = layers.ReLU()(norm()(convs[1](layers.ZeroPadding2D(1)(h1))))
        s3 = layers.Add()([convs[2](layers.ZeroPadding2D(1)(h2)), h2])
        h3 = layers.ReLU()(norm()(s3))
        fc = layers.Dense(net.dense.w.shape[1])
        outputs = fc(layers.GlobalAveragePooling2D()(h3))
        model = keras.Model(inputs, outputs)
        for layer, c in zip(convs, (net.conv1, net.conv2, net.conv3)):
            layer.set_weights([c.kernel])
        fc.set_weights([net.dense.w, net.dense.b])
    opt = keras.optimizers.SGD(learning_rate=nets.LEARNING_RATE)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, labels = tf.constant(x), tf.constant(labels)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return lambda: float(train_step())


def import_tf(threads):
    """TensorFlow with the tf_keras V1 layer (``TF_USE_LEGACY_KERAS``), on ``threads`` threads."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except Exception as err:                    # ImportError, or a broken installation
        return None, f"TensorFlow not importable ({type(err).__name__}: {err})"
    return tf, None


def import_torch():
    try:
        import torch
    except Exception as err:                    # ImportError, or a broken installation
        return None, f"PyTorch not importable ({type(err).__name__}: {err})"
    return torch, None


# ------------------------------------------------------------------------------------------------
# timing

def time_networks(names, impls, rounds, threads, progress=None, warmup=WARMUP):
    """Per network and implementation: medians of ms per step and of ms inside batch norm."""
    torch = None
    notes = []
    if "torch" in impls:
        torch, why = import_torch()
        if torch is None:
            notes.append(why)
            impls = [i for i in impls if i != "torch"]
        else:
            torch.set_num_threads(threads)
    tf = None
    if "tf" in impls:
        tf, why = import_tf(threads)
        if tf is None:
            notes.append(why)
            impls = [i for i in impls if i != "tf"]
    results = {}
    done = 0
    for name in names:
        steps, bns = {}, {}
        here = [i for i in impls if not (i == "tf" and name.endswith("nchw"))]
        if len(here) < len(impls):
            notes.append(f"{name}: TensorFlow's CPU convolutions take NHWC only")
        for impl in here:
            if impl == "torch":
                steps[impl] = torch_step(torch, name)
            elif impl == "tf":
                steps[impl] = tf_step(tf, name)
            else:
                bns[impl], steps[impl] = numpy_step(name, impl)
        # the first steps from the same weights, which also compile: the losses after an update
        # check every backward pass and update, not only the forward
        losses = {impl: [steps[impl]() for _ in range(AGREE_STEPS)] for impl in here}
        ref = losses[here[0]]
        agree = {impl: all(abs(a - b) <= LOSS_RTOL * abs(b) for a, b in zip(got, ref))
                 for impl, got in losses.items()}
        for impl in here:
            for _ in range(warmup):
                steps[impl]()
        per_step = {impl: [] for impl in here}
        in_bn = {impl: [] for impl in bns}
        for _ in range(rounds):
            for impl in here:
                time.sleep(GAP)
                steps[impl]()                   # back in this library's steady state
                net = bns.get(impl)
                if net is not None:
                    net.timer.reset()
                per_step[impl].append(timing.sample(steps[impl], BLOCK))
                if net is not None:
                    in_bn[impl].append(net.timer.seconds / BLOCK)
                done += 1
                if progress:
                    progress.update(done, f"{name} {impl}")
        results[name] = {
            impl: {"ms": 1e3 * statistics.median(per_step[impl]),
                   "bn_ms": 1e3 * statistics.median(in_bn[impl]) if impl in in_bn else None,
                   "losses": losses[impl], "agrees": agree[impl]}
            for impl in here}
    return results, notes


def time_pairs(shapes=PAIR_SHAPES, calls=PAIR_CALLS, matmul=PAIR_MATMUL, rounds=PAIR_ROUNDS):
    """A layer training step alternating with an (n, n) @ (n, n) float32 product, against the two
    timed apart: medians over ``rounds`` rounds of the three parts, ``calls`` calls each split
    evenly, with a pause before each part so that the other pool goes idle (the rounds alternate
    the parts, so a slow phase of the machine touches all three alike)."""
    from ..layer import BatchNormalization
    rng = np.random.default_rng(0)
    a = rng.standard_normal((matmul, matmul)).astype(np.float32)
    b = rng.standard_normal((matmul, matmul)).astype(np.float32)
    rows = []
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        layer = BatchNormalization()

        def step():
            layer(x, training=True)
            layer.backward(dy)

        def product():
            a @ b

        def pair():
            step()
            product()

        for _ in range(30):
            pair()
        parts = {"step": step, "matmul": product, "pair": pair}
        samples = {label: [] for label in parts}
        for _ in range(rounds):
            for label, fn in parts.items():
                time.sleep(PAIR_PAUSE)
                for _ in range(max(1, calls // rounds)):
                    samples[label].append(timing.sample(fn))
        timed = {label: statistics.median(v) for label, v in samples.items()}
        rows.append({"shape": list(shape), "step_us": 1e6 * timed["step"],
                     "matmul_us": 1e6 * timed["matmul"], "pair_us": 1e6 * timed["pair"],
                     "ratio": timed["pair"] / (timed["step"] + timed["matmul"])})
    return rows


def tbb_environment():
    """Environment additions that let Numba load tbb from this Python's prefix, or None."""
    from ..cpu.threads import tbb_library_dir
    lib = tbb_library_dir()
    if lib is None:
        return None
    ld = os.environ.get("LD_LIBRARY_PATH", "")
    return {"LD_LIBRARY_PATH": lib + (os.pathsep + ld if ld else "")}


def run_variations(names, rounds, threads, progress=None, quick=False):
    """ms per step of the numbabn networks in a fresh process per threading variation.

    Processes differ by ±10-20% on a small VM, so the variations run in ``VARIATION_PASSES``
    passes, one process each per pass, and each cell is the median over passes.
    """
    passes = 1 if quick else VARIATION_PASSES
    runs, notes = {}, []
    done = 0
    for _ in range(passes):
        for label, env_add in VARIATIONS.items():
            env = {k: v for k, v in os.environ.items()
                   if k not in ("OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS")}
            env.update(env_add)
            if label == "tbb":
                extra = tbb_environment()
                if extra is None:
                    if "tbb" not in runs:
                        notes.append("tbb: not installed in this Python (pip install tbb)")
                        runs["tbb"] = None
                    continue
                env.update(extra)
            numba_threads = env_add.get("NUMBA_NUM_THREADS", str(threads))
            env["NUMBA_NUM_THREADS"] = numba_threads
            # NumPy's BLAS keeps every core in each variation; only Numba's side changes
            cmd = [sys.executable, "-m", "numbabn", "loop", "--nets", ",".join(names),
                   "--impls", "numbabn", "--rounds", str(rounds), "--no-pairs", "--quiet",
                   "--json", "-", "--threads", numba_threads] + (["--quick"] if quick else [])
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            done += 1
            if progress:
                progress.update(done, label)
            if proc.returncode != 0:
                notes.append(f"{label}: failed ({proc.stderr.strip().splitlines()[-1:]})")
                continue
            data = json.loads(proc.stdout)
            run = runs.setdefault(label, {"layer": data["threading_layer"]})
            for name in names:
                run.setdefault(name, []).append(data["networks"][name]["numbabn"]["ms"])
    results = {}
    for label, run in runs.items():
        if run:
            results[label] = {name: statistics.median(run[name]) for name in names}
            results[label]["layer"] = run["layer"]
            results[label]["passes"] = {name: run[name] for name in names}
    return results, notes


# ------------------------------------------------------------------------------------------------
# report

LABELS = {"numbabn": "NumPy + numbabn", "numpy": "NumPy + NumPy BN", "torch": "PyTorch eager",
          "tf": "tf.keras"}


def network_rows(results):
    rows = []
    for name, by_impl in results.items():
        torch_ms = by_impl.get("torch", {}).get("ms")
        for impl, r in by_impl.items():
            bn = r["bn_ms"]
            rows.append([name, LABELS[impl], f"{r['ms']:.2f}",
                         "—" if bn is None else f"{bn:.2f}",
                         "—" if bn is None else f"{100 * bn / r['ms']:.0f}%",
                         "—" if torch_ms is None else f"{r['ms'] / torch_ms:.2f}",
                         f"{r['losses'][-1]:.6f}" + ("" if r["agrees"] else " (DIFFERS)")])
    return rows


NETWORK_HEADERS = ["network", "implementation", "ms / step", "ms in BN", "BN share",
                   "÷ PyTorch", f"loss at step {AGREE_STEPS}"]


def pair_rows(pairs):
    return [["×".join(map(str, p["shape"])), f"{p['step_us']:.0f}", f"{p['matmul_us']:.0f}",
             f"{p['pair_us']:.0f}", f"{p['ratio']:.2f}"] for p in pairs]


PAIR_HEADERS = ["layer step shape", "step µs", "matmul µs", "step + matmul µs", "÷ apart"]


def variation_rows(variations, names):
    rows = []
    labels = list(variations)
    for name in names:
        times = {label: variations[label][name] for label in labels}
        best = min(times.values())
        default = times.get("default")
        rows.append([name] + [f"{times[label]:.2f}" for label in labels]
                    + ["—" if default is None else f"{default / best:.2f}"])
    return rows, ["network"] + [f"{label} ms" for label in labels] + ["default ÷ best"]


def table(rows, headers, markdown):
    return format_table([dict(zip(headers, r)) for r in rows], headers, headers, markdown)


def report(info, results, pairs, variations, notes, markdown=False):
    out = []
    head = (f"numbabn {info['numbabn']}, NumPy {info['numpy']}, threads {info['threads']}, "
            f"Numba threading layer {info['threading_layer']}"
            + (f", PyTorch {info['torch']}" if info.get("torch") else "")
            + (f", TensorFlow {info['tensorflow']}" if info.get("tensorflow") else ""))
    out.append(head)
    out.append(f"\nTraining step of NumPy networks ({nets.__name__}), median ms per step of "
               f"{BLOCK}-step blocks, round-robin:")
    out.append(table(network_rows(results), NETWORK_HEADERS, markdown))
    if pairs:
        out.append(f"\nLayer training step alternating with a {PAIR_MATMUL}×{PAIR_MATMUL} "
                   "float32 matmul, against the two timed apart (medians):")
        out.append(table(pair_rows(pairs), PAIR_HEADERS, markdown))
    if variations:
        rows, headers = variation_rows(variations, list(results))
        out.append("\nThe numbabn networks under other threading set-ups (fresh process each):")
        out.append(table(rows, headers, markdown))
    for note in notes:
        out.append(f"note: {note}")
    return "\n".join(out)


def plot(path, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    impls = [i for i in LABELS if any(i in results[n] for n in names)]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        vals = [results[name].get(i, {}).get("ms", np.nan) for i in impls]
        colors = {"numbabn": "#1f77b4", "numpy": "#aaaaaa", "torch": "#d62728", "tf": "#9467bd"}
        bars = ax.bar(range(len(impls)), vals, color=[colors[i] for i in impls])
        bn = [results[name].get(i, {}).get("bn_ms") for i in impls]
        for k, b in enumerate(bn):
            if b is not None:
                ax.bar(k, b, color="#ff7f0e", width=0.8)
        ax.set_xticks(range(len(impls)), [LABELS[i].replace(" + ", "\n+ ") for i in impls],
                      fontsize=8)
        ax.set_title(name)
        ax.set_ylabel("ms per training step")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    fig.suptitle("Training step (orange: time inside batch norm)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------------
# command line

def add_arguments(parser):
    parser.add_argument("--nets", type=_name_list(tuple(nets.NETWORKS)), default=None,
                        metavar="LIST", help=f"networks (default all: {','.join(nets.NETWORKS)})")
    parser.add_argument("--impls", type=_name_list(tuple(LABELS)), default=None, metavar="LIST",
                        help=f"implementations (default all: {','.join(LABELS)})")
    parser.add_argument("--rounds", type=positive_int, default=None, metavar="N",
                        help=f"samples per cell, {BLOCK} steps each (default {ROUNDS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="threads for every implementation (default: the cores available)")
    parser.add_argument("--no-pairs", action="store_true",
                        help="skip the layer-step / matmul alternation")
    parser.add_argument("--variations", action="store_true",
                        help="also time the numbabn networks under other threading set-ups")
    parser.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (matplotlib)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': stdout)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    threads = args.threads or default_threads()
    names = args.nets or list(nets.NETWORKS)
    impls = args.impls or list(LABELS)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    to_stdout = args.json == "-"
    progress = None if args.quiet else ProgressBar(len(names) * rounds * len(impls))
    with numba_threads(threads):
        results, notes = time_networks(names, impls, rounds, threads, progress,
                                       QUICK_WARMUP if args.quick else WARMUP)
        pairs = [] if args.no_pairs else time_pairs()
    if progress:
        progress.close()
    variations = None
    if args.variations:
        bar = None if args.quiet else ProgressBar(
            len(VARIATIONS) * (1 if args.quick else VARIATION_PASSES))
        variations, more = run_variations(names, rounds, threads, bar, args.quick)
        notes += more
        if bar:
            bar.close()
    import numba
    from .. import __version__
    info = {"numbabn": __version__, "numpy": np.__version__, "threads": threads,
            "numba": numba.__version__, "threading_layer": _threading_layer()}
    for module in ("torch", "tensorflow"):
        if module in sys.modules:
            info[module] = sys.modules[module].__version__
    if args.json:
        payload = json.dumps({"info": info, "networks": results, "pairs": pairs,
                              "variations": variations, "notes": notes,
                              "threading_layer": info["threading_layer"]}, indent=1)
        if to_stdout:
            print(payload)
        else:
            with open(args.json, "w") as f:
                f.write(payload)
    if not to_stdout:
        print(report(info, results, pairs, variations, notes))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report(info, results, pairs, variations, notes, markdown=True) + "\n")
    if args.plot:
        plot(args.plot, results)
    disagree = [(n, i) for n, r in results.items() for i, v in r.items() if not v["agrees"]]
    if disagree:
        print(f"the losses of the first {AGREE_STEPS} steps differ: {disagree}", file=sys.stderr)
        return 1
    return 0

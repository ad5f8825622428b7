"""Golden SGD trajectories with regularizers, from TensorFlow (tf_keras V1 BatchNormalization).

Each case trains one layer for ``STEPS`` steps with plain SGD on
``loss = sum(y * u) + sum(layer.losses)``, differentiated by ``tf.GradientTape``, and records the
inputs, the upstream gradients ``u``, the regularization losses before each update and every
weight after each update into ``tests/golden/sgd/<case>.npz``. ``tests/test_loss_grads.py``
replays them with numbabn's ``grads`` + ``loss_grads`` in a NumPy loop.

Run in an environment with TensorFlow (not a numbabn dependency)::

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0
    /tmp/tfenv/bin/python tests/golden/generate_sgd.py

The committed files were made with TensorFlow 2.21.0, tf_keras 2.21.0, NumPy 2.4, Python 3.11.
"""
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "sgd")
STEPS = 5
LEARNING_RATE = 0.1

CASES = {
    # name: (layer kwargs, input shape); regularizer factors large enough to matter in 5 steps
    "l1": (dict(gamma_regularizer={"class_name": "L1", "config": {"l1": 0.5}},
                beta_regularizer={"class_name": "L1", "config": {"l1": 0.5}}), (16, 4)),
    "l2": (dict(gamma_regularizer={"class_name": "L2", "config": {"l2": 0.5}},
                beta_regularizer={"class_name": "L2", "config": {"l2": 0.5}}), (16, 4)),
    "l1_l2": (dict(gamma_regularizer={"class_name": "L1L2", "config": {"l1": 0.3, "l2": 0.2}},
                   beta_regularizer="l1_l2"), (16, 4)),
    "gamma_only_l2_nchw": (dict(axis=1, gamma_regularizer={"class_name": "L2",
                                                          "config": {"l2": 0.4}}), (6, 3, 2, 2)),
    "beta_only_l1_nhwc": (dict(beta_regularizer={"class_name": "L1", "config": {"l1": 0.3}}),
                          (6, 2, 2, 3)),
}


def run(name, kwargs, shape):
    rng = np.random.default_rng(sum(map(ord, name)))
    layer = tf.compat.v1.keras.layers.BatchNormalization(momentum=0.8, **kwargs)
    layer.build(shape)
    # gamma and beta start away from 0 and 1 with mixed signs, so l1's sign flips are exercised
    values = layer.get_weights()
    names = [w.name.split("/")[-1].split(":")[0] for w in layer.weights]
    start = {}
    for i, n in enumerate(names):
        if n in ("gamma", "beta"):
            values[i] = rng.normal(0.0, 0.3, size=values[i].shape).astype(np.float32)
            start[n] = values[i]
    layer.set_weights(values)
    record = {"init_" + k: v for k, v in start.items()}
    for step in range(STEPS):
        x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
        u = rng.normal(size=shape).astype(np.float32)
        with tf.GradientTape() as tape:
            y = layer(tf.constant(x), training=True)
            losses = layer.losses
            loss = tf.reduce_sum(y * u) + tf.add_n(losses)
        grads = tape.gradient(loss, layer.trainable_weights)
        for var, g in zip(layer.trainable_weights, grads):     # plain SGD, as a NumPy loop does
            var.assign_sub(LEARNING_RATE * g)
        record[f"x{step}"], record[f"u{step}"] = x, u
        record[f"losses{step}"] = np.array([float(v) for v in losses])
        for w in layer.weights:
            record[f"{w.name.split('/')[-1].split(':')[0]}{step}"] = w.numpy()
    config = {"kwargs": kwargs, "momentum": 0.8, "steps": STEPS, "learning_rate": LEARNING_RATE,
              "weights": names, "tensorflow": tf.__version__}
    record["config_json"] = np.array(json.dumps(config))
    np.savez(os.path.join(OUT, f"{name}.npz"), **record)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (kwargs, shape) in CASES.items():
        run(name, kwargs, shape)
        print("wrote", name, file=sys.stderr)


if __name__ == "__main__":
    main()

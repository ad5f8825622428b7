"""Generate the TensorFlow golden fixtures used by the numbabn test suite.

Every case builds a ``tf.compat.v1.keras.layers.BatchNormalization`` layer
(the tf_keras V1 class, ``_USE_V2_BEHAVIOR = False``), optionally seeds its
weights, calls it for a few steps and records inputs, outputs, gradients and
every weight after each step into ``tests/golden/data/<case>.npz``.  The file
format is described in ``tests/golden/README.md``.

TensorFlow is *not* a dependency of numbabn.  Use a separate environment::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0
    TF_USE_LEGACY_KERAS=1 TF_ENABLE_ONEDNN_OPTS=0 CUDA_VISIBLE_DEVICES="" \\
        /tmp/tfenv/bin/python tests/golden/generate.py

Options: ``--only NAME [NAME ...]`` regenerates selected cases, ``--out DIR``
writes somewhere else, ``--list`` prints the case names.

The committed fixtures were produced with Python 3.11, TensorFlow 2.21.0
(tensorflow-cpu), tf_keras 2.21.0 and NumPy 2.4 on x86-64 Linux.

All inputs, upstream gradients and seeded weights come from
``numpy.random.default_rng`` with a per-case seed derived from the case name,
and the ``.npz`` files are written with fixed zip timestamps, so re-running
the script reproduces the committed files byte for byte (given the same
TensorFlow build).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

# These must be set before TensorFlow is imported: the legacy Keras switch
# makes tf.compat.v1.keras resolve to tf_keras (not Keras 3), and oneDNN is
# disabled so CPU results do not depend on the host's instruction set.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "data")

BatchNormalization = tf.compat.v1.keras.layers.BatchNormalization

# Default step schedule: two training steps, then one inference step.
# Each step is (training, trainable); training is passed to the call exactly
# as given (True/False/None/1/0), trainable is assigned to layer.trainable
# before the call.
TTF = ((True, True), (True, True), (False, True))
TTTF = ((True, True), (True, True), (True, True), (False, True))


# --------------------------------------------------------------------------
# Case table
# --------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    description: str
    shape: Any  # one shape for every step, or a list with one shape per step
    kwargs: dict = field(default_factory=dict)
    steps: Sequence = TTF
    input_dtype: str = "float32"
    set_initial_weights: bool = True
    x_loc: float = 0.3
    x_scale: float = 1.5
    # Weight values to force after the random seeding, by weight name.
    weight_overrides: dict = field(default_factory=dict)
    # Shape of the constant (adj_scale, adj_bias) pair returned by the
    # adjustment callable, or None for no adjustment.
    adjustment_shape: Optional[tuple] = None
    constraint_check: bool = False

    def step_shapes(self):
        if isinstance(self.shape, list):
            assert len(self.shape) == len(self.steps), self.name
            return [tuple(s) for s in self.shape]
        return [tuple(self.shape)] * len(self.steps)


def _cases() -> list[Case]:
    c: list[Case] = []
    add = c.append

    # ---- defaults and dtypes --------------------------------------------
    add(Case("defaults_f32", "Default arguments on a (8, 3) float32 input.", (8, 3)))
    add(Case("defaults_f32_initializer_weights",
             "Default arguments with the default initializers left in place "
             "(gamma=1, beta=0, moving_mean=0, moving_variance=1).",
             (8, 3), set_initial_weights=False))
    add(Case("defaults_f64", "Float64 layer (dtype='float64') on a float64 (8, 3) input.",
             (8, 3), {"dtype": "float64"}, input_dtype="float64"))
    add(Case("dtype_mixed_float16",
             "dtype='mixed_float16' policy: float16 compute and output, float32 variables.",
             (8, 3), {"dtype": "mixed_float16"}, input_dtype="float16"))
    add(Case("input_int32", "int32 input to a float32 layer (input cast to float32).",
             (8, 3), input_dtype="int32"))
    add(Case("input_float16", "float16 input to a float32 layer (float32 output).",
             (8, 3), input_dtype="float16"))

    # ---- axis -----------------------------------------------------------
    add(Case("axis_last_rank3", "axis=-1 on a rank-3 (6, 4, 5) input.",
             (6, 4, 5), {"axis": -1}))
    add(Case("axis_1_rank3", "axis=1 on a rank-3 (6, 4, 5) input (features in the middle).",
             (6, 4, 5), {"axis": 1}))
    add(Case("axis_1_3_rank4", "Multi-axis, non-adjacent axis=[1, 3] on (4, 3, 5, 2); "
             "params of shape (1, 3, 1, 2).",
             (4, 3, 5, 2), {"axis": [1, 3]}))
    add(Case("axis_neg1_neg2_rank3", "Multi-axis axis=[-1, -2] on (6, 4, 5); params (1, 4, 5).",
             (6, 4, 5), {"axis": [-1, -2]}))
    add(Case("axis_0_rank2", "axis=0 on (4, 3): features along the batch axis.",
             (4, 3), {"axis": 0}))
    add(Case("axis_last_rank1", "axis=-1 on a rank-1 (5,) input: nothing is reduced "
             "(mean=x, var=0 in training).",
             (5,), {"axis": -1}))
    add(Case("axis_2_rank4", "axis=2 on rank-4 (4, 3, 5, 2): not a channel axis, non-fused.",
             (4, 3, 5, 2), {"axis": 2}))
    add(Case("axis_neg4_rank4", "axis=-4 on rank-4 (4, 3, 5, 2): V1 silently uses the "
             "non-fused path.",
             (4, 3, 5, 2), {"axis": -4}))
    add(Case("rank5_axis_last", "Rank-5 (2, 3, 4, 5, 2) with axis=-1 (fused NDHWC path).",
             (2, 3, 4, 5, 2), {"axis": -1}))
    add(Case("rank5_axis_1", "Rank-5 (2, 3, 4, 5, 2) with axis=1 (fused NCDHW path).",
             (2, 3, 4, 5, 2), {"axis": 1}))
    add(Case("rank5_axis_3", "Rank-5 (2, 3, 4, 5, 2) with axis=3: silently non-fused.",
             (2, 3, 4, 5, 2), {"axis": 3}))

    # ---- fused ----------------------------------------------------------
    add(Case("fused_none_nhwc", "NHWC (4, 3, 5, 2) axis=-1 with fused=None (fused path: "
             "moving variance tracks the unbiased variance).",
             (4, 3, 5, 2), {"axis": -1, "fused": None}))
    add(Case("fused_false_nhwc", "NHWC (4, 3, 5, 2) axis=-1 with fused=False (moving "
             "variance tracks the biased variance).",
             (4, 3, 5, 2), {"axis": -1, "fused": False}))
    add(Case("fused_true_nchw", "NCHW (4, 3, 5, 2) axis=1 with fused=True.",
             (4, 3, 5, 2), {"axis": 1, "fused": True}))
    add(Case("fused_true_ndhwc", "NDHWC (2, 3, 4, 5, 2) axis=-1 with fused=True.",
             (2, 3, 4, 5, 2), {"axis": -1, "fused": True}))
    add(Case("fused_true_rank3", "fused=True on a rank-3 (6, 4, 5) input: silently non-fused.",
             (6, 4, 5), {"fused": True}))
    add(Case("fused_true_f64_nhwc", "fused=True with a float64 layer on NHWC: silently "
             "non-fused (biased moving variance).",
             (4, 3, 5, 2), {"fused": True, "dtype": "float64"}, input_dtype="float64"))
    add(Case("fused_nhwc_n1", "Fused NHWC with a (1, 1, 1, 3) input: n=1 per channel "
             "(Bessel factor guarded to 1).",
             (1, 1, 1, 3), {"fused": True}))
    add(Case("fused_nhwc_n2", "Fused NHWC with a (2, 1, 1, 3) input: n=2 per channel "
             "(Bessel factor 2).",
             (2, 1, 1, 3), {"fused": True}))
    add(Case("fused_nhwc_center_scale_false", "Fused NHWC with center=False and scale=False.",
             (4, 3, 5, 2), {"center": False, "scale": False}))
    add(Case("fused_nhwc_epsilon_1e-7", "Fused NHWC with epsilon=1e-7 (no epsilon clamp).",
             (4, 3, 5, 2), {"epsilon": 1e-7}))
    add(Case("fused_nhwc_trainable_false", "Fused NHWC built with trainable=False and "
             "called with training=True (V1: batch stats, frozen moving stats).",
             (4, 3, 5, 2), {"trainable": False},
             steps=((True, False), (True, False), (False, False))))

    # ---- momentum / epsilon / center / scale ----------------------------
    add(Case("momentum_0", "momentum=0.0: moving stats copy the batch stats.",
             (8, 3), {"momentum": 0.0}))
    add(Case("momentum_0_5", "momentum=0.5.", (8, 3), {"momentum": 0.5}))
    add(Case("momentum_1", "momentum=1.0: moving stats frozen.", (8, 3), {"momentum": 1.0}))
    add(Case("momentum_0_5_fused_nhwc", "momentum=0.5 on the fused NHWC path.",
             (4, 3, 5, 2), {"momentum": 0.5}))
    add(Case("epsilon_1e-5", "epsilon=1e-5.", (8, 3), {"epsilon": 1e-5}))
    add(Case("epsilon_0_1", "epsilon=0.1.", (8, 3), {"epsilon": 0.1}))
    add(Case("center_false", "center=False (no beta).", (8, 3), {"center": False}))
    add(Case("scale_false", "scale=False (no gamma).", (8, 3), {"scale": False}))
    add(Case("center_false_scale_false", "center=False and scale=False (no gamma, no beta).",
             (8, 3), {"center": False, "scale": False}))

    # ---- initializers (weights NOT seeded) ------------------------------
    add(Case("initializers", "All four initializers set; step 0 uses the initialized values.",
             (8, 3),
             {"beta_initializer": "ones",
              "gamma_initializer": {"class_name": "Constant", "config": {"value": 2.0}},
              "moving_mean_initializer": "ones",
              "moving_variance_initializer": {"class_name": "Constant",
                                              "config": {"value": 3.0}}},
             set_initial_weights=False))
    add(Case("initializers_renorm", "Renorm with custom moving initializers (moving_stddev "
             "and renorm_stddev start at sqrt(moving_variance_initializer)).",
             (8, 3),
             {"renorm": True,
              "moving_mean_initializer": {"class_name": "Constant", "config": {"value": 0.5}},
              "moving_variance_initializer": {"class_name": "Constant",
                                              "config": {"value": 4.0}}},
             steps=TTTF, set_initial_weights=False))

    # ---- regularizers ---------------------------------------------------
    add(Case("regularizer_l2_gamma_l1_beta", "gamma_regularizer='l2', beta_regularizer=L1(0.3).",
             (8, 3),
             {"gamma_regularizer": "l2",
              "beta_regularizer": {"class_name": "L1", "config": {"l1": 0.3}}}))
    add(Case("regularizer_l1_l2", "gamma_regularizer='l1_l2', beta_regularizer=L1L2(0.1, 0.2).",
             (8, 3),
             {"gamma_regularizer": "l1_l2",
              "beta_regularizer": {"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}}}))
    add(Case("regularizer_scale_false", "scale=False with both regularizers: only beta's "
             "loss exists.",
             (8, 3), {"scale": False, "gamma_regularizer": "l2", "beta_regularizer": "l2"}))

    # ---- constraints (never applied in the forward pass) ----------------
    add(Case("constraint_non_neg_gamma", "gamma_constraint='non_neg' with negative gamma "
             "entries; constrained_w* shows the values after an optimizer step.",
             (8, 3), {"gamma_constraint": "non_neg"},
             weight_overrides={"gamma": [-0.6, 1.3, -0.2]}, constraint_check=True))
    add(Case("constraint_max_norm_beta", "beta_constraint=MaxNorm(max_value=0.5, axis=0).",
             (8, 3),
             {"beta_constraint": {"class_name": "MaxNorm",
                                  "config": {"max_value": 0.5, "axis": 0}}},
             weight_overrides={"beta": [0.45, -0.4, 0.3]}, constraint_check=True))
    add(Case("constraint_unit_norm", "gamma_constraint='unit_norm', beta_constraint='unit_norm'.",
             (8, 3), {"gamma_constraint": "unit_norm", "beta_constraint": "unit_norm"},
             constraint_check=True))
    add(Case("constraint_min_max_norm", "gamma_constraint=MinMaxNorm(0.5, 1.0, rate=1.0, axis=0) "
             "and beta_constraint='non_neg'.",
             (8, 3),
             {"gamma_constraint": {"class_name": "MinMaxNorm",
                                   "config": {"min_value": 0.5, "max_value": 1.0,
                                              "rate": 1.0, "axis": 0}},
              "beta_constraint": "non_neg"},
             constraint_check=True))

    # ---- renorm ---------------------------------------------------------
    add(Case("renorm_default", "renorm=True with default clipping (none) and momenta.",
             (8, 3), {"renorm": True}, steps=TTTF))
    add(Case("renorm_clipping", "renorm with renorm_clipping={'rmax': 1.5, 'rmin': 0.8, "
             "'dmax': 0.3}.",
             (8, 3), {"renorm": True,
                      "renorm_clipping": {"rmax": 1.5, "rmin": 0.8, "dmax": 0.3}},
             steps=TTTF, weight_overrides={"renorm_stddev": [0.6, 2.5, 1.1],
                                           "renorm_mean": [0.9, -0.8, 0.1]}))
    add(Case("renorm_clipping_partial", "renorm with renorm_clipping={'rmax': 1.1, "
             "'dmax': 0.1} (no rmin).",
             (8, 3), {"renorm": True, "renorm_clipping": {"rmax": 1.1, "dmax": 0.1}},
             steps=TTTF, weight_overrides={"renorm_stddev": [0.6, 2.5, 1.1]}))
    add(Case("renorm_momentum_0_5", "renorm with renorm_momentum=0.5 and momentum=0.9.",
             (8, 3), {"renorm": True, "renorm_momentum": 0.5, "momentum": 0.9}, steps=TTTF))
    add(Case("renorm_nchw_axis1", "renorm on NCHW (4, 3, 5, 2) axis=1 (never fused).",
             (4, 3, 5, 2), {"renorm": True, "axis": 1}, steps=TTTF))
    add(Case("renorm_trainable_false", "renorm with trainable=False and training=True "
             "(V1: renorm_mean/renorm_stddev still update, moving stats do not).",
             (8, 3), {"renorm": True, "trainable": False},
             steps=((True, False), (True, False), (True, False), (False, False))))

    # ---- trainable / training -------------------------------------------
    add(Case("trainable_false_training_true", "trainable=False called with training=True "
             "(V1: batch statistics, moving statistics frozen).",
             (8, 3), {"trainable": False},
             steps=((True, False), (True, False), (False, False))))
    add(Case("trainable_false_training_false", "trainable=False called with training=False.",
             (8, 3), {"trainable": False},
             steps=((False, False), (False, False), (None, False))))
    add(Case("trainable_flip", "layer.trainable flipped between steps, always training=True "
             "until the last step.",
             (8, 3), steps=((True, True), (True, False), (True, True), (True, False),
                            (False, True))))
    add(Case("training_none", "training=None (learning phase 0 outside fit: inference).",
             (8, 3), steps=((None, True), (True, True), (None, True))))
    add(Case("training_int", "training passed as the ints 1 and 0.",
             (8, 3), steps=((1, True), (1, True), (0, True))))
    add(Case("multistep_nhwc_alternating", "Five steps alternating training True/False on "
             "fused NHWC (4, 3, 5, 2).",
             (4, 3, 5, 2), steps=((True, True), (False, True), (True, True), (False, True),
                                  (True, True))))

    # ---- virtual_batch_size ---------------------------------------------
    add(Case("vbs_2_rank2", "virtual_batch_size=2 on (8, 3): 4 strided ghost batches.",
             (8, 3), {"virtual_batch_size": 2}))
    add(Case("vbs_4_rank3", "virtual_batch_size=4 on (8, 5, 3) axis=-1.",
             (8, 5, 3), {"virtual_batch_size": 4, "axis": -1}))
    add(Case("vbs_2_nchw", "virtual_batch_size=2 on NCHW (4, 3, 2, 2) axis=1; params "
             "(1, 1, 3, 1, 1).",
             (4, 3, 2, 2), {"virtual_batch_size": 2, "axis": 1}))
    add(Case("vbs_renorm", "virtual_batch_size=2 with renorm on (8, 3).",
             (8, 3), {"virtual_batch_size": 2, "renorm": True}, steps=TTTF))
    add(Case("vbs_inference_batch6", "virtual_batch_size=4, trained on batch 8, then "
             "inference on batch 6 (not divisible; allowed at inference).",
             [(8, 3), (8, 3), (6, 3)], {"virtual_batch_size": 4}))

    # ---- adjustment -----------------------------------------------------
    add(Case("adjustment_last", "adjustment returning per-feature (3,) constants, axis=-1 "
             "on (8, 3).",
             (8, 3), adjustment_shape=(3,)))
    add(Case("adjustment_nchw", "adjustment on NCHW (4, 3, 5, 2) axis=1 with (1, 3, 1, 1) "
             "constants (non-fused).",
             (4, 3, 5, 2), {"axis": 1}, adjustment_shape=(1, 3, 1, 1)))
    add(Case("adjustment_renorm", "adjustment combined with renorm on (8, 3).",
             (8, 3), {"renorm": True}, steps=TTTF, adjustment_shape=(3,)))

    # ---- name -----------------------------------------------------------
    add(Case("name_custom", "Custom layer name 'bn_custom'.", (8, 3), {"name": "bn_custom"}))

    # ---- numerics -------------------------------------------------------
    add(Case("large_offset_nonfused", "Inputs with mean 1000 and std 1 on the non-fused "
             "path (float32 cancellation).",
             (8, 4), x_loc=1000.0, x_scale=1.0))
    add(Case("large_offset_fused_nhwc", "Inputs with mean 1000 and std 1 on the fused NHWC "
             "path.",
             (4, 3, 5, 2), x_loc=1000.0, x_scale=1.0))
    return c


CASES = _cases()


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _seed(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _jsonable(obj):
    """Convert get_config() output (ListWrappers, tuples, numpy scalars) to JSON types."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "ListWrapper":
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "name") and hasattr(obj, "as_numpy_dtype"):  # tf.DType
        return obj.name
    raise TypeError(f"cannot make {type(obj)!r} JSON-safe: {obj!r}")


def _weight_name(variable) -> str:
    name = variable.name
    name = name.rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def _random_weight(name: str, shape, rng: np.random.Generator) -> np.ndarray:
    if name == "gamma":
        return rng.uniform(0.5, 1.5, shape)
    if name == "beta":
        return rng.uniform(-0.5, 0.5, shape)
    if name == "moving_mean":
        return rng.uniform(-1.0, 1.0, shape)
    if name == "moving_variance":
        return rng.uniform(0.5, 2.0, shape)
    if name in ("moving_stddev", "renorm_stddev"):
        return rng.uniform(0.7, 1.4, shape)
    if name == "renorm_mean":
        return rng.uniform(-0.5, 0.5, shape)
    raise KeyError(name)


def _make_input(case: Case, shape, rng: np.random.Generator) -> np.ndarray:
    if case.input_dtype == "int32":
        return rng.integers(-4, 5, size=shape).astype(np.int32)
    x = case.x_loc + case.x_scale * rng.standard_normal(shape)
    return x.astype(case.input_dtype)


def _write_npz(path: str, arrays: dict) -> None:
    """np.savez_compressed-compatible writer with fixed timestamps (reproducible bytes)."""
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Running one case
# --------------------------------------------------------------------------


def run_case(case: Case, out_dir: str) -> dict:
    tf_keras.backend.clear_session()  # default layer name is always "batch_normalization"
    rng = np.random.default_rng(_seed(case.name))
    shapes = case.step_shapes()

    arrays: dict[str, np.ndarray] = {}
    adj_shape_seen: list = []
    adj_calls: list[int] = []

    kwargs = dict(case.kwargs)
    if case.adjustment_shape is not None:
        compute_dtype = np.float64 if kwargs.get("dtype") == "float64" else np.float32
        adj_scale = rng.uniform(0.8, 1.2, case.adjustment_shape).astype(compute_dtype)
        adj_bias = rng.uniform(-0.2, 0.2, case.adjustment_shape).astype(compute_dtype)
        arrays["adj_scale"] = adj_scale
        arrays["adj_bias"] = adj_bias

        def adjustment(shape):
            if not adj_shape_seen:
                adj_shape_seen.extend(int(s) for s in shape.numpy().tolist())
            adj_calls[-1] += 1
            return tf.constant(adj_scale), tf.constant(adj_bias)

        kwargs["adjustment"] = adjustment

    layer = BatchNormalization(**kwargs)
    layer.build(tf.TensorShape(shapes[0]))
    weight_names = [_weight_name(w) for w in layer.weights]

    if case.set_initial_weights:
        new_weights = []
        for w, name in zip(layer.weights, weight_names):
            value = _random_weight(name, tuple(w.shape), rng)
            if name in case.weight_overrides:
                value = np.asarray(case.weight_overrides[name], dtype=np.float64).reshape(
                    tuple(w.shape))
            new_weights.append(value.astype(w.dtype.as_numpy_dtype))
        layer.set_weights(new_weights)
    else:
        assert not case.weight_overrides, case.name

    for i, w in enumerate(layer.get_weights()):
        arrays[f"init_w{i}"] = w

    config_after_build = None
    steps_json = []
    none_gradients = []
    input_differentiable = case.input_dtype.startswith("float")

    for k, ((training, trainable), shape) in enumerate(zip(case.steps, shapes)):
        steps_json.append({"training": training, "trainable": trainable})
        layer.trainable = trainable
        adj_calls.append(0)

        x = _make_input(case, shape, rng)
        dy = rng.standard_normal(shape)
        xt = tf.constant(x)
        params = [("dgamma", layer.gamma), ("dbeta", layer.beta)]
        params = [(key, v) for key, v in params if v is not None]

        with tf.GradientTape() as tape:
            if input_differentiable:
                tape.watch(xt)
            for _, v in params:
                tape.watch(v)  # also when layer.trainable is False
            y = layer(xt, training=training)
            dyt = tf.constant(dy.astype(y.dtype.as_numpy_dtype))
            loss = tf.reduce_sum(y * dyt)
        sources = ([xt] if input_differentiable else []) + [v for _, v in params]
        grads = tape.gradient(loss, sources)

        arrays[f"x{k}"] = x
        arrays[f"y{k}"] = y.numpy()
        arrays[f"dy{k}"] = dyt.numpy()
        keys = (["dx"] if input_differentiable else []) + [key for key, _ in params]
        for key, src, g in zip(keys, sources, grads):
            if g is None:
                none_gradients.append(f"{key}{k}")
                g = tf.zeros_like(src)
            arrays[f"{key}{k}"] = tf.convert_to_tensor(g).numpy()
        for i, w in enumerate(layer.get_weights()):
            arrays[f"w{k}_{i}"] = w
        arrays[f"losses{k}"] = np.array([float(l) for l in layer.losses], dtype=np.float64)

        if config_after_build is None:
            config_after_build = _jsonable(layer.get_config())

    constrained = []
    if case.constraint_check:
        for v in (layer.gamma, layer.beta):
            if v is not None and v.constraint is not None:
                v.assign(v.constraint(v))
                constrained.append(_weight_name(v))
        for i, w in enumerate(layer.get_weights()):
            arrays[f"constrained_w{i}"] = w

    json_kwargs = {k: v for k, v in case.kwargs.items() if k != "adjustment"}
    config = {
        "case": case.name,
        "description": case.description,
        "kwargs": _jsonable(json_kwargs),
        "adjustment": True if case.adjustment_shape is not None else None,
        "steps": steps_json,
        "dtype": case.input_dtype,
        "tf_version": tf.__version__,
        "tf_keras_version": tf_keras.__version__,
        "weight_names": weight_names,
        "config_after_build": config_after_build,
        "set_initial_weights": case.set_initial_weights,
        "constraint_check": case.constraint_check,
        "fused_after_build": bool(layer.fused),
        "seed": _seed(case.name),
    }
    if case.adjustment_shape is not None:
        config["adj_shape_seen"] = adj_shape_seen
        config["adj_calls"] = adj_calls
    if case.constraint_check:
        config["constrained_weights"] = constrained
    if not input_differentiable:
        config["has_dx"] = False
    if none_gradients:
        config["none_gradients"] = none_gradients

    ordered = {"config_json": np.array(json.dumps(config))}
    ordered.update(arrays)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, case.name + ".npz")
    _write_npz(path, ordered)
    return {"case": case.name, "shapes": shapes, "steps": steps_json,
            "fused": bool(layer.fused), "bytes": os.path.getsize(path)}


# --------------------------------------------------------------------------
# Error behaviour notes (errors.json; informative, not numeric fixtures)
# --------------------------------------------------------------------------

# (name, constructor kwargs, list of (input shape, training) calls); the
# exception raised by the constructor or by the first failing call is recorded.
ERROR_CASES = [
    ("axis_not_int", {"axis": "a"}, [((8, 3), True)]),
    ("axis_float", {"axis": 1.0}, [((8, 3), True)]),
    ("axis_out_of_range", {"axis": 2}, [((8, 3), True)]),
    ("axis_negative_out_of_range", {"axis": -3}, [((8, 3), True)]),
    ("axis_duplicate", {"axis": [1, -1]}, [((8, 3), True)]),
    ("scalar_input", {}, [((), True)]),
    ("renorm_clipping_bad_key", {"renorm": True, "renorm_clipping": {"rmax": 2.0, "foo": 1.0}},
     [((8, 3), True)]),
    ("renorm_clipping_bad_key_without_renorm", {"renorm_clipping": {"foo": 1.0}},
     [((8, 3), True)]),
    ("vbs_zero", {"virtual_batch_size": 0}, [((8, 3), True)]),
    ("vbs_negative", {"virtual_batch_size": -2}, [((8, 3), True)]),
    ("vbs_axis_0", {"virtual_batch_size": 2, "axis": 0}, [((8, 3), True)]),
    ("vbs_not_dividing_batch_training", {"virtual_batch_size": 3}, [((8, 3), True)]),
    ("vbs_not_dividing_batch_inference", {"virtual_batch_size": 3}, [((8, 3), False)]),
    ("feature_size_changes", {}, [((8, 3), True), ((8, 4), True)]),
    ("rank_changes", {}, [((8, 3), True), ((8, 2, 3), True)]),
    ("fused_true_with_renorm_rank4", {"fused": True, "renorm": True}, [((4, 3, 5, 2), True)]),
]


def _first_line(exc: Exception) -> str:
    """The informative line of an exception message (Keras wraps op errors)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Exception encountered when calling layer"):
        lines = lines[1:]
    if not lines:
        return ""
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", lines[0])


def _error_notes() -> list[dict]:
    notes = []
    for name, kwargs, calls in ERROR_CASES:
        tf_keras.backend.clear_session()
        entry = {"name": name, "kwargs": kwargs,
                 "calls": [{"shape": list(s), "training": t} for s, t in calls]}
        stage = "init"
        try:
            layer = BatchNormalization(**kwargs)
            for i, (shape, training) in enumerate(calls):
                stage = f"call{i}"
                layer(tf.ones(shape), training=training)
            entry.update(raised=None, stage=None, message=None)
        except Exception as exc:  # noqa: BLE001 - recording whatever TF raises
            entry.update(raised=type(exc).__name__, stage=stage, message=_first_line(exc))
        notes.append(entry)

    # Adjustment output that does not broadcast in the NCHW layout.
    tf_keras.backend.clear_session()
    layer = BatchNormalization(axis=1, adjustment=lambda s: (tf.ones([3]), tf.zeros([3])))
    entry = {"name": "adjustment_shape_c_on_nchw", "kwargs": {"axis": 1},
             "adjustment_output_shape": [3],
             "calls": [{"shape": [4, 3, 5, 2], "training": True}]}
    try:
        layer(tf.ones((4, 3, 5, 2)), training=True)
        entry.update(raised=None, stage=None, message=None)
    except Exception as exc:  # noqa: BLE001
        entry.update(raised=type(exc).__name__, stage="call0",
                     message=_first_line(exc))
    notes.append(entry)

    # Empty batch in training: no exception, the moving statistics become NaN.
    tf_keras.backend.clear_session()
    layer = BatchNormalization()
    layer(tf.zeros((0, 3)), training=True)
    entry = {"name": "empty_batch_training", "kwargs": {},
             "calls": [{"shape": [0, 3], "training": True}], "raised": None,
             "stage": None, "message": None,
             "weights_after": {_weight_name(v): [None if np.isnan(e) else float(e)
                                                 for e in v.numpy().ravel()]
                               for v in layer.weights}}
    notes.append(entry)
    return notes


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _check_environment() -> None:
    cls = BatchNormalization
    if not cls.__module__.startswith("tf_keras.") or cls._USE_V2_BEHAVIOR:
        raise SystemExit(
            f"tf.compat.v1.keras.layers.BatchNormalization resolved to {cls.__module__}."
            f"{cls.__name__}; run with TF_USE_LEGACY_KERAS=1 and tf-keras installed.")


def _fmt_training(t) -> str:
    if t is None:
        return "N"
    if isinstance(t, bool):
        return "T" if t else "F"
    return str(t)  # training given as an int


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="directory for the .npz files (errors.json goes to its parent)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="cases to generate")
    parser.add_argument("--list", action="store_true", help="list case names and exit")
    args = parser.parse_args(argv)

    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    if args.list:
        print("\n".join(names))
        return 0

    _check_environment()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    tf.get_logger().setLevel("ERROR")

    selected = CASES
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            parser.error(f"unknown cases: {sorted(unknown)}")
        selected = [c for c in CASES if c.name in args.only]

    rows = [run_case(case, args.out) for case in selected]
    if not args.only:
        errors_path = os.path.join(os.path.dirname(os.path.abspath(args.out)), "errors.json")
        notes = {"tf_version": tf.__version__, "tf_keras_version": tf_keras.__version__,
                 "cases": _error_notes()}
        with open(errors_path, "w") as fh:
            json.dump(notes, fh, indent=1)
            fh.write("\n")

    print(f"TensorFlow {tf.__version__}, tf_keras {tf_keras.__version__}, "
          f"NumPy {np.__version__}")
    header = f"{'case':36s} {'fused':5s} {'shapes':28s} steps (training/trainable)"
    print(header)
    print("-" * len(header))
    total = 0
    for r in rows:
        shapes = sorted(set(r["shapes"]), key=r["shapes"].index)
        shape_txt = " ".join(str(s).replace(" ", "") for s in shapes)
        steps_txt = " ".join(
            f"{_fmt_training(s['training'])}/{'t' if s['trainable'] else 'f'}"
            for s in r["steps"])
        print(f"{r['case']:36s} {str(r['fused']):5s} {shape_txt:28s} {steps_txt}")
        total += r["bytes"]
    print(f"{len(rows)} cases, {total / 1024:.1f} KiB written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

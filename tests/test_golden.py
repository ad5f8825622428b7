"""The layer against TensorFlow's own numbers.

Each fixture in ``tests/golden/data`` was produced by
``tf.compat.v1.keras.layers.BatchNormalization`` (see ``tests/golden/README.md``). A case is replayed step by step on a fresh numbabn layer, and
every output, input gradient, parameter gradient, weight and regularization loss is compared.
"""
import json
import pathlib

import numpy as np
import pytest
from conftest import SIMULATOR, assert_close, simulator_launch

import numbabn
from numbabn import reference

DATA = pathlib.Path(__file__).parent / "golden" / "data"
CASES = sorted(p.stem for p in DATA.glob("*.npz"))
# TF's own float32 formula cancels on inputs with |mean| >> std (about 1e-4 relative error):
# there the float64 reference is the target and TF is only checked loosely.
CANCELLING = {"large_offset_nonfused", "large_offset_fused_nhwc"}


def load(case):
    data = np.load(DATA / f"{case}.npz")
    return data, json.loads(data["config_json"].item())


def make_layer(data, config):
    kwargs = dict(config["kwargs"])
    if config.get("adjustment"):
        kwargs["adjustment"] = lambda shape: (data["adj_scale"], data["adj_bias"])
    return numbabn.BatchNormalization(**kwargs)


@pytest.fixture(autouse=True)
def few_simulator_threads(request, monkeypatch):
    """The simulator replays with its tiny launch shape: the same kernels in a third of the time
    (tests/test_cuda.py and tests/test_matrix.py run its default tiles)."""
    if SIMULATOR and "backend" in request.fixturenames:
        if request.getfixturevalue("backend").name == "cuda":
            simulator_launch(monkeypatch, "tiny")


def test_fixtures_present():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES)
def test_replay(case, backend):
    data, config = load(case)
    layer = make_layer(data, config)
    layer.build(data["x0"].shape)
    assert layer.fused == config["fused_after_build"]
    names = [w.name.split("/")[-1].split(":")[0] for w in layer.weights]
    assert names == config["weight_names"]
    initial = [data[f"init_w{i}"] for i in range(len(names))]
    if config["set_initial_weights"]:
        layer.set_weights(initial)
    else:
        for got, want, name in zip(layer.get_weights(), initial, names):
            assert got.dtype == want.dtype
            assert_close(got, want, err_msg=f"initial {name}")
    loose = 50.0 if case in CANCELLING else 1.0
    for k, step in enumerate(config["steps"]):
        layer.trainable = step["trainable"]
        x = data[f"x{k}"]
        y = backend.host(layer(backend.to(x), training=step["training"]))
        assert y.dtype == data[f"y{k}"].dtype and y.shape == x.shape
        assert_close(y, data[f"y{k}"], scale=loose, err_msg=f"y step {k}")
        dx = backend.host(layer.backward(backend.to(data[f"dy{k}"])))
        if config.get("has_dx", True):
            assert dx.dtype == data[f"dx{k}"].dtype
            assert_close(dx, data[f"dx{k}"], scale=loose, err_msg=f"dx step {k}")
        if step["trainable"]:
            for key in ("gamma", "beta"):
                if key in names:
                    assert_close(backend.host(layer.grads[key]), data[f"d{key}{k}"], scale=loose,
                                 err_msg=f"d{key} step {k}")
                else:
                    assert key not in layer.grads
        else:
            assert layer.grads == {}
        for i, (got, name) in enumerate(zip(layer.get_weights(), names)):
            want = data[f"w{k}_{i}"]
            assert got.shape == want.shape and got.dtype == want.dtype
            assert_close(got, want, err_msg=f"{name} after step {k}")
        # a regularization loss is one scalar per weight: it matches TensorFlow's more tightly
        # than the float32 TOLERANCE row
        np.testing.assert_allclose(layer.losses, data[f"losses{k}"], rtol=1e-6)
    if config.get("constraint_check"):
        layer.apply_constraints()
        for i, (got, name) in enumerate(zip(layer.get_weights(), names)):
            assert_close(got, data[f"constrained_w{i}"], err_msg=f"constrained {name}")


@pytest.mark.parametrize("case", sorted(CANCELLING))
def test_cancelling_cases_match_float64(case):
    """Where TF's float32 arithmetic cancels, numbabn is right to float32 rounding."""
    data, config = load(case)
    layer = make_layer(data, config)
    layer.build(data["x0"].shape)
    layer.set_weights([data[f"init_w{i}"] for i in range(len(layer.weights))])
    gamma, beta = (w.astype(np.float64) for w in layer.get_weights()[:2])
    x = data["x0"]
    y = layer(x, training=True)
    axes = tuple(layer.axis)
    shape = [1] * x.ndim
    shape[axes[0]] = -1
    want, _, _ = reference.forward_train(x, axes, layer.epsilon, gamma.reshape(shape),
                                         beta.reshape(shape))
    assert_close(y, want)


def _strip(value):
    """A Keras serialization without the keys that only name tf_keras modules."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("module", "registered_name")}
    return value


@pytest.mark.parametrize("case", CASES)
def test_config_matches_keras(case):
    data, config = load(case)
    layer = make_layer(data, config)
    layer(data["x0"], training=config["steps"][0]["training"])
    ours, theirs = layer.get_config(), _strip(config["config_after_build"])
    assert list(ours) == list(theirs)
    if isinstance(theirs["dtype"], dict):               # a mixed precision policy
        theirs["dtype"] = theirs["dtype"]["config"]["name"]
    if "name" not in config["kwargs"]:                  # default names are made unique
        assert ours["name"].startswith("batch_normalization")
        theirs["name"] = ours["name"]
    if "virtual_batch_size" in theirs:                  # TF reports the axis shifted by one
        theirs["axis"] = [a - 1 for a in theirs["axis"]]
    for key, value in theirs.items():
        if isinstance(value, dict) and "config" in value:
            assert ours[key]["class_name"] == value["class_name"], key
            for k, v in value["config"].items():
                got = ours[key]["config"][k]
                if isinstance(v, float):
                    assert got == pytest.approx(v, rel=1e-6), (key, k)
                else:
                    assert got == v, (key, k)
        elif isinstance(value, float):
            assert ours[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert ours[key] == value, key
    rebuilt = numbabn.BatchNormalization.from_config(ours)
    assert rebuilt.get_config() == ours
    rebuilt(data["x0"], training=False)                 # a built config round-trips and builds

"""``layer.loss_grads`` and the regularizers' gradients, against TensorFlow and by differences.

``tests/golden/sgd`` holds SGD trajectories from TensorFlow's V1 layer trained on
``sum(y * u) + sum(layer.losses)`` (``tests/golden/generate_sgd.py``); a NumPy loop using
``grads + loss_grads`` must follow them step by step.
"""
import json
import pathlib

import numpy as np
import pytest
from conftest import assert_close

import numbabn
from numbabn.keras import identifiers as kc

DATA = pathlib.Path(__file__).parent / "golden" / "sgd"
CASES = sorted(p.stem for p in DATA.glob("*.npz"))


def test_sgd_fixtures_present():
    assert {"l1", "l2", "l1_l2"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_a_numpy_sgd_loop_follows_tensorflow(case, backend):
    data = np.load(DATA / f"{case}.npz")
    config = json.loads(data["config_json"].item())
    layer = numbabn.BatchNormalization(momentum=config["momentum"], **config["kwargs"])
    x0 = data["x0"]
    layer.build(x0.shape)
    for key in ("gamma", "beta"):
        if f"init_{key}" in data:
            getattr(layer, key).assign(data[f"init_{key}"])
    lr = config["learning_rate"]
    for step in range(config["steps"]):
        layer(backend.to(data[f"x{step}"]), training=True)
        layer.backward(backend.to(data[f"u{step}"]))
        # one scalar per weight, tighter than the float32 TOLERANCE row (as in test_golden)
        np.testing.assert_allclose(layer.losses, data[f"losses{step}"], rtol=1e-6)
        extra = layer.loss_grads
        assert set(extra) <= set(layer.grads)
        for key, grad in layer.grads.items():
            assert type(extra.get(key, grad)) is type(grad)    # of the input's kind
            total = backend.host(grad) + (backend.host(extra[key]) if key in extra else 0.0)
            var = getattr(layer, key)
            var -= lr * total
        for key in config["weights"]:
            assert_close(getattr(layer, key).value, data[f"{key}{step}"],
                         err_msg=f"{key} after step {step}")


def test_loss_grads_are_empty_without_regularizers_or_when_frozen():
    assert numbabn.BatchNormalization().loss_grads == {}
    layer = numbabn.BatchNormalization(gamma_regularizer="l2", beta_regularizer="l1")
    layer.build((None, 3))
    assert sorted(layer.loss_grads) == ["beta", "gamma"]
    layer.trainable = False
    assert layer.loss_grads == {}
    layer.trainable = True
    only = numbabn.BatchNormalization(beta_regularizer="l2", scale=False)
    only.build((None, 3))
    assert list(only.loss_grads) == ["beta"]
    assert only.loss_grads["beta"].dtype == np.float32
    assert only.loss_grads["beta"].shape == (3,)


@pytest.mark.parametrize("identifier", ["l1", "l2", "l1_l2", {"class_name": "L1L2",
                                         "config": {"l1": 0.0, "l2": 0.3}},
                                        {"class_name": "L1L2", "config": {"l1": 0.2}}])
def test_regularizer_gradients_match_finite_differences(identifier, rng):
    reg = kc.get_regularizer(identifier)
    w = rng.normal(size=7)
    w[np.abs(w) < 1e-3] = 0.5                   # keep away from abs' kink
    h = 1e-6
    numeric = np.array([(reg(w + h * e) - reg(w - h * e)) / (2 * h) for e in np.eye(7)])
    np.testing.assert_allclose(reg.gradient(w), numeric, rtol=1e-6, atol=1e-8)


def test_l1_gradient_at_zero_is_zero_as_in_tensorflow():
    np.testing.assert_array_equal(kc.get_regularizer("l1").gradient(np.zeros(3)), 0.0)


def test_a_callable_regularizer_without_a_gradient_is_refused_clearly():
    layer = numbabn.BatchNormalization(gamma_regularizer=lambda w: float(np.sum(w ** 4)))
    layer.build((None, 2))
    with pytest.raises(TypeError, match="gamma_regularizer.*gradient"):
        layer.loss_grads

    class Quartic:
        def __call__(self, w):
            return float(np.sum(np.asarray(w, np.float64) ** 4))

        def gradient(self, w):
            return 4 * np.asarray(w, np.float64) ** 3
    layer = numbabn.BatchNormalization(gamma_regularizer=Quartic())
    layer.build((None, 2))
    np.testing.assert_allclose(layer.loss_grads["gamma"], 4.0)

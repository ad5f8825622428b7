"""Moving a layer to and from tf.keras (``BatchNormalization.to_keras`` / ``from_keras``).

A tf.keras layer's configuration is numbabn's, less a few keys, and its weights are in the same
order; only :func:`to_keras` needs TensorFlow, and imports it when called. The layer class is
passed in, so this module does not import the layer.
"""
import json

import numpy as np

__all__ = ["from_keras", "to_keras"]


def _keras_config(config, built):
    """A tf.keras layer config without the keys numbabn does not take (module paths, a
    serialized dtype policy becomes its name)."""
    out = {k: v for k, v in config.items() if k not in ("module", "registered_name")}
    if isinstance(out.get("dtype"), dict):
        out["dtype"] = out["dtype"].get("config", {}).get("name", out["dtype"])
    if built and "virtual_batch_size" in out:   # a built tf.keras layer reports them shifted
        out["axis"] = [a - 1 for a in out["axis"]]
    return out


def _plain(value):
    # tf.keras wraps lists and dicts in its own tracking types
    return dict(value) if hasattr(value, "keys") else list(value)


def from_keras(keras_layer, cls):
    """A ``cls`` layer with the configuration and weights of a tf.keras BatchNormalization."""
    config = json.loads(json.dumps(keras_layer.get_config(), default=_plain))
    layer = cls.from_config(_keras_config(config, keras_layer.built))
    if keras_layer.built:
        spec = keras_layer.input_spec
        spec = spec[0] if isinstance(spec, (list, tuple)) else spec
        layer.build(tuple(spec.axes.get(a) for a in range(spec.ndim)))
        layer.set_weights([np.asarray(w) for w in keras_layer.get_weights()])
    return layer


def to_keras(layer):
    """A tf.keras (V1) BatchNormalization with ``layer``'s configuration and weights.

    Needs TensorFlow with tf_keras (``TF_USE_LEGACY_KERAS=1``) or a TensorFlow whose bundled
    Keras is version 2.
    """
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("to_keras() needs TensorFlow: pip install tensorflow-cpu tf-keras") \
            from None
    config = dict(layer.get_config())
    config.pop("synchronized", None)
    keras_layer = tf.compat.v1.keras.layers.BatchNormalization.from_config(config)
    if layer.built:
        ndim, dims = layer._input_spec
        keras_layer.build(tuple(dims.get(a) for a in range(ndim)))
        keras_layer.set_weights(layer.get_weights())
    return keras_layer

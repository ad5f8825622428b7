"""Saving and loading layers, and moving them to and from tf.keras.

A saved layer is one ``.npz`` file (NumPy's zip of arrays) holding the layer's configuration as
JSON, the shape it was built for, and its weights in Keras order. Nothing in it is pickled: it is
read with ``allow_pickle=False``, so loading a file cannot run code. It is written to a temporary
file beside the target and renamed over it once complete, so a crash leaves either the old file
or the new one, never half of one.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

__all__ = ["save", "load", "from_keras", "to_keras"]

FORMAT = 1
_KEYS = ("format", "class_name", "config", "input_spec", "weight_names")


def _mode_for(path):
    """The permission bits a file written at ``path`` should get."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask():
    try:                                 # Linux shows it without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)              # elsewhere reading it means setting it; put it back
    os.umask(umask)
    return umask


def save(layer, path):
    """Write ``layer`` (built or not) to ``path`` atomically; see :meth:`BatchNormalization.save`."""
    config = layer.get_config()
    try:
        text = json.dumps(config)
        type(layer).from_config(json.loads(text))
    except Exception as err:
        raise ValueError(f"Layer {layer.name!r} cannot be saved: its configuration does not "
                         f"round-trip through JSON ({err}). Custom callables (initializers, "
                         "regularizers, constraints) cannot be stored in a file.") from err
    arrays = {
        "format": np.array(FORMAT),
        "class_name": np.array(type(layer).__name__),
        "config": np.array(text),
        "input_spec": np.array(json.dumps(_input_spec(layer))),
    }
    weights = layer.get_weights() if layer.built else []
    arrays["weight_names"] = np.array([w.name for w in layer.weights] if weights else [], dtype=str)
    for i, w in enumerate(weights):
        arrays[f"w{i}"] = w
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".numbabn-", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would: an existing
        # file's own, else 0666 less the umask
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _input_spec(layer):
    if not layer.built:
        return None
    ndim, dims = layer._input_spec
    return {"ndim": ndim, "dims": {str(a): d for a, d in dims.items()}}


def load(path, cls=None):
    """Load a layer saved by :meth:`BatchNormalization.save`, built and with its weights.

    The file is read without unpickling anything, so loading cannot run code from it.

    Parameters
    ----------
    path : str or path-like
        The file.
    cls : type, optional
        The layer class to make (:class:`BatchNormalization` by default); the file must hold
        a layer of that class.

    Returns
    -------
    BatchNormalization
        The saved configuration, built for the saved input shape with the saved weights (an
        unbuilt layer if it was saved unbuilt).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a numbabn layer file, is corrupt, or its weights do not fit its
        configuration; the message says which.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import numbabn
    >>> layer = numbabn.BatchNormalization(axis=1, momentum=0.0)
    >>> x = np.random.default_rng(0).normal(3.0, 1.0, size=(4, 2, 3, 3))
    >>> _ = layer(x, training=True)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     loaded = numbabn.load(layer.save(os.path.join(tmp, "bn.npz")))
    >>> loaded.built, loaded.axis, bool(np.array_equal(loaded(x), layer(x)))
    (True, [1], True)
    """
    if cls is None:
        from .layer import BatchNormalization as cls
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise ValueError(f"{path!r} is not a readable numbabn layer file: {err}") from err
    missing = [k for k in _KEYS if k not in contents]
    if missing:
        raise ValueError(f"{path!r} is not a numbabn layer file: missing {missing}")
    if int(contents["format"]) != FORMAT:
        raise ValueError(f"{path!r} has format {int(contents['format'])}; this numbabn reads "
                         f"format {FORMAT}")
    if str(contents["class_name"]) != cls.__name__:
        raise ValueError(f"{path!r} holds a {contents['class_name']}, not a {cls.__name__}")
    try:
        config = json.loads(str(contents["config"]))
        spec = json.loads(str(contents["input_spec"]))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path!r} has a corrupt configuration: {err}") from err
    layer = cls.from_config(config)
    if spec is None:
        return layer
    dims = {int(a): d for a, d in spec["dims"].items()}
    layer.build(tuple(dims.get(a) for a in range(spec["ndim"])))
    names = [str(n) for n in contents["weight_names"]]
    expected = [w.name.split("/")[-1] for w in layer.weights]
    if [n.split("/")[-1] for n in names] != expected:
        raise ValueError(f"{path!r} does not match its configuration: weights {names}, "
                         f"the layer has {expected}")
    weights = []
    for i in range(len(names)):
        if f"w{i}" not in contents:
            raise ValueError(f"{path!r} is missing weight {names[i]!r}")
        weights.append(contents[f"w{i}"])
    layer.set_weights(weights)
    return layer


# ------------------------------------------------------------------------------------------------
# tf.keras


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


def from_keras(keras_layer, cls=None):
    """A numbabn layer with the configuration and weights of a tf.keras BatchNormalization."""
    if cls is None:
        from .layer import BatchNormalization as cls
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

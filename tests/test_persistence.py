"""Saving and loading layers, tf.keras interchange, and folding into the previous layer."""
import json
import os
import re
import zipfile

import numpy as np
import pytest
from conftest import assert_close

import numbabn
from numbabn import persistence
from numbabn.keras import interchange

BN = numbabn.BatchNormalization

CONFIGS = [
    (dict(), (16, 5)),
    (dict(axis=1, momentum=0.5, epsilon=1e-2), (4, 3, 5, 5)),
    (dict(axis=[1, 3]), (4, 3, 2, 5)),
    (dict(renorm=True, renorm_clipping={"rmax": 2.0, "rmin": 0.5, "dmax": 1.0}), (16, 5)),
    (dict(virtual_batch_size=4), (16, 5)),
    (dict(dtype="float64", center=False, gamma_regularizer="l2",
          gamma_constraint="non_neg", moving_variance_initializer={
              "class_name": "Constant", "config": {"value": 2.0}}), (16, 5)),
    (dict(dtype="mixed_float16", trainable=False), (16, 5)),
]


def trained(kwargs, shape, rng, steps=2):
    layer = BN(**kwargs)
    for _ in range(steps):
        layer(rng.normal(2.0, 3.0, size=shape).astype(np.float32), training=True)
    return layer


@pytest.mark.parametrize("kwargs, shape", CONFIGS, ids=lambda v: str(v)[:30])
def test_save_and_load_round_trip(kwargs, shape, rng, tmp_path):
    layer = trained(kwargs, shape, rng)
    path = tmp_path / "layer.npz"
    assert layer.save(path) == str(path)
    again = numbabn.load(path)
    assert again.get_config() == layer.get_config()
    for a, b in zip(again.get_weights(), layer.get_weights()):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    x = rng.normal(size=shape).astype(np.float32)       # and they go on the same way
    np.testing.assert_array_equal(again(x, training=True), layer(x, training=True))
    np.testing.assert_array_equal(again(x), layer(x))
    assert sorted(os.listdir(tmp_path)) == ["layer.npz"]     # no temporary file left


def test_an_unbuilt_layer_loads_unbuilt(tmp_path):
    BN(momentum=0.7, name="unbuilt").save(tmp_path / "u.npz")
    again = numbabn.load(tmp_path / "u.npz")
    assert not again.built and again.momentum == 0.7 and again.name == "unbuilt"


def test_a_layer_used_on_the_device_saves_its_device_weights(backend, rng, tmp_path):
    layer = BN(momentum=0.5)
    x = rng.normal(4.0, 2.0, size=(32, 6)).astype(np.float32)
    layer(backend.to(x), training=True)
    layer.save(tmp_path / "d.npz")
    assert_close(numbabn.load(tmp_path / "d.npz").moving_mean.value, 0.5 * x.mean(axis=0),
                 scale=10)


def test_a_crash_while_writing_keeps_the_old_file(rng, tmp_path, monkeypatch):
    path = tmp_path / "layer.npz"
    trained({}, (8, 3), rng).save(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        trained({}, (8, 3), rng).save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["layer.npz"]


def test_saved_files_get_the_mode_a_plain_write_would(tmp_path):
    layer = numbabn.BatchNormalization()
    layer.build((None, 3))
    old = os.umask(0o027)
    try:
        fresh = tmp_path / "fresh.npz"
        layer.save(fresh)
        assert fresh.stat().st_mode & 0o777 == 0o640          # 0666 less the umask
        kept = tmp_path / "kept.npz"
        kept.write_bytes(b"")
        os.chmod(kept, 0o604)
        layer.save(kept)
        assert kept.stat().st_mode & 0o777 == 0o604           # an existing file keeps its mode
    finally:
        os.umask(old)
    assert numbabn.load(kept).get_config() == layer.get_config()


def test_unsavable_configuration_is_refused_before_writing(tmp_path):
    layer = BN(gamma_initializer=lambda shape, dtype: np.ones(shape, dtype))
    with pytest.raises(ValueError, match="cannot be saved"):
        layer.save(tmp_path / "x.npz")
    assert not os.listdir(tmp_path)


def _rewrite(src, dst, **changes):
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


def test_bad_files_give_clear_errors(rng, tmp_path):
    good = tmp_path / "good.npz"
    trained(dict(renorm=True), (8, 3), rng).save(good)
    with pytest.raises(FileNotFoundError):
        numbabn.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable numbabn layer file"):
        numbabn.load(tmp_path / "junk.npz")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable numbabn layer file"):
        numbabn.load(tmp_path / "cut.npz")
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as z:
        z.writestr("a.npy", b"")
    with pytest.raises(ValueError):
        numbabn.load(tmp_path / "other.npz")
    _rewrite(good, tmp_path / "nokey.npz", config=None)
    with pytest.raises(ValueError, match="missing"):
        numbabn.load(tmp_path / "nokey.npz")
    _rewrite(good, tmp_path / "future.npz", format=np.array(99))
    with pytest.raises(ValueError, match="format 99"):
        numbabn.load(tmp_path / "future.npz")
    _rewrite(good, tmp_path / "mismatch.npz", config=np.array('{"momentum": 0.5}'))
    with pytest.raises(ValueError, match="does not match its configuration"):
        numbabn.load(tmp_path / "mismatch.npz")
    _rewrite(good, tmp_path / "shape.npz", w0=np.ones(7, np.float32))
    with pytest.raises(ValueError, match=r"gamma:0' has shape \(7,\)"):
        numbabn.load(tmp_path / "shape.npz")
    _rewrite(good, tmp_path / "pickled.npz", w0=np.array([object()], dtype=object))
    with pytest.raises(ValueError):                     # never unpickled
        numbabn.load(tmp_path / "pickled.npz")


# ------------------------------------------------------------------------------------------------
# tf.keras


@pytest.mark.parametrize("kwargs, shape", CONFIGS[:5], ids=lambda v: str(v)[:30])
def test_keras_round_trip(kwargs, shape, rng):
    tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed")
    layer = trained(kwargs, shape, rng)
    keras_layer = layer.to_keras()
    for a, b in zip(keras_layer.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = rng.normal(size=shape).astype(np.float32)
    assert_close(keras_layer(tf.constant(x), training=False).numpy(), layer(x))
    back = BN.from_keras(keras_layer)
    assert back.get_config()["axis"] == layer.get_config()["axis"]
    for a, b in zip(back.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# folding


def _conv2d_nhwc(x, kernel):
    """'valid' cross-correlation, x (N, H, W, Cin), kernel (kh, kw, Cin, Cout)."""
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel)


@pytest.mark.parametrize("kwargs", [dict(), dict(center=False), dict(scale=False)])
def test_fold_into_dense(kwargs, rng):
    w, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    bn = trained(dict(momentum=0.3, **kwargs), (64, 4), rng, steps=3)
    w2, b2 = bn.fold(w, b)
    assert w2.dtype == np.float32 and w2.shape == w.shape and b2.shape == (4,)
    x = rng.normal(size=(10, 6)).astype(np.float32)
    assert_close(x @ w2 + b2, bn(x @ w + b), scale=5)
    w3, b3 = bn.fold(w)                                  # no bias
    assert_close(x @ w3 + b3, bn(x @ w), scale=5)


def test_fold_into_conv_kernels_of_either_layout(rng):
    x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 5)).astype(np.float32)        # Keras (kh, kw, in, out)
    bias = rng.normal(size=5).astype(np.float32)
    bn = trained(dict(momentum=0.2), (8, 4, 4, 5), rng, steps=3)
    want = bn(_conv2d_nhwc(x, kernel) + bias)
    k2, b2 = bn.fold(kernel, bias, axis=-1)
    assert_close(_conv2d_nhwc(x, k2) + b2, want, scale=5)
    torch_kernel = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))  # (out, in, kh, kw)
    t2, tb2 = bn.fold(torch_kernel, bias, axis=0)
    assert_close(_conv2d_nhwc(x, t2.transpose(2, 3, 1, 0)) + tb2, want, scale=5)


def test_fold_errors(rng):
    with pytest.raises(RuntimeError, match="build"):
        BN().fold(np.ones((3, 4)))
    multi = trained(dict(axis=[1, 2]), (4, 3, 2), rng)
    with pytest.raises(ValueError, match="one feature axis"):
        multi.fold(np.ones((3, 6)))
    bn = trained({}, (16, 4), rng)
    with pytest.raises(ValueError, match="Received: kernel with shape"):
        bn.fold(np.ones((4, 3)))
    with pytest.raises(ValueError, match="Received: bias"):
        bn.fold(np.ones((3, 4)), np.ones(3))
    with pytest.raises(ValueError, match="axis"):
        bn.fold(np.ones((3, 4)), axis=2)
    with pytest.raises(TypeError, match="kernel"):
        bn.fold("not an array")


def test_persistence_and_interchange_module_names():
    assert set(persistence.__all__) == {"save", "load"}
    assert set(interchange.__all__) == {"from_keras", "to_keras"}


# ------------------------------------------------------------------------------------------------
# crafted files: refused with a ValueError that names the file, before allocating more than the
# file's own checked sizes; members load() does not know are never read

def _peak_bytes(action):
    import tracemalloc
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _spec_claiming(features):
    return np.array(json.dumps({"ndim": 2, "dims": {"1": features}}))


@pytest.mark.parametrize("features", [30_000_000, 10 ** 15])
def test_a_stored_shape_larger_than_the_weights_is_refused_before_allocating(features, rng,
                                                                            tmp_path):
    good = tmp_path / "good.npz"
    trained({}, (8, 3), rng).save(good)
    _rewrite(good, tmp_path / "big.npz", input_spec=_spec_claiming(features))

    def load():
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / "big.npz"))):
            numbabn.load(tmp_path / "big.npz")
    assert _peak_bytes(load) < 4 << 20


def test_an_unknown_member_is_not_read(rng, tmp_path):
    path = tmp_path / "extra.npz"
    trained({}, (8, 3), rng).save(path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb.npy", b"\0" * (200 << 20))           # 200 MB that deflate to ~200 KB
    assert path.stat().st_size < 2 << 20
    peak = _peak_bytes(lambda: numbabn.load(path))
    assert peak < 8 << 20


def test_a_known_member_that_inflates_past_the_file_is_refused(rng, tmp_path):
    good = tmp_path / "good.npz"
    trained({}, (8, 3), rng).save(good)
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["config"] = np.array(" " * (100 << 20) + json.dumps(json.loads(str(arrays["config"]))))
    path = tmp_path / "deflated.npz"
    np.savez_compressed(path, **arrays)
    with pytest.raises(ValueError, match="claims .* bytes"):
        numbabn.load(path)


CORRUPT = {
    "plain-npy": None,
    "config-list": dict(config=np.array("[1, 2]")),
    "config-unknown-key": dict(config=np.array('{"name": "bn", "bogus": 1}')),
    "config-deep": dict(config=np.array("[" * 100000 + "]" * 100000)),
    "spec-without-dims": dict(input_spec=np.array('{"ndim": 2}')),
    "spec-dims-list": dict(input_spec=np.array('{"ndim": 2, "dims": [3]}')),
    "spec-bad-axis": dict(input_spec=np.array('{"ndim": 2, "dims": {"7": 3}}')),
    "spec-negative": dict(input_spec=np.array('{"ndim": 2, "dims": {"1": -3}}')),
    "format-list": dict(format=np.array([1, 1])),
    "format-text": dict(format=np.array("1")),
    "class-name-number": dict(class_name=np.array(3)),
    "config-number": dict(config=np.array(3)),
    "names-0d": dict(weight_names=np.array("gamma")),
    "string-weight": dict(w0=np.array(["a", "b", "c"])),
    "weight-missing": dict(w3=None),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_files_are_value_errors_naming_the_file(case, rng, tmp_path):
    good = tmp_path / "good.npz"
    trained({}, (8, 3), rng).save(good)
    path = tmp_path / f"{case}.npz"
    if CORRUPT[case] is None:
        np.save(path, np.ones(3))
        path = path.with_suffix(".npz.npy") if not path.exists() else path
    else:
        _rewrite(good, path, **CORRUPT[case])
    with pytest.raises(ValueError, match=re.escape(repr(str(path)))):
        numbabn.load(path)


def _npy_with_header(header):
    """The bytes of a .npy member whose header is the dict literal ``header`` and no data."""
    text = header.encode("latin1")
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _zip_like(good, path, replace=None, compression=zipfile.ZIP_STORED):
    """A copy of the npz ``good`` with members replaced by raw bytes, written with
    ``compression``."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", compression) as dst:
        for info in src.infolist():
            data = (replace or {}).get(info.filename, src.read(info))
            dst.writestr(info.filename, data)


def test_more_crafted_files_are_value_errors_naming_the_file(rng, tmp_path):
    good = tmp_path / "good.npz"
    trained({}, (8, 3), rng).save(good)
    cases = {}
    _zip_like(good, tmp_path / "bzip2.npz", compression=zipfile.ZIP_BZIP2)
    cases["bzip2.npz"] = "compressed with method 12"
    _zip_like(good, tmp_path / "huge-dim.npz", {"w0.npy": _npy_with_header(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551616, 0), }")})
    cases["huge-dim.npz"] = "not what it holds"
    _rewrite(good, tmp_path / "no-names.npz", weight_names=np.array([], dtype=str),
             w0=None, w1=None, w2=None, w3=None,
             input_spec=np.array(json.dumps({"ndim": 2, "dims": {"1": 4_000_000}})))
    cases["no-names.npz"] = "no weights"
    with np.load(good) as data:
        config = json.loads(str(data["config"]))
    _rewrite(good, tmp_path / "overflow.npz",
             config=np.array(json.dumps(config).replace('"momentum": 0.99', '"momentum": ' +
                                                        "9" * 400)))
    cases["overflow.npz"] = "configuration"
    _rewrite(good, tmp_path / "superscript.npz",
             input_spec=np.array(json.dumps({"ndim": 2, "dims": {"\u00b2": 3}})))
    cases["superscript.npz"] = "feature axis"
    for name, why in cases.items():
        path = tmp_path / name
        peak = _peak_bytes(lambda: pytest.raises(ValueError, numbabn.load, path))
        with pytest.raises(ValueError, match=re.escape(repr(str(path))) + ".*" + why):
            numbabn.load(path)
        assert peak < 8 << 20, name

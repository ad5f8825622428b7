"""Saving and loading layers (``BatchNormalization.save`` / ``numbabn.load``).

A saved layer is one ``.npz`` file (NumPy's zip of arrays) holding the layer's configuration as
JSON, the shape it was built for, and its weights in Keras order. Nothing in it is pickled: it is
read with ``allow_pickle=False``, so loading a file cannot run code. It is written to a temporary
file beside the target and renamed over it once complete, so a crash leaves either the old file
or the new one, never half of one.
"""
import io
import json
import math
import os
import tempfile
import zipfile
import zlib

import numpy as np

__all__ = ["save", "load"]

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
    """Write ``layer`` (built or not) to ``path`` atomically (:meth:`BatchNormalization.save`)."""
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


def load(path, cls):
    """Read the ``cls`` layer saved at ``path``; see :func:`numbabn.load`.

    ``cls`` is the layer class (passed in, so that this module does not import the layer); the
    file must hold a layer of that class.
    """
    path = os.fspath(path)
    with _Reader(path) as reader:
        return _load(reader, path, cls)


def _load(reader, path, cls):
    contents = reader.read(_KEYS)
    fmt = contents["format"]
    if fmt.ndim != 0 or fmt.dtype.kind not in "iu":
        reader.fail(f"its format is not a number ({fmt.dtype}, shape {fmt.shape})")
    if int(fmt) != FORMAT:
        raise ValueError(f"{path!r} has format {int(fmt)}; this numbabn reads format {FORMAT}")
    class_name = reader.text(contents, "class_name")
    if class_name != cls.__name__:
        raise ValueError(f"{path!r} holds a {class_name}, not a {cls.__name__}")
    config = reader.json(contents, "config")
    spec = reader.json(contents, "input_spec")
    if not isinstance(config, dict):
        reader.fail(f"its configuration is a {type(config).__name__}, not a dict")
    try:
        layer = cls.from_config(config)
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError,
            OverflowError) as err:
        reader.fail(f"its configuration is not that of a layer ({type(err).__name__}: {err})")
    if spec is None:
        return layer
    shape = _checked_spec(reader, spec)
    names = contents["weight_names"]
    if names.ndim != 1 or names.dtype.kind != "U":
        reader.fail(f"its weight names are not a list of strings ({names.dtype}, shape "
                    f"{names.shape})")
    names = [str(n) for n in names]
    if not names:
        reader.fail("it stores an input shape but no weights")
    # every weight holds one value per feature: check the stored weights' shapes before
    # building allocates anything of the size the specification claims
    features = math.prod(shape[a] for a in range(len(shape)) if shape[a] is not None and
                         a in {int(k) for k in spec["dims"]})
    headers = reader.headers([f"w{i}" for i in range(len(names))])
    for i, (name, (w_shape, w_dtype)) in enumerate(zip(names, headers)):
        if math.prod(w_shape) != features or w_dtype.kind != "f":
            reader.fail(f"weight {name!r} has shape {w_shape} and dtype {w_dtype}, where the "
                        f"stored input shape needs {features} floating values")
    try:
        layer.build(shape)
    except (TypeError, ValueError) as err:
        reader.fail(f"its input shape does not fit its configuration ({err})")
    expected = [w.name.split("/")[-1] for w in layer.weights]
    if [n.split("/")[-1] for n in names] != expected:
        raise ValueError(f"{path!r} does not match its configuration: weights {names}, "
                         f"the layer has {expected}")
    weights = list(reader.read([f"w{i}" for i in range(len(names))]).values())
    layer.set_weights(weights)
    return layer


def _checked_spec(reader, spec):
    """The input shape of a stored input specification ``{"ndim": n, "dims": {axis: size}}``."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)
    if not (isinstance(spec, dict) and is_int(spec.get("ndim")) and 0 < spec["ndim"] <= 64
            and isinstance(spec.get("dims"), dict)):
        reader.fail(f"its input specification is not {{'ndim': int, 'dims': dict}}: {spec!r:.200}")
    ndim, dims = spec["ndim"], {}
    for axis, size in spec["dims"].items():
        if not (isinstance(axis, str) and axis.isascii() and axis.isdigit() and int(axis) < ndim
                and is_int(size) and size >= 0):
            reader.fail(f"its input specification has a bad feature axis {axis!r}: {size!r}")
        dims[int(axis)] = size
    return tuple(dims.get(a) for a in range(ndim))


class _Reader:
    """Reads the members of a layer file that :func:`load` asks for, and nothing else.

    A member is read only after its declared uncompressed size passed a bound (the file's own
    size, with room for compression), and an array only after its header says it is a plain
    array of no more values than its member holds; unknown members are never read. Every
    problem is a ``ValueError`` that names the file.
    """

    HEADROOM = 1 << 16

    def __init__(self, path):
        self.path = path
        try:
            size = os.path.getsize(path)
            self.zip = zipfile.ZipFile(path)
            self.members = {info.filename: info for info in self.zip.infolist()}
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path!r} is not a readable numbabn layer file: {err}") from err
        # np.savez stores members uncompressed; allow a compressed file a generous ratio, for
        # all the members read together
        self.limit = 64 * size + self.HEADROOM
        self._data = {}                  # members read so far, by key
        self._read = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def fail(self, why):
        raise ValueError(f"{self.path!r} is not a valid numbabn layer file: {why}")

    CHUNK = 1 << 20

    def _member(self, key):
        if key in self._data:
            return self._data[key]
        info = self.members.get(f"{key}.npy")
        if info is None:
            raise ValueError(f"{self.path!r} is not a numbabn layer file: missing [{key!r}]")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            self.fail(f"member {key!r} is compressed with method {info.compress_type} (numbabn "
                      "reads stored and deflated members)")
        if info.file_size > self.limit - self._read:
            self.fail(f"member {key!r} claims {info.file_size} bytes, more than a file of this "
                      "size can hold")
        # read in bounded chunks: a size that lies cannot make the inflater produce more
        chunks, total = [], 0
        try:
            with self.zip.open(info) as member:
                while True:
                    chunk = member.read(self.CHUNK)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > info.file_size:
                        self.fail(f"member {key!r} holds more than the {info.file_size} bytes "
                                  "it declares")
                    chunks.append(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError,
                zlib.error) as err:   # RuntimeError: an encrypted member
            raise ValueError(f"{self.path!r} is not a readable numbabn layer file: {err}") from err
        data = self._data[key] = b"".join(chunks)
        self._read += len(data)
        return data

    def _header(self, key, data):
        stream = io.BytesIO(data)
        try:
            version = np.lib.format.read_magic(stream)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(stream)
        except (ValueError, SyntaxError, TypeError, EOFError) as err:
            self.fail(f"member {key!r} is not a NumPy array ({err})")
        if dtype.hasobject or dtype.kind not in "biufU":
            self.fail(f"member {key!r} holds {dtype}, not numbers or text")
        if any(d < 0 or d > len(data) for d in shape) or (
                math.prod(shape) * dtype.itemsize != len(data) - stream.tell()):
            self.fail(f"member {key!r} claims shape {shape} of {dtype}, not what it holds")
        return shape, dtype

    def headers(self, keys):
        """``(shape, dtype)`` of each member, checked, without reading its values."""
        return [self._header(key, self._member(key)) for key in keys]

    def read(self, keys):
        """The arrays of ``keys``, by key."""
        out = {}
        for key in keys:
            data = self._member(key)
            self._header(key, data)
            try:
                out[key] = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
            except (ValueError, EOFError, OSError) as err:
                self.fail(f"member {key!r} is corrupt ({err})")
        return out

    def text(self, contents, key):
        value = contents[key]
        if value.ndim != 0 or value.dtype.kind != "U":
            self.fail(f"its {key} is not a string ({value.dtype}, shape {value.shape})")
        return str(value)

    def json(self, contents, key):
        try:
            return json.loads(self.text(contents, key))
        except (ValueError, RecursionError) as err:      # JSONDecodeError, huge integers
            self.fail(f"its {key} is not valid JSON ({type(err).__name__}: {err})")

"""Importing numbabn is cheap: no kernel compiles until it is first used, the command-line
tools (``numbabn.tools``) are not imported, and the first step imports nothing beyond what
Numba's own first kernel load does."""
import ast
import pathlib
import subprocess
import sys
import textwrap


def test_import_compiles_nothing():
    code = textwrap.dedent("""
        import sys
        import numba.core.registry
        import numbabn
        tools = [name for name in sys.modules if name.startswith("numbabn.tools")]
        assert tools == [], tools
        from numbabn.cpu import kernels
        from numba.core.dispatcher import Dispatcher
        compiled = [name for name, f in vars(kernels).items()
                    if isinstance(f, Dispatcher) and f.signatures]
        assert compiled == [], compiled
        assert sum(isinstance(f, Dispatcher) for f in vars(kernels).values()) >= 10
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _modules_after(code):
    """The names in ``sys.modules`` of a fresh interpreter that ran ``code``."""
    code += "\nimport sys\nprint(*sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


FIRST_STEP = """
import numpy as np
import numbabn
layer = numbabn.BatchNormalization()
dx = layer.backward(layer(np.ones((256, 64), np.float32), training=True))
"""
# Numba's first kernel load in a process initializes its CPU target, whatever the kernel: that
# imports numba.np.arraymath, which probes for SciPy's BLAS (docs/performance.md, "Start-up").
ONE_KERNEL = """
import numpy as np
from numbabn.cpu import kernels
kernels.any_nan(np.zeros((1, 64)))
"""


def test_first_step_imports_no_package_that_numbas_first_kernel_does_not():
    _modules_after(FIRST_STEP)               # every kernel the step uses is now in the disk cache
    imported = _modules_after("import numbabn")
    assert "numba.np.arraymath" not in imported      # importing does not start Numba's target
    assert "scipy.linalg" not in imported
    numba_alone = _modules_after(ONE_KERNEL)
    step = _modules_after(FIRST_STEP)
    # (Numba's and llvmlite's own modules may differ where the cache cannot be written and the
    # step compiles more than the one kernel)
    extra = {m for m in step - numba_alone
             if m.split(".")[0] not in ("numbabn", "numba", "llvmlite")}
    assert not extra
    assert not [m for m in step if m.startswith(("numba.cuda", "numbabn.cuda"))]


def _imports_within(package_dir):
    """``{module: modules of the package it imports}``, counting imports inside functions too."""
    root = pathlib.Path(package_dir)
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                    if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = {f"{target}.{a.name}" for a in node.names} & names.keys()
                found |= subs or {target}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = (found & names.keys()) - {name}
    return graph


def test_modules_import_one_way():
    # A cycle hidden by an import inside a function still counts: data and imports flow from
    # the package and the layer down to the kernels, never back.
    import numbabn
    graph = _imports_within(numbabn.__path__[0])
    assert {"numbabn.layer", "numbabn.persistence", "numbabn.variable",
            "numbabn.keras.interchange"} <= graph.keys()
    assert "numbabn.persistence" in graph["numbabn.layer"]

    def cycle_from(start, node, path):
        for nxt in sorted(graph[node]):
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(start, nxt, path + [nxt])
                if found:
                    return found
        return None
    for name in sorted(graph):
        assert cycle_from(name, name, [name]) is None, " -> ".join(cycle_from(name, name, [name]))

"""Importing numbabn is cheap: no kernel compiles until it is first used."""
import subprocess
import sys
import textwrap


def test_import_compiles_nothing():
    code = textwrap.dedent("""
        import numba.core.registry
        import numbabn
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


def _imports_within(package_dir):
    """``{module: modules of the package it imports}``, counting imports inside functions too."""
    import ast
    import pathlib
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

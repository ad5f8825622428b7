"""Importing numbabn is cheap: no kernel compiles until it is first used, and the command-line
tools (``numbabn.tools``) are not imported."""
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

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

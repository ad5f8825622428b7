"""Command line: ``python -m numbabn COMMAND [options]``.

Each command lives in its own module of :mod:`numbabn.tools`, which provides
``add_arguments(parser)`` and ``run(args) -> exit status``; adding a command means adding a line
to ``COMMANDS``. A module may also define ``DESCRIPTION`` for its ``--help``. The modules are
imported to build the parser, so they must not import optional packages at top level.
"""
import argparse
import importlib
import sys

from . import __version__

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("numbabn.tools.demo",
             "train a small MLP on handwritten digits with and without batch normalization"),
    "bench": ("numbabn.tools.bench",
              "time the layer against a memory roofline, NumPy, PyTorch, TF"),
    "loop": ("numbabn.tools.loopbench",
             "time training steps of NumPy networks, against PyTorch eager"),
    "selftest": ("numbabn.tools.selftest",
                 "check the CUDA engine on this GPU, time it against cuDNN"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m numbabn",
        description="numbabn: batch normalization on Numba CPU kernels.")
    parser.add_argument("--version", action="version", version=f"numbabn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name, help=help_text, description=getattr(module, "DESCRIPTION", help_text),
            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

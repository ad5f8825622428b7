"""Helpers shared by the ``python -m numbabn`` commands: a progress bar and argument types."""
import argparse
import sys
import time


def positive_int(text):
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


class ProgressBar:
    """A one-line progress bar, redrawn in place on ``stream`` (stderr by default).

    It redraws at every percent on a terminal, every 10 percent otherwise (a log file).
    """

    def __init__(self, total, stream=None, width=30):
        self.total, self.width = max(total, 1), width
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.resolution = 100 if isatty() else 10
        self.start = time.perf_counter()
        self.last = None

    def update(self, done, label=""):
        frac = min(done / self.total, 1.0)
        state = (int(frac * self.resolution), label)
        if state == self.last:
            return
        self.last = state
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r[{bar}] {frac:4.0%} {elapsed:5.1f}s  {label:<24}")
        self.stream.flush()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()

"""Holding Ctrl-C (SIGINT) back while a call commits several weights.

A ``KeyboardInterrupt`` is raised between any two Python bytecodes of the main thread. A commit
that updates several weights one after another (renorm's five statistics) could then stop half
way; inside :func:`deferred` the signal is recorded instead, and delivered once the block is
done, so an interrupted call leaves the old state or the new one. Other threads never receive
``KeyboardInterrupt``, so only the main thread needs it.
"""
import contextlib
import os
import signal
import threading


@contextlib.contextmanager
def deferred():
    """Run the block with SIGINT held; deliver a SIGINT that arrived meanwhile at its end."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is None):   # a handler not set from Python
        yield
        return
    pending = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(frame))
    except (ValueError, TypeError):      # an embedded interpreter that owns the handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            if callable(previous):       # default_int_handler raises KeyboardInterrupt here
                previous(signal.SIGINT, pending[0])
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)

"""Process pools whose workers die with their parent (a ``kill -9`` of a stage leaves no orphans).

Each worker asks Linux to send it SIGKILL when its parent dies (``PR_SET_PDEATHSIG``) and, on any
platform, runs a daemon thread that exits the worker once its parent pid changes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1
POLL_S = 1.0


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)  # parent gone: nothing to report to
        time.sleep(POLL_S)


def die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when process ``parent`` is gone."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread still watches
            pass
    if os.getppid() != parent:  # the parent died before this worker armed the signal
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


def pool(workers: int) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes that die with this one."""
    return ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),))

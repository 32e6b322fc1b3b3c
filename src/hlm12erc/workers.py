"""Processes that die with their parent: a ``kill -9`` of ``dvc`` or of a stage leaves no orphans.

Each pool worker asks Linux to send it SIGKILL when its parent dies (``PR_SET_PDEATHSIG``) and, on
any platform, runs a daemon thread that exits the worker once its parent pid changes. A stage
script calls :func:`end_with_parent` first: the same two guards, but with SIGTERM turned into
``SystemExit``, so its ``finally`` blocks remove what it was writing before it ends.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

_PR_SET_PDEATHSIG = 1
POLL_S = 1.0


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)  # parent gone: nothing to report to
        time.sleep(POLL_S)


def _signal_on_parent_death(signum: int, parent: int) -> bool:
    """Ask Linux to send ``signum`` when the parent dies; False if ``parent`` is already gone (a thread
    watches too, for platforms without ``prctl``)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread still watches
            pass
    return os.getppid() == parent


def die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when process ``parent`` is gone."""
    if not _signal_on_parent_death(signal.SIGKILL, parent):  # died before this worker armed the signal
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


_ending = threading.Event()  # set once SIGTERM has started the cleanup


def _exit_on_sigterm(signum: int, frame: object) -> None:
    _ending.set()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM (the user's) ends it at once
    raise SystemExit(128 + signum)


def _reraise_swallowed_exit(unraisable: object, previous: Callable[[object], object]) -> None:
    """The SIGTERM's SystemExit, raised inside a weakref callback or a ``__del__``, is swallowed by Python
    ("Exception ignored in ...") and the stage would run on: signal it again, to land in ordinary code."""
    if isinstance(getattr(unraisable, "exc_value", None), SystemExit) and _ending.is_set():
        _ending.clear()
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        # from another thread: sent from here, the handler would run (and be swallowed) inside this hook
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return
    previous(unraisable)


def _signal_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    if not _ending.is_set():  # PDEATHSIG may have started the cleanup already: let it finish
        os.kill(os.getpid(), signal.SIGTERM)  # the main thread runs the handler


def end_with_parent() -> None:
    """A stage script: exit (``SystemExit(143)``, cleanup included) on SIGTERM and when its parent dies.

    ``dvc repro`` runs each stage as ``$SHELL -c CMD``; the shell execs the one command, so the
    parent is dvc. Without this, a ``kill -9`` of dvc leaves the stage writing its outputs while the
    user's next ``dvc repro`` starts.
    """
    parent = os.getppid()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: _reraise_swallowed_exit(unraisable, previous)
    if not _signal_on_parent_death(signal.SIGTERM, parent):  # pragma: no cover - died before the signal was armed
        raise SystemExit(128 + signal.SIGTERM)
    threading.Thread(target=_signal_when_orphaned, args=(parent,), daemon=True, name="watch-parent").start()


def pool(workers: int) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes that die with this one."""
    return ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),))


def write_aside(dest: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """``write(folder)`` into a sibling ``.NAME.part`` folder that then replaces ``dest``: a process
    killed mid-write leaves the previous folder (or none), never half of one."""
    dest = Path(dest)
    part, old = dest.with_name(f".{dest.name}.part"), dest.with_name(f".{dest.name}.old")
    for stale in (part, old):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        write(part)
        if dest.exists():
            os.replace(dest, old)
        os.replace(part, dest)
    finally:
        shutil.rmtree(part, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)

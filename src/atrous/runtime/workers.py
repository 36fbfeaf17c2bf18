"""Data-loading worker processes that never outlive their run and whose errors read as one line.

Workers ignore the stop signals (:func:`~atrous.runtime.preemption.ignore_stop_signals`): the main
process decides when to stop, and a scheduler's SIGTERM to every process of the job must not fail
the step that has to finish. The price is that Python's own exit, which ends daemonic children
with SIGTERM and then waits for them without a limit, would wait forever when a run ends while
workers are still alive (an error raised in a worker leaves them so). :func:`loader_workers`
therefore registers, once, an exit hook that runs before Python's and does what Python does to
daemonic children, SIGTERM, then kills those still alive a second later (loader workers only read
data; nothing of theirs needs saving).

A worker's exception reaches the main process as the same type with the worker's whole traceback
as its message; :func:`worker_errors` turns it back into its own message, naming the worker, and
keeps the original (with the traceback) as the cause for ``--debug``.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers Python's exit hook for children now, before ours
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from atrous.runtime.preemption import ignore_stop_signals

T = TypeVar("T")

#: Seconds a daemonic child has to end on SIGTERM at exit before it is killed.
GRACE_SECONDS = 1.0
#: What PyTorch's DataLoader puts before a worker's traceback in the exception it re-raises.
_WORKER_MARK = "in DataLoader worker process"
_TRACEBACK_HEADER = "Traceback (most recent call last):\n"

_hook_registered = False


def end_daemonic_children(grace: float = GRACE_SECONDS) -> int:
    """What Python does to daemonic children at exit (SIGTERM), then SIGKILL for those still
    alive after ``grace`` seconds (loader workers ignore SIGTERM); return how many were killed.

    PyTorch's SIGCHLD handler, which raises when a worker dies by a signal, is reset first:
    at exit that death is the point."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = [p for p in multiprocessing.active_children() if p.daemon]
    for process in children:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in children:
        process.join(max(0.0, deadline - time.monotonic()))
    stubborn = [p for p in children if p.is_alive()]
    for process in stubborn:
        process.kill()
        process.join(grace)
    return len(stubborn)


def _register_exit_hook() -> None:
    """Once per process: kill leftover workers at exit, before multiprocessing's own exit hook
    (hooks run last-registered first; importing ``multiprocessing.util`` above registered it)."""
    global _hook_registered
    if not _hook_registered:
        atexit.register(end_daemonic_children)
        _hook_registered = True


def loader_workers(workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments for ``workers`` processes: they ignore stop signals and are
    ended when this process exits, whatever ended it."""
    if workers <= 0:
        return {"num_workers": 0}
    _register_exit_hook()
    return {"num_workers": workers, "worker_init_fn": ignore_stop_signals}


def worker_message(error: BaseException) -> str | None:
    """The original message of an exception a DataLoader worker raised (its traceback left
    out), or None when ``error`` did not come from a worker."""
    text = str(error)
    if _WORKER_MARK not in text or _TRACEBACK_HEADER not in text:
        return None
    last = text.rsplit(_TRACEBACK_HEADER, 1)[1]
    lines = last.splitlines()
    while lines and (not lines[0] or lines[0][0].isspace()):  # the frames, indented
        lines = lines[1:]
    original = "\n".join(lines).strip()
    kind, separator, message = original.partition(": ")
    if separator and kind.rsplit(".", 1)[-1] == type(error).__name__:
        original = message
    return original or type(error).__name__


def worker_errors(items: Iterable[T]) -> Iterator[T]:
    """``items`` as they come; an exception from a loader worker is raised again as its own
    type with its own message ("in a data-loading worker: …"), the worker's traceback kept as
    the cause (a type that cannot be built from a message is raised as it came)."""
    try:
        yield from items
    except Exception as error:
        message = worker_message(error)
        if message is None:
            raise
        try:
            clean = type(error)(f"in a data-loading worker: {message}")
        except Exception:
            raise error from None
        raise clean from error

"""Stopping on request: SIGTERM, SIGINT and SIGUSR1 end training cleanly after the current step.

Schedulers announce preemption with a signal (SLURM and Kubernetes send SIGTERM, SLURM's
``--signal`` often SIGUSR1; Ctrl-C is SIGINT). :class:`StopSignals` records the request instead of
dying; the training loop finishes its optimizer step, writes ``last.pt`` and exits with
:data:`PREEMPTED_EXIT_CODE`, and the same command resumes there. A second signal of the same kind
acts as if no handler were installed (a second Ctrl-C interrupts at once).

Under ``torchrun`` a signal may reach one process only (a node-local agent, a ``kill`` by hand):
:func:`agree_to_stop` reduces the flag over all processes after each step, one scalar, so every
rank stops at the same iteration.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

import torch
import torch.distributed as dist

#: Exit status of a run that stopped on a signal and can be resumed (sysexits' EX_TEMPFAIL:
#: "a temporary failure; the user is invited to retry").
PREEMPTED_EXIT_CODE = 75
#: The signals that ask a run to stop after its current step.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignals:
    """While active (a ``with`` block), STOP_SIGNALS set :attr:`received` instead of ending the
    process. Outside the main thread, where Python cannot install handlers, it does nothing."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None:  # asked twice: behave as without us
            signal.signal(number, self._previous.get(number, signal.SIG_DFL))
            signal.raise_signal(number)
            return
        self.received = signal.Signals(number).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """Data-loading workers ignore STOP_SIGNALS: the main process decides when to stop, and a
    worker killed by the scheduler's SIGTERM would fail the step that has to finish."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def agree_to_stop(requested: bool, device: torch.device) -> bool:
    """True when any process asked to stop (one all-reduce of a scalar; local when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return requested
    flag = torch.tensor([int(requested)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())

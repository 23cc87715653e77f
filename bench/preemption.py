"""SIGTERM / SIGUSR2, what SLURM sends before preemption or a time limit: the running job
finishes its current step, writes a checkpoint and stops with :class:`Preempted`, so a rerun
(or a requeue) resumes from there instead of from scratch."""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class Preempted(Exception):
    """A stop signal arrived; the job checkpointed and stopped. Rerun to resume.
    ``signum`` is the signal (a submitted job hands it on to submitit's requeue handler)."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Context manager: while active, SIGTERM/SIGUSR2 only set ``requested``; the previous
    handlers come back on exit. Outside the main thread it does nothing (signals cannot be
    handled there)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum).name
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def poll(self) -> str | None:
        """What asked the loop to stop (a signal's name), or None; asked once per step."""
        return self.requested

    def check(self, where: str) -> None:
        """Raise :class:`Preempted` if a signal arrived (call after checkpointing)."""
        if self.requested:
            raise Preempted(f"{self.requested} received; checkpoint written {where}", self.signum)


class StopAtStep(StopSignals):
    """:class:`StopSignals` that also stops by itself during the ``step``-th optimisation
    step (1-based) after it is entered, exactly as a SIGTERM arriving in that step would:
    how ``bench check-method`` interrupts a run mid-epoch without sending signals."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self._steps = step, 0

    def poll(self) -> str | None:
        self._steps += 1
        if self._steps == self.step and self.requested is None:
            self.requested = f"the stop at step {self.step}"
        return self.requested

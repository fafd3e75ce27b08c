"""SIGTERM / SIGINT / SIGHUP during a run: stop it, record it as KILLED with its reason, exit 128 + signal.

SIGHUP (the terminal or SSH session closed) is handled like SIGTERM, unless the process started
with it ignored (``nohup``): then it stays ignored and the run goes on. SIGINT is handled even
where the process started with it ignored (a script's background job, ``cmd &``, inherits it
so): a ``kill -INT`` or Ctrl-C then stops the run as SIGTERM does, during a sweep's cells and
between them alike.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

log = logging.getLogger(__name__)


def _stop_signals() -> tuple[int, ...]:
    """SIGTERM, SIGINT, and SIGHUP unless this process started with it ignored (``nohup``)."""
    handled = [signal.SIGTERM, signal.SIGINT]
    hangup = getattr(signal, "SIGHUP", None)  # POSIX only
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        handled.append(hangup)
    return tuple(handled)


HANDLED = _stop_signals()


class Stopped(BaseException):
    """The process received a stop signal; a BaseException so ``except Exception`` lets it pass."""

    def __init__(self, signum: int):
        from embclust import processes

        self.signum = signum
        self.name = signal.Signals(signum).name
        # a joblib worker stops itself with SIGTERM when the sweep that started it is gone
        why = " (the sweep process that started this worker is gone)" if processes.parent_gone else ""
        super().__init__(f"stopped by {self.name}{why}")

    @property
    def exit_code(self) -> int:
        """Shell convention for a process ended by a signal: 128 + its number (130, 143)."""
        return 128 + self.signum


# The first stop signal this process received (None: none). A sweep reads it after its cells:
# a stopped sweep is not summarised, whoever caught the exception on the way.
received: Stopped | None = None


# A stop raised where Python could not raise it (a finaliser, a garbage-collector callback, a
# ctypes callback such as numba's while it compiles): it is printed as "Exception ignored" and
# lost, so it is kept here, the signal is sent again so that its handler raises it in the next
# ordinary Python code, and else it is raised at the next checkpoint.
_swallowed: Stopped | None = None
_previous_unraisablehook = sys.unraisablehook


_in_hook = False


def _keep_swallowed_stop(unraisable) -> None:
    global _swallowed, _in_hook
    if isinstance(unraisable.exc_value, Stopped):
        _swallowed = unraisable.exc_value
        if signal.getsignal(_swallowed.signum) is _raise_stopped:  # inside stop_on_signals
            # Signalled again from a thread once this hook has returned: a handler run inside the
            # hook could not raise either.
            _in_hook = True
            threading.Thread(target=_signal_again_after_hook, args=(_swallowed.signum,), daemon=True).start()
            _in_hook = False
        return
    _previous_unraisablehook(unraisable)


def _signal_again_after_hook(signum: int) -> None:
    import time

    while _in_hook:
        time.sleep(0.001)
    # To the main thread, which a signal also wakes from a sleep or a wait; not where the block
    # has ended meanwhile (the stop is then raised at the next checkpoint).
    if signal.getsignal(signum) is _raise_stopped:
        signal.pthread_kill(threading.main_thread().ident, signum)


sys.unraisablehook = _keep_swallowed_stop


def checkpoint() -> None:
    """Raise a stop that arrived where it could not be raised; called where each stage starts."""
    global _swallowed
    if _swallowed is not None:
        stopped, _swallowed = _swallowed, None
        raise stopped


def _raise_stopped(signum, frame):
    global _swallowed
    _swallowed = None  # this raise supersedes a kept one (if it is swallowed too, it is kept again)
    raise note_stop(signum)


def note_stop(signum: int) -> Stopped:
    """Record that a stop signal arrived (the first one is kept) and return it as :class:`Stopped`."""
    global received
    stopped = Stopped(signum)
    if received is None:
        received = stopped
    return stopped


# A SIGINT that arrived during start-up, before embclust's handlers (see catch_early_interrupt).
_early: Stopped | None = None


def _note_early(signum, frame):  # noqa: ARG001
    global _early
    if _early is None:
        _early = Stopped(signum)


_note_early.embclust_early = True


def catch_early_interrupt() -> None:
    """Keep a SIGINT that arrives while the process starts (imports, Hydra's set-up). Call it
    first thing; the first :func:`stop_on_signals` block (or a sweep's handlers,
    :func:`take_early_stop`) raises it, so the process ends "stopped by SIGINT" with status 130.

    Started with SIGINT ignored (a script's background job), the signal would otherwise be
    dropped and the run go on; with Python's own handler, the KeyboardInterrupt raised inside an
    import printed a traceback of the libraries, or was lost where it landed in a lock's callback
    ("Exception ignored in ... _get_module_lock") and the run went on to finish with status 0."""
    if _main() and signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.default_int_handler):
        signal.signal(signal.SIGINT, _note_early)
    if _main():
        for signum in HANDLED:
            if signum != signal.SIGINT and signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _exit_early)


def _exit_early(signum, frame):  # noqa: ARG001
    """SIGTERM or SIGHUP before a run exists (imports, the store, a sweep's data): nothing to close, so
    end at once, as the default action would, but with a line that says why."""
    os.write(2, f"stopped by {signal.Signals(signum).name} while starting: no run was made\n".encode())
    os._exit(128 + signum)


_exit_early.embclust_early = True


def take_early_stop() -> Stopped | None:
    """The stop :func:`catch_early_interrupt` kept, recorded as :data:`received` (once), else None."""
    global _early
    stopped, _early = _early, None
    if stopped is not None:
        note_stop(stopped.signum)
    return stopped


@contextmanager
def stop_on_signals():
    """Turn the stop signals (:data:`HANDLED`) into :class:`Stopped` inside the block; restore the old
    handlers after.

    Outside the main thread (where Python cannot install handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in HANDLED}
    try:
        early = take_early_stop()
        if early is not None:
            raise early
        yield
    finally:
        for sig, handler in previous.items():  # once a run existed, "while starting" no longer holds
            signal.signal(sig, signal.SIG_DFL if handler is _exit_early else handler)


@contextmanager
def deferred():
    """Hold the stop signals (:data:`HANDLED`) until the block ends (they are delivered then), on the
    main thread.

    For steps that must not be cut in two, such as creating a run and setting up what closes it.
    The block gets a function that delivers them early, from inside the code that handles them.
    A signal that arrives meanwhile is noted by a holding handler and raised again, once, for the
    handlers that were in place (a thread's signal mask would not do: any thread may receive it).
    Off the main thread, where Python cannot install handlers, the block runs unchanged.
    """
    if not _main():
        yield lambda: None
        return
    pending: list[int] = []

    def hold(signum, frame):  # noqa: ARG001
        if signum not in pending:
            pending.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in HANDLED}
    released = False

    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in pending:
            signal.raise_signal(sig)

    try:
        yield release
    finally:
        release()


@contextmanager
def ignored():
    """Ignore the stop signals (:data:`HANDLED`) inside the block (on the main thread): a second
    signal while a stop is being recorded must not leave a run RUNNING."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in HANDLED} if _main() else {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def end_run_killed(stopped: Stopped, prefix: str = "") -> None:
    """End the active MLflow run as KILLED with the reason in tag ``error`` and say so in one line."""
    import mlflow

    with ignored():
        run = mlflow.active_run()
        if run is not None:
            mlflow.set_tag("error", str(stopped))
            mlflow.end_run(status="KILLED")
            log.error("%srun %s KILLED: %s", prefix, run.info.run_id, stopped)
        else:
            log.error("%s%s", prefix, stopped)


def _main() -> bool:
    return threading.current_thread() is threading.main_thread()

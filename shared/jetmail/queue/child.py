"""Some of a worker's queues in a child process of its own, started, watched and stopped by the worker.

``jetmail worker`` runs the transactional queue this way when it is given other queues too: a password reset
then never waits in an event loop, or for the interpreter lock, behind a campaign's renders and sends in the
same process (docs/PERFORMANCE.md). The child is an ordinary ``jetmail worker`` for those queues:

- it runs in a session of its own, so a signal meant for the worker's process group reaches it once, from
  the worker: SIGTERM (or SIGINT) to the worker stops the child the same way, both finishing their running
  jobs within the grace period;
- when it exits with an error or a signal, the worker logs it and starts it again (1 s, then doubling up to
  30 s between attempts), and the worker's ``/healthz`` answers 503 while it is down;
- when it stops cleanly on its own (someone stopped it), the worker stops too, so the orchestrator replaces
  both;
- when the worker itself dies without stopping it (SIGKILL, OOM), the child notices within a second
  (``watch_parent``) and stops as on SIGTERM;
- the worker then lowers its own CPU priority (``lower_priority``, ``jetmail worker --nice``), the child's
  stays, so on a busy machine the scheduler runs a reset's work before a campaign's.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

_FIRST_DELAY_S = 1.0
_MAX_DELAY_S = 30.0
_STEADY_S = 60.0  # a child that ran this long before failing starts again after the first delay
_PARENT_POLL_S = 1.0


class ChildWorker:
    """Runs ``argv`` (a ``jetmail worker`` command line) until ``terminate``; restarts it when it fails."""

    def __init__(self, argv: Sequence[str], *, name: str, burst: bool = False,
                 on_clean_exit: Callable[[], None] | None = None) -> None:
        self.argv = list(argv)
        self.name = name
        self.burst = burst
        self.on_clean_exit = on_clean_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name=f"child-{name}", daemon=True)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM: it finishes its running jobs) and start no other; returns at once."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            log.info("stopping the %s process (pid %d)", self.name, proc.pid)
            proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None, *, terminate: bool = True) -> int | None:
        """Wait up to ``timeout`` for the child to exit (after asking it to, unless ``terminate`` is False), then
        kill it; its exit code (None when none ran)."""
        if terminate:
            self.terminate()
        proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("the %s process did not stop within %.0fs; killing it", self.name, timeout)
            proc.kill()
            return proc.wait()

    def _spawn(self) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            # a session of its own: a signal to the worker's process group (a terminal's Ctrl-C, a supervisor's
            # killpg) reaches the child once, forwarded by the worker, instead of twice (a second SIGTERM
            # would end its running jobs without waiting for them)
            self._proc = subprocess.Popen(self.argv, start_new_session=True)
        log.info("started the %s process (pid %d)", self.name, self._proc.pid)
        return True

    def _supervise(self) -> None:
        delay = _FIRST_DELAY_S
        while True:
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            if code == 0:
                if not self.burst:
                    log.warning("the %s process (pid %d) stopped on its own; stopping the worker",
                                self.name, proc.pid)
                    if self.on_clean_exit is not None:
                        self.on_clean_exit()
                return
            if time.monotonic() - started >= _STEADY_S:
                delay = _FIRST_DELAY_S
            reason = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.error("the %s process (pid %d) ended with %s; starting it again in %.0fs", self.name, proc.pid,
                      reason, delay)
            if self._stopping.wait(delay) or not self._spawn():
                return
            delay = min(delay * 2, _MAX_DELAY_S)


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice``; the threads and processes it starts from now on inherit
    it. Linux keeps a nice value per thread, so a :class:`ChildWorker` started before keeps its priority, as do
    the children its supervising thread starts again (elsewhere the whole process is lowered)."""
    if nice:
        os.nice(nice)
        log.info("worker CPU priority lowered by %d (nice)", nice)


def watch_parent(parent_pid: int, *, interval: float = _PARENT_POLL_S) -> threading.Thread:
    """SIGTERM this process (a graceful stop) once ``parent_pid`` is no longer its parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        log.warning("the worker that started this process (pid %d) is gone; stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread

"""math-verify with a time limit that also works off the main thread.

math-verify's own timeouts use signal.alarm, which raises ValueError outside the main thread and takes whole
seconds only. We switch them off (parsing_timeout=None, timeout_seconds=None, raise_on_error=True, so errors
reach us and are counted) and bound the call ourselves:
- on the main thread (POSIX): a SIGALRM interval timer (setitimer, sub-second) raising VerifierTimeout, a
  BaseException so that sympy's `except Exception` blocks cannot swallow it;
- elsewhere (or timeout_mode="process"): a pool of long-lived spawned worker processes (one call at a time
  each, so that rewards scored from several threads at once, e.g. while rollouts stream in, run in parallel);
  a call that outlives the limit kills its worker (a hung sympy computation cannot be interrupted in-thread)
  and the next call on that slot starts a new one. Workers start when first needed.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass

OK, TIMEOUT, ERROR = "ok", "timeout", "error"
_WORKER_START_S = 120.0  # spawning imports sympy + antlr (~2 s here); generous for loaded machines


class VerifierTimeout(BaseException):
    """Raised inside a verification that ran past its time limit."""


@dataclass(frozen=True)
class VerifyOutcome:
    """Result of one verification: correct (bool), status ("ok" | "timeout" | "error"), detail (error text)."""

    correct: bool
    status: str
    detail: str = ""


class _DropTimeoutDisabledWarning(logging.Filter):
    # math-verify warns once that its timeout is disabled; here that is intended (we bound the call).
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def _as_gold_text(ground_truth: str) -> str:
    # A bare gold such as "x^2+2x+1" is not found by math-verify's expression extractor; inside $...$ the
    # LaTeX extractor reads it. Golds that already carry $ or \boxed are left alone.
    if "$" in ground_truth or "\\boxed" in ground_truth or "\\(" in ground_truth:
        return ground_truth
    return f"${ground_truth}$"


def verify_math(answer: str, ground_truth: str, float_rounding: int = 6, numeric_precision: int = 15) -> bool:
    """Unbounded math-verify comparison of an extracted answer with the ground truth.

    Takes: the answer (box content), the ground truth string. Returns: math_verify.verify's verdict.
    Raises: whatever math-verify / sympy raise (raise_on_error=True); it has no time limit of its own.
    """
    from math_verify import parse, verify

    gold = parse(_as_gold_text(ground_truth), parsing_timeout=None, raise_on_error=True)
    pred = parse("\\boxed{" + answer + "}", parsing_timeout=None, raise_on_error=True)
    if not gold or not pred:
        return False
    return bool(
        verify(
            gold,
            pred,
            float_rounding=float_rounding,
            numeric_precision=numeric_precision,
            timeout_seconds=None,
            raise_on_error=True,
        )
    )


def _raise_timeout(signum, frame):
    raise VerifierTimeout()


def _verify_with_alarm(args: tuple, timeout_s: float) -> VerifyOutcome:
    # Another SIGALRM user (e.g. pytest-timeout in signal mode) gets its handler and remaining time back.
    old_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    start = time.monotonic()
    try:
        try:
            old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
            return VerifyOutcome(verify_math(*args), OK)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            if old_delay > 0:
                remaining = max(old_delay - (time.monotonic() - start), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)
    except VerifierTimeout:
        return VerifyOutcome(False, TIMEOUT, f"math-verify ran past {timeout_s} s")
    except Exception as e:  # noqa: BLE001 - a verifier failure scores 0 and is counted by the caller
        return VerifyOutcome(False, ERROR, f"{type(e).__name__}: {e}")


def _worker_main(conn) -> None:
    # Warm up (imports, antlr / sympy caches: ~1 s) before reporting ready, so that time limits measure
    # verification only, not the start of a fresh worker.
    verify_math("\\frac{1}{2}", "0.5")
    conn.send("ready")
    while True:
        try:
            args = conn.recv()
        except EOFError:
            return
        try:
            conn.send((OK, verify_math(*args)))
        except Exception as e:  # noqa: BLE001
            conn.send((ERROR, f"{type(e).__name__}: {e}"))


class _Worker:
    """One spawned process that runs verify_math; replaced after a timeout or a crash."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # fork is unsafe in a threaded process (torch, rollout threads)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="mmr1-math-verify")
        proc.start()
        child.close()
        if not parent.poll(_WORKER_START_S) or parent.recv() != "ready":
            proc.kill()
            raise RuntimeError(
                "math-verify worker did not start; check that math-verify imports in this venv"
            )
        self._proc, self._conn = proc, parent

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
            self._conn.close()
        self._proc = self._conn = None

    def run(self, args: tuple, timeout_s: float) -> VerifyOutcome:
        with self._lock:
            try:
                if self._proc is None or not self._proc.is_alive():
                    self._start()
                self._conn.send(args)
                if not self._conn.poll(timeout_s):
                    self._stop()
                    return VerifyOutcome(False, TIMEOUT, f"math-verify ran past {timeout_s} s")
                status, value = self._conn.recv()
            except (EOFError, OSError, RuntimeError) as e:
                self._stop()
                return VerifyOutcome(False, ERROR, f"math-verify worker failed: {type(e).__name__}: {e}")
            if status == OK:
                return VerifyOutcome(bool(value), OK)
            return VerifyOutcome(False, ERROR, value)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def forget(self) -> None:
        """In a forked child: the parent's worker process and lock are not this process's to use (its
        Process object refuses is_alive() here, and the lock may have been held by a thread that does not
        exist in the child). The child starts its own worker when it needs one."""
        self._lock = threading.Lock()
        self._proc = self._conn = None


class _WorkerPool:
    """`size` workers; a call takes an idle one (waiting while all are busy) and gives it back after."""

    def __init__(self, size: int = 1) -> None:
        self._workers: list[_Worker] = []
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._resize_lock = threading.Lock()
        self.resize(size)

    @property
    def size(self) -> int:
        return len(self._workers)

    def resize(self, size: int) -> None:
        """Grow the pool to `size` workers (a pool never shrinks: a worker in use cannot be taken away; idle
        ones cost only memory). Raises ValueError for size < 1."""
        if size < 1:
            raise ValueError(f"a math-verify worker pool needs at least 1 worker, not {size}")
        with self._resize_lock:
            while len(self._workers) < size:
                w = _Worker()
                self._workers.append(w)
                self._idle.put(w)

    def run(self, args: tuple, timeout_s: float) -> VerifyOutcome:
        worker = self._idle.get()
        try:
            return worker.run(args, timeout_s)
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        for w in self._workers:
            w.close()

    def forget(self) -> None:
        """In a forked child (see _Worker.forget): a fresh pool of the same size, nothing started."""
        n = len(self._workers)
        self._workers, self._idle = [], queue.SimpleQueue()
        self._resize_lock = threading.Lock()
        self.resize(n)


_POOL = _WorkerPool(1)
os.register_at_fork(after_in_child=_POOL.forget)


def set_num_workers(n: int) -> None:
    """Let up to n math-verify calls made off the main thread run at once (n worker processes, started
    when first needed). The trainer sets reward.num_workers here before scoring streamed rollouts."""
    _POOL.resize(n)


def verify_with_time_limit(
    answer: str,
    ground_truth: str,
    timeout_s: float,
    mode: str = "auto",
    float_rounding: int = 6,
    numeric_precision: int = 15,
) -> VerifyOutcome:
    """math-verify `answer` against `ground_truth` within `timeout_s` seconds, from any thread.

    Takes: answer and ground truth strings, the limit in seconds, mode "auto" | "process" (see module doc).
    Returns: VerifyOutcome; a timeout or an exception gives correct=False with status "timeout" / "error".
    Raises: nothing.
    """
    args = (answer, ground_truth, float_rounding, numeric_precision)
    on_main = threading.current_thread() is threading.main_thread()
    if mode == "auto" and on_main and hasattr(signal, "setitimer"):
        return _verify_with_alarm(args, timeout_s)
    return _POOL.run(args, timeout_s)


def shutdown_worker() -> None:
    """Stop the verification worker processes that run (they are also daemons, ended with the parent)."""
    _POOL.close()

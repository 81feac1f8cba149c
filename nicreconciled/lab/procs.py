"""Processes the lab starts: each in its own session, stopped by pid (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, grace: float = 3.0) -> int:
        """SIGTERM to the process; after GRACE s SIGKILL to its whole session; reaped."""
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        # Whatever it started (and left) in its session goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        try:
            return self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel
            return -9

    def tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return "(no log)"
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class ProcSet:
    """Every process the lab started, stopped in reverse order of start."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[bytes] | None = None,
        stderr: int | IO[bytes] | None = None,
    ) -> Proc:
        """Start ARGV in a new session; stdout and stderr go to LOG (appended) by default."""
        handle = log.open("ab") if log is not None else None
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else (handle or subprocess.DEVNULL),
                stderr=stderr if stderr is not None else (handle or subprocess.DEVNULL),
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        finally:
            if handle is not None:
                handle.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 3.0) -> int:
        code = proc.stop(grace)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)
        return code

    def stop_all(self, grace: float = 3.0) -> list[str]:
        """Stop everything, newest first; returns 'name: problem' lines (never raises)."""
        problems = []
        for proc in reversed(list(self.procs)):
            try:
                proc.stop(grace)
            except Exception as exc:  # cleanup must go on
                problems.append(f"{proc.name} (pid {proc.pid}): {exc}")
        self.procs.clear()
        return problems


def wait_until(predicate: Callable[[], object], timeout: float, step: float = 0.01) -> bool:
    """Poll PREDICATE until it returns something true; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)

"""The one place subprocesses are started: timeouts, captured output, never a shell."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        """One line for logs: the command, its exit status and the last line it complained
        that says something: the last one naming an error if any, else the last with a word.
        netplan ends its complaints with the offending YAML line and a caret under it
        (``path:9:7: Error in network definition: unknown key 'x'`` / ``  x: 1`` / ``  ^``)."""
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        worded = [line.strip() for line in lines if any(c.isalnum() for c in line)]
        errors = [line for line in worded if "error" in line.lower()]
        tail = (errors or worded)[-1:] or [""]
        return f"{' '.join(self.argv)} exited {self.returncode}: {tail[0][:200]}"


class Runner(Protocol):
    async def __call__(self, argv: Sequence[str], *, timeout: float = 30.0) -> Completed: ...


#: What systemd gives the service alone. ``netplan generate`` runs ``udevadm`` and
#: ``systemctl``, which find NOTIFY_SOCKET and send their own messages to it (seen: udevadm
#: blocked on the full socket and stalled an apply); NotifyAccess=main drops them anyway.
_SERVICE_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_env() -> dict[str, str]:
    """The environment children run with: ours, without the service-only variables."""
    return {k: v for k, v in os.environ.items() if k not in _SERVICE_ONLY}


async def run(argv: Sequence[str], *, timeout: float = 30.0) -> Completed:
    """Run ARGV; a missing program is exit 127 and a timeout exit 124, never an exception."""
    args = tuple(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=child_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return Completed(args, 127, "", f"cannot start: {exc.strerror}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return Completed(args, 124, "", f"timed out after {timeout:g} s")
    except asyncio.CancelledError:
        # Never leave a child behind when the daemon stops mid-apply.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return Completed(
        args,
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )

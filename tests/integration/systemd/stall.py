"""python stall.py TID: stop one thread of a process (the event loop's), leave the others running.

A stalled event loop is not a stopped process: SIGSTOP would freeze every thread, so a
daemon that petted the watchdog from a helper thread (the mistake the test is there to
catch) would be killed just the same. ptrace stops only the thread it is attached to:
PTRACE_SEIZE + PTRACE_INTERRUPT put TID in a ptrace-stop while its other threads run on.

A stopped thread takes no signal, while a stuck one (busy in Python, or blocked in a
system call) would still die of SIGABRT, the watchdog's signal: the kernel hands a signal
for the process to another thread, but with no other thread it stays pending. So when
SIGABRT is pending, the thread is let go: the kernel delivers pending signals before it
returns to user code, so the loop runs no further; SIGABRT gets its default action (the
process dies), any other signal met on the way is discarded. Other signals while stalled
simply wait. Everything ends when the process is gone, or when this process is told to stop
(the kernel then detaches the thread, and it runs on).

Prints "stalled" once the thread is stopped; standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

PTRACE_CONT = 7
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def ptrace(request: int, tid: int, data: int = 0) -> None:
    if _libc.ptrace(request, tid, None, ctypes.c_void_p(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")


def abort_pending(tid: int) -> bool:
    """SIGABRT waits for the thread (SigPnd) or for its process (ShdPnd)."""
    try:
        status = Path(f"/proc/{tid}/status").read_text()
    except OSError:
        return False
    bit = 1 << (signal.SIGABRT - 1)
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("SigPnd", "ShdPnd") and int(value.strip(), 16) & bit:
            return True
    return False


def main(tid: int) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ptrace(PTRACE_SEIZE, tid)
    ptrace(PTRACE_INTERRUPT, tid)
    os.waitpid(tid, WALL)
    print("stalled", flush=True)
    stopped = True
    while True:
        pid, status = os.waitpid(tid, WALL | os.WNOHANG)
        if pid:
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return 0
            if status >> 16 == PTRACE_EVENT_STOP:
                stopped = True
            else:  # a signal-delivery-stop: only SIGABRT goes through
                sig = os.WSTOPSIG(status)
                ptrace(PTRACE_CONT, tid, sig if sig == signal.SIGABRT else 0)
            continue
        if stopped and abort_pending(tid):
            stopped = False
            ptrace(PTRACE_CONT, tid)
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))

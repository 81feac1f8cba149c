"""The project's daemon (and the IMDS simulator) as the lab runs them inside the instance."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nicreconciled.lab import texts
from nicreconciled.lab.procs import Proc, wait_until

#: [polling] values for the lab: quick, like tests/integration/conftest.py.
DEFAULT_POLLING: dict[str, float] = {"deadline": 8, "ipv6_grace": 6, "max_interval": 1}


#: The daemon's netplan generator in its bin dir (``[netplan] generator``): the real one,
#: then the veth fix (texts.generator_wrapper).
GENERATOR = "netplan-generate"


def generator() -> str:
    """The real netplan generator of this root."""
    from nicreconciled.system.netplan import generate_command

    return generate_command()[0]


#: The file in a daemon's bin dir that arms its ``Crash`` (taken by the crash).
CRASH_ARMED = "crash-armed"


@dataclass(frozen=True)
class Crash:
    """Where a lab daemon is SIGKILLed once armed (``Daemon.arm_crash``): at the first call of
    TOOL whose arguments contain WORDS (e.g. ``Crash("networkctl", "reload")``), before the
    tool runs, or AFTER it has run."""

    tool: str
    words: str
    after: bool = False


@dataclass
class Daemon:
    """One run of ``nicreconciled run`` inside the instance; JSON log in ``log``."""

    proc: Proc
    log: Path
    config: Path
    bin_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.alive()

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Log events (decoded JSON lines), only NAME's and those matching MATCH if given."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is not None and event.get("event") != name:
                continue
            if all(event.get(k) == v for k, v in match.items()):
                out.append(event)
        return out

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return "(no daemon log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def hup(self) -> None:
        """SIGHUP: resync every NIC now."""
        self.proc.signal(signal.SIGHUP)

    def wait_ready(self, timeout: float = 30) -> None:
        if not wait_until(lambda: self.events("ready") or not self.alive(), timeout, 0.05):
            raise TimeoutError(f"daemon not ready after {timeout:g} s:\n{self.tail()}")
        if not self.events("ready"):
            raise RuntimeError(f"daemon exited {self.proc.popen.returncode}:\n{self.tail()}")

    def arm_crash(self) -> None:
        """The next call of the ``Crash`` tool this daemon was started with kills it."""
        (self.bin_dir / CRASH_ARMED).touch()

    def crash_armed(self) -> bool:
        return (self.bin_dir / CRASH_ARMED).exists()

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM (SIGKILL after GRACE s); the exit status."""
        return self.proc.stop(grace)


def write_bin_dir(path: Path, failing: Iterable[str], crash: Crash | None = None) -> Path:
    """A directory for the front of the daemon's PATH: the netplan wrapper, plus a failing
    stand-in for each tool in FAILING (e.g. "networkctl", "nmcli"), and CRASH's stand-in."""
    path.mkdir(parents=True, exist_ok=True)
    tools = {"netplan": texts.netplan_wrapper(), GENERATOR: texts.generator_wrapper(generator())}
    for name in failing:
        if "/" in name or not name:
            raise ValueError(f"not a tool name: {name!r}")
        tools[name] = texts.failing_tool(name)
    if crash is not None:
        if crash.tool in ("netplan", GENERATOR):
            tools[f"{crash.tool}-lab"] = tools[crash.tool]
            real = str(path / f"{crash.tool}-lab")
        else:
            found = shutil.which(crash.tool)
            if found is None:
                raise ValueError(f"{crash.tool}: not found")
            real = found
        armed = path / CRASH_ARMED
        tools[crash.tool] = texts.crashing_tool(real, crash.words, after=crash.after, armed=armed)
    for name, text in tools.items():
        target = path / name
        target.write_text(text)
        target.chmod(0o755)
    return path

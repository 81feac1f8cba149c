"""Shared plumbing of the fault, crash and storm suites (test_faults, test_crash, test_storm).

* ``Daemon``: one real nicreconciled process in a test's network namespace with its own
  configuration, output dir, state dir and log; several may watch the same namespace and
  simulator side by side (each renders every NIC into its own output dir).
* ``Sampler``: a thread that reads every file of some directories every 20 ms and keeps the
  timeline of each file's content, so a test can prove that a file was never missing, empty,
  torn or wrong at any sampled moment, not just at the end.
* ``render_spec``: the exact text the daemon must write for a simulator NIC spec, computed with
  the daemon's own parser and renderer (a torn or stale file can never equal it by accident).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.sim.imds import LISTED_404, NicSpec
from nicreconciled.sources.ec2_parse import parse_nic
from tests.conftest import PYTHON, read_json_lines
from tests.integration.conftest import PORT, PRIMARY, Stack

#: The short resync interval of these suites (seconds; the daemon jitters it by +-20 %).
RESYNC = 2.0
#: Test polling: quick deadlines, short backoff, a request timeout well under the resync.
TEST_POLLING: dict[str, Any] = {
    "deadline": 8,
    "ipv6_grace": 6,
    "max_interval": 1,
    "request_timeout": 1,
}
SAMPLE_INTERVAL = 0.02
#: A temp file of ours: "<our file name>.<8 hex>.tmp" (system/fs.py).
TMP_NAME = re.compile(r"90-nicreconciled-[0-9a-f]{12}\.yaml\.[0-9a-f]{8}\.tmp")


def yaml_name(mac: str) -> str:
    return f"90-nicreconciled-{mac.replace(':', '')}.yaml"


# --- expected content ---------------------------------------------------------------------


def render_spec(spec: Mapping[str, Any], primary: str = PRIMARY) -> str:
    """What the daemon writes for SPEC once it is settled (netplan, networkd backend)."""
    values = {k: v for k, v in NicSpec.model_validate(spec).base_values().items() if v is not None}
    listing = "\n".join(sorted(values))
    raw = {k: (None if v == LISTED_404 else v) for k, v in values.items()}
    obs = parse_nic(str(spec["mac"]), listing, raw, primary)
    assert obs.state is not None, f"spec {spec} is not complete"
    return NetplanRenderer().render(obs.state)


# --- configuration ------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string (escapes included) is a valid TOML basic string.
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(doc: Mapping[str, Any]) -> str:
    """Top-level keys, then one [table] per mapping value (one level, as the config has)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, Mapping)]
    for name, table in doc.items():
        if isinstance(table, Mapping):
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# --- /proc --------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of PID in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssSampler:
    """Peak VmRSS of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_kb(pid)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except (OSError, AssertionError):
                return
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- the daemon -----------------------------------------------------------------------------


@dataclass
class Daemon:
    """A nicreconciled process in STACK's namespace; everything of it under tmp/NAME."""

    stack: Stack
    name: str = "d"
    proc: subprocess.Popen[bytes] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.stack.tmp / self.name

    @property
    def out(self) -> Path:
        return self.home / "out"

    @property
    def state(self) -> Path:
        return self.home / "state"

    @property
    def log_path(self) -> Path:
        return self.home / "daemon.log"

    @property
    def cfg_path(self) -> Path:
        return self.home / "nicreconciled.toml"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def file(self, mac: str) -> Path:
        return self.out / yaml_name(mac)

    def base_config(self) -> dict[str, Any]:
        return {
            "cloud": "ec2",
            "renderer": "netplan",
            "output_dir": str(self.out),
            "state_dir": str(self.state),
            "apply": False,
            "resync_interval": RESYNC,
            "interfaces": {"virtual": True, "ignore": ["nrp*"]},
            "udev": {"source": "kernel"},
            "ec2": {"endpoint": f"http://127.0.0.1:{PORT}", "fallback_endpoint": ""},
            "polling": dict(TEST_POLLING),
        }

    def write_config(self, **overrides: Any) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        self.config = merge(self.base_config(), overrides)
        self.cfg_path.write_text(to_toml(self.config))
        return self.cfg_path

    def argv(self, command: str = "run") -> list[str]:
        return [
            PYTHON,
            "-m",
            "nicreconciled",
            "--config",
            str(self.cfg_path),
            "--log-format",
            "json",
            command,
        ]

    def start(
        self,
        *,
        wrapper: Sequence[str] = (),
        command: str = "run",
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> subprocess.Popen[bytes]:
        """Start (again): WRAPPER is prepended (e.g. an unshare line), ENV is added to the
        environment, OVERRIDES merge into the configuration (tables merge key by key)."""
        if overrides or not self.cfg_path.exists():
            self.write_config(**overrides)
        with self.log_path.open("ab") as log:
            self.proc = self.stack.ns.popen(
                [*wrapper, *self.argv(command)], stderr=log, env={**os.environ, **(env or {})}
            )
        return self.proc

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM; the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    # -- observing ------------------------------------------------------------------------
    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [
            e
            for e in read_json_lines(self.log_path)
            if (name is None or e.get("event") == name)
            and all(e.get(k) == v for k, v in match.items())
        ]

    def status(self) -> dict[str, dict[str, Any]]:
        """The per-NIC status files, by MAC (what `status --json` prints)."""
        out = {}
        for path in sorted((self.state / "nics").glob("*.json")):
            try:
                row = json.loads(path.read_text())
            except ValueError:
                continue
            out[row["mac"]] = row
        return out

    def status_json(self) -> dict[str, dict[str, Any]]:
        """`nicreconciled status --json`, run as a command."""
        done = subprocess.run(
            [PYTHON, "-m", "nicreconciled", "--config", str(self.cfg_path), "status", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return {row["mac"]: row for row in json.loads(done.stdout)}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"daemon {self.name} exited {code}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def until(
        self, predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.02
    ) -> Any:
        """Poll PREDICATE until truthy; fails when the daemon dies or TIMEOUT passes."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            self.assert_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {what} within {timeout:g} s:\n{self.tail()}")
            await asyncio.sleep(step)

    async def wait_event(self, name: str, timeout: float = 15, **match: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = await self.until(
            lambda: self.events(name, **match), timeout, f"{name} {match} event", step=0.05
        )
        return found[-1]

    async def wait_content(self, mac: str, text: str, timeout: float = 15) -> float:
        """Wait until MAC's file holds exactly TEXT; returns when that was seen (monotonic)."""
        path = self.file(mac)

        def holds() -> bool:
            try:
                return path.read_text() == text
            except FileNotFoundError:
                return False

        await self.until(holds, timeout, f"{path.name} with the expected content")
        return time.monotonic()

    # --- sampling -------------------------------------------------------------------------------


#: What one sample saw at a path: the bytes, None (absent), or ("symlink", target).
Seen = bytes | None | tuple[str, str]


class Sampler:
    """Every 20 ms, read every file in DIRS; keep each file's timeline of distinct contents.

    Temp files (*.tmp) are only noted by name: they are the writer's business until renamed.
    """

    def __init__(self, *dirs: Path, interval: float = SAMPLE_INTERVAL) -> None:
        self.dirs = dirs
        self.interval = interval
        self.samples = 0
        self.timelines: dict[Path, list[tuple[float, Seen]]] = {}
        self.tmp_names: set[str] = set()
        self.started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> Sampler:
        self.started = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._sample()
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    @staticmethod
    def _read(path: Path) -> Seen:
        try:
            if path.is_symlink():
                return ("symlink", os.readlink(path))
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return ("directory", "")

    def _sample(self) -> None:
        now = time.monotonic()
        for directory in self.dirs:
            try:
                names = set(os.listdir(directory))
            except FileNotFoundError:
                names = set()
            known = {p.name for p in self.timelines if p.parent == directory}
            for name in sorted(names | known):
                if name.endswith(".tmp"):
                    self.tmp_names.add(name)
                    continue
                path = directory / name
                seen = self._read(path) if name in names else None
                line = self.timelines.setdefault(path, [])
                if not line or line[-1][1] != seen:
                    line.append((now, seen))
        self.samples += 1

    # -- questions ------------------------------------------------------------------------
    def contents(self, path: Path, since: float = 0.0, until: float = float("inf")) -> list[Seen]:
        """Every distinct content PATH had at sampled moments in [SINCE, UNTIL]."""
        line = self.timelines.get(path, [])
        out: list[Seen] = []
        for i, (t, seen) in enumerate(line):
            t_next = line[i + 1][0] if i + 1 < len(line) else float("inf")
            if t <= until and t_next > since:
                out.append(seen)
        return out

    def check(
        self,
        path: Path,
        allowed: Collection[str],
        *,
        since: float = 0.0,
        until: float = float("inf"),
        absent: str = "never",
    ) -> int:
        """Assert PATH only ever held a text in ALLOWED in the window; ABSENT says when it
        may be missing: "never", "before" it first appears (never deleted), or "any".
        Returns how many samples the window covered."""
        wanted = {a.encode() for a in allowed}
        appeared = False
        for seen in self.contents(path, since, until):
            if seen is None:
                assert absent == "any" or (absent == "before" and not appeared), (
                    f"{path.name} was missing (deleted) at a sampled moment"
                )
                continue
            appeared = True
            assert isinstance(seen, bytes), f"{path.name} became {seen}"
            assert seen, f"{path.name} was empty at a sampled moment"
            assert seen in wanted, f"{path.name} held unexpected content:\n{seen.decode()[:800]}"
        return self.samples_between(since, until)

    def samples_between(self, since: float, until: float) -> int:
        end = min(until, time.monotonic())
        span = max(0.0, end - max(since, self.started))
        total = max(1e-9, time.monotonic() - self.started)
        return round(self.samples * span / total)

    def names(self, directory: Path) -> set[str]:
        """Every non-temp name ever seen in DIRECTORY."""
        return {p.name for p, line in self.timelines.items() if p.parent == directory}


# --- results for the report -------------------------------------------------------------------


def record(case: str, **figures: Any) -> None:
    """Append one line of figures to $NICR_FAULT_REPORT (if set) for the suite's report."""
    target = os.environ.get("NICR_FAULT_REPORT")
    if target:
        with open(target, "a") as f:
            f.write(json.dumps({"case": case, **figures}) + "\n")


def tree(root: Path) -> set[str]:
    """Every path under ROOT, relative to it (directories end in '/')."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        out.update(f"{rel / d}/" for d in dirnames)
        out.update(str(rel / f) for f in filenames)
    return {p.removeprefix("./") for p in out}


def netplan_generate(files: Iterable[Path], root: Path) -> dict[str, bytes]:
    """Copy FILES into ROOT/run/netplan, run `netplan generate --root-dir ROOT`; returns the
    generated networkd files by name. Fails the test on any error or permission warning."""
    from tests.conftest import require_tool

    netplan = require_tool("netplan")
    target = root / "run/netplan"
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        (target / f.name).write_bytes(f.read_bytes())
        (target / f.name).chmod(0o600)
    done = subprocess.run(
        [netplan, "generate", "--root-dir", str(root)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Permissions" not in done.stderr, done.stderr
    generated = root / "run/systemd/network"
    return (
        {p.name: p.read_bytes() for p in sorted(generated.glob("*"))} if generated.exists() else {}
    )

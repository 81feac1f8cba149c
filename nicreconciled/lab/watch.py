"""Watching the lab: pings from the router's remote peer with a capture of where the replies
arrive, and ``ip monitor address`` of the instance with arrival times."""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from types import TracebackType
from typing import IO

#: The remote peers on the router's loopback (outside every subnet of the lab).
PEER4 = "192.168.50.1"
PEER6 = "2001:db8:ffff::1"


@dataclass(frozen=True)
class PingResult:
    target: str
    source: str
    sent: int
    received: int
    #: Echo replies seen arriving at the router, per router port. Captured before the IP
    #: layer, so a reply that strict rp_filter then drops is still counted (on its port).
    replies_by_port: dict[str, int]
    output: str

    @property
    def ports(self) -> set[str]:
        return set(self.replies_by_port)

    def __str__(self) -> str:
        seen = ", ".join(f"{n} on {p}" for p, n in sorted(self.replies_by_port.items()))
        return (
            f"ping {self.source} -> {self.target}: {self.sent} sent, {self.received} received;"
            f" replies arriving at the router: {seen or 'none'}"
        )


_LINK = re.compile(r"^\d+:\d+:\d+\.\d+\s+(\S+)\s+In\s")
_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


class _Lines:
    """Lines of a pipe, read by a thread, each with its arrival time (monotonic)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self._cond:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait(self, predicate: Callable[[list[tuple[float, str]]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: predicate(self.lines) or not self._thread.is_alive(), timeout
            ) and predicate(self.lines)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)


def ping_from_peer(
    enter_router: Sequence[str],
    target: str,
    *,
    count: int = 3,
    source: str | None = None,
    interval: float = 0.2,
    reply_timeout: float = 1.0,
) -> PingResult:
    """Ping TARGET from SOURCE (the remote peer of TARGET's family by default) inside the
    router (ENTER_ROUTER: the argv prefix that runs a command there) and capture on which
    router port each echo reply arrives."""
    v6 = ip_address(target).version == 6
    src = source or (PEER6 if v6 else PEER4)
    bpf = f"dst host {src} and (icmp[icmptype] == icmp-echoreply or (icmp6 and ip6[40] == 129))"
    capture = subprocess.Popen(
        [*enter_router, "tcpdump", "-i", "any", "-nn", "-l", "--immediate-mode", "-Q", "in", bpf],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert capture.stdout is not None
        assert capture.stderr is not None
        out, err = _Lines(capture.stdout), _Lines(capture.stderr)
        if not err.wait(lambda ls: any("listening on" in line for _, line in ls), 20):
            raise RuntimeError(f"tcpdump did not start: {[line for _, line in err.lines]}")
        # -c without -w: exactly COUNT requests; each reply waited for up to REPLY_TIMEOUT.
        deadline = math.ceil(count * interval + reply_timeout + 1)
        options = ["-n", "-c", str(count), "-i", f"{interval:g}", "-W", f"{reply_timeout:g}"]
        done = subprocess.run(
            [*enter_router, "ping", *options, "-I", src, target],
            capture_output=True,
            text=True,
            timeout=deadline + 20,
        )
        match = _COUNTS.search(done.stdout)
        if match is None:
            raise RuntimeError(f"ping {target} failed: {done.stdout}{done.stderr}")
        sent, received = int(match[1]), int(match[2])
        # Every reply the ping saw was captured first; wait for tcpdump to print them (and,
        # briefly, for replies that went elsewhere and were dropped).
        out.wait(lambda ls: len(ls) >= max(received, 1), 2.0 if received else 0.5)
    finally:
        capture.terminate()
        try:
            capture.wait(timeout=5)
        except subprocess.TimeoutExpired:
            capture.kill()
            capture.wait()
    out.join()
    ports: Counter[str] = Counter()
    for _, line in out.lines:
        m = _LINK.match(line)
        if m:
            ports[m[1]] += 1
    return PingResult(target, src, sent, received, dict(ports), done.stdout + done.stderr)


@dataclass(frozen=True)
class AddrEvent:
    at: float  # time.monotonic() when read
    wall: float  # time.time() when read
    deleted: bool
    ifname: str
    family: int
    cidr: str
    line: str

    @property
    def address(self) -> str:
        return self.cidr.split("/")[0]

    @property
    def link_local(self) -> bool:
        return "scope link" in self.line


_EVENT = re.compile(r"^(Deleted )?\d+:\s+(\S+)\s+(inet6?)\s+(\S+)")


@dataclass
class AddressMonitor:
    """``ip -o monitor address`` of a namespace; ``events`` grows while it runs."""

    argv: Sequence[str]
    events: list[AddrEvent] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = None
    _lines: _Lines | None = None

    def start(self, poke: Callable[[], None]) -> AddressMonitor:
        """Start; POKE must cause an address event on ``lo`` (proof that the monitor
        listens). Events on ``lo`` are never reported."""
        self._proc = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        self._lines = _Lines(self._proc.stdout)
        deadline = time.monotonic() + 20
        while True:
            poke()
            if self._lines.wait(lambda ls: bool(ls), 0.2):
                break
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError("ip monitor address never reported the probe address")
        self._lines.lines.clear()
        return self

    def snapshot(self) -> list[AddrEvent]:
        """Every event so far (parsed), oldest first."""
        if self._lines is not None:
            offset = time.time() - time.monotonic()
            parsed = []
            for at, line in list(self._lines.lines):
                m = _EVENT.match(line)
                if m and m[2] != "lo":
                    family = 6 if m[3] == "inet6" else 4
                    ifname = m[2].split("@")[0]
                    parsed.append(
                        AddrEvent(at, at + offset, bool(m[1]), ifname, family, m[4], line)
                    )
            self.events = parsed
        return list(self.events)

    def deleted(self, ifname: str | None = None, *, link_local: bool = False) -> list[AddrEvent]:
        """Deletions (of IFNAME's addresses when given), link-local ones only if asked."""
        return [
            e
            for e in self.snapshot()
            if e.deleted
            and (ifname is None or e.ifname == ifname)
            and (link_local or not e.link_local)
        ]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._lines is not None:
            self._lines.join()
            self.snapshot()

    def __enter__(self) -> AddressMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class AddressSampler:
    """Samples every INTERVAL s, in a thread, whether IFNAME has ADDRESS (``ip -j addr``);
    use as a context manager. ``missing`` lists the times (monotonic) it was absent."""

    def __init__(self, netns: str, ifname: str, address: str, interval: float = 0.02) -> None:
        self.netns, self.ifname, self.address, self.interval = netns, ifname, address, interval
        self.samples = 0
        self.missing: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        argv = ["ip", "-n", self.netns, "-j", "addr", "show", "dev", self.ifname]
        while not self._stop.is_set():
            started = time.monotonic()
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                self.errors.append(done.stderr.strip())
            else:
                present = {
                    info.get("local")
                    for link in json.loads(done.stdout or "[]")
                    for info in link.get("addr_info", [])
                }
                self.samples += 1
                if self.address not in present:
                    self.missing.append(started)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> AddressSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(30)

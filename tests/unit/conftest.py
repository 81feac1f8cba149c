"""Real servers on 127.0.0.1 (port 0), the IMDS simulator, and captured EC2 fixtures."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nicreconciled.sim.imds import ImdsSim
from nicreconciled.sim.server import url_of
from nicreconciled.sources.http import HttpClient

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ec2"
MACS_DIR = "meta-data/network/interfaces/macs/"

Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """serve(app) -> base URL of APP listening on 127.0.0.1; stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        # A short shutdown_timeout: handlers that hang on purpose must not stall teardown.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return url_of(runner)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def sim() -> AsyncIterator[ImdsSim]:
    """An in-process IMDS simulator, already serving (its base URL is sim.url)."""
    simulator = ImdsSim(slow_seconds=3.0)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(timeout=1.0, rate=1000.0)
    yield client
    await client.close()


@pytest.fixture
def closed_port() -> int:
    """A local TCP port nobody listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class Ec2Capture:
    """One captured-style IMDS answer set: path (relative to /latest/) -> body, null = 404."""

    name: str
    comment: str
    primary_mac: str
    mac: str
    answers: dict[str, str | None]

    @property
    def directory(self) -> str:
        return f"{MACS_DIR}{self.mac}/"

    @property
    def listing(self) -> str:
        text = self.answers[self.directory]
        assert text is not None
        return text

    def raw(self) -> dict[str, str | None]:
        """Key name -> answer for every key of the MAC directory that was captured."""
        prefix = self.directory
        return {
            path.removeprefix(prefix): body
            for path, body in self.answers.items()
            if path.startswith(prefix) and path != prefix
        }


def load_capture(name: str) -> Ec2Capture:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return Ec2Capture(
        name=name,
        comment=data["comment"],
        primary_mac=data["primary_mac"],
        mac=data.get("mac", ""),
        answers=data["answers"],
    )


@pytest.fixture
def capture() -> Callable[[str], Ec2Capture]:
    """capture(name) loads tests/fixtures/ec2/NAME.json."""
    return load_capture

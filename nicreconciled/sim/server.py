"""What both simulators share: a plain aiohttp server with injectable faults and a log.

A subclass says what it serves (``_answer``) and which fault modes it knows (``MODES``);
this class keeps the fault state, the request log, start/stop, and the fault mechanics
(hang until the fault ends, drop or reset the connection, trickle or flood a body).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from itertools import repeat
from typing import Any, ClassVar

from aiohttp import web

OVERSIZE_BYTES = 10 * 1024 * 1024
LOG_LIMIT = 100_000


class FaultyServer:
    """Fault state, request log and serving; subclasses implement ``_answer``."""

    #: The fault modes set_fault accepts ("none" included).
    MODES: ClassVar[tuple[str, ...]] = ("none",)

    def __init__(self, *, clock: Callable[[], float], slow_seconds: float) -> None:
        self.clock = clock
        self.slow_seconds = slow_seconds
        self.fault = "none"
        self.fault_until: float | None = None
        self._wake: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        #: Base URL once start() has run.
        self.url = ""
        self.reset_stats()

    def set_fault(self, mode: str, duration: float | None = None) -> None:
        """Inject a fault for DURATION seconds (None: until changed)."""
        if mode not in self.MODES:
            raise ValueError(f"unknown fault {mode!r}; one of {', '.join(self.MODES)}")
        if duration is not None and duration <= 0:
            raise ValueError("duration must be positive")
        self.fault = mode
        self.fault_until = None if duration is None else self.clock() + duration
        self.wake()

    def active_fault(self) -> str:
        if self.fault_until is not None and self.clock() >= self.fault_until:
            self.fault, self.fault_until = "none", None
        return self.fault

    def wake(self) -> None:
        """Release every hanging request (fault changed, or shutting down)."""
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    # --- statistics ---------------------------------------------------------------------

    def reset_stats(self) -> None:
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        self.by_method: Counter[str] = Counter()
        self.log: deque[tuple[float, str, str, int]] = deque(maxlen=LOG_LIMIT)

    def stats(self, include_log: bool = True) -> dict[str, Any]:
        """Status 0 in the log means the connection was dropped without an answer."""
        out: dict[str, Any] = {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_method": dict(self.by_method),
        }
        if include_log:
            out["log"] = [{"t": t, "method": m, "path": p, "status": s} for t, m, p, s in self.log]
        return out

    def _record(self, method: str, path: str, status: int) -> None:
        self.requests += 1
        self.by_status[status] += 1
        self.by_method[method] += 1
        self.log.append((self.clock(), method, path, status))

    # --- serving ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        self.wake()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on HOST:PORT (0 = any free port); returns the base URL."""
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = url_of(self._runner)
        return self.url

    async def stop(self) -> None:
        self.wake()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        status = 0
        try:
            response = await self._answer(request)
            if response is None:
                # The connection is closed: aiohttp has nowhere to write this.
                return web.Response(status=204)
            status = response.status
            return response
        finally:
            # Status 0: dropped without an answer (or the handler failed).
            self._record(request.method, request.path, status)

    async def _answer(self, request: web.Request) -> web.StreamResponse | None:
        raise NotImplementedError

    async def _connection_fault(
        self, request: web.Request, fault: str
    ) -> tuple[bool, web.StreamResponse | None]:
        """The faults that never reach the content: (handled, response or None = dropped)."""
        if fault == "5xx":
            return True, web.Response(status=503, text="Service Unavailable")
        if fault == "hang":
            await self._hang()
            self._drop(request)
            return True, None
        if fault == "reset":
            self._drop(request, rst=True)
            return True, None
        if fault == "oversize":
            chunk = b"x" * 65536  # chunked, no Content-Length: only reading tells the size
            pieces = repeat(chunk, OVERSIZE_BYTES // len(chunk))
            return True, await self._stream(request, pieces, 0)
        return False, None

    async def _hang(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        wake = self._wake
        remaining = None if self.fault_until is None else self.fault_until - self.clock()
        try:
            async with asyncio.timeout(remaining):
                await wake.wait()
        except TimeoutError:
            pass

    @staticmethod
    def _drop(request: web.Request, rst: bool = False) -> None:
        transport = request.transport
        if transport is None:
            return
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0: closing sends a TCP RST, as a crashing server would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()

    async def _trickle(
        self,
        request: web.Request,
        body: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """BODY in about ten pieces spread over slow_seconds (the "slow" fault)."""
        data = body.encode()
        size = max(1, len(data) // 10)
        pieces = (data[i : i + size] for i in range(0, len(data), size))
        return await self._stream(
            request,
            pieces,
            self.slow_seconds / 10,
            status=status,
            headers=headers,
            length=len(data),
        )

    async def _stream(
        self,
        request: web.Request,
        pieces: Iterable[bytes],
        pause: float,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        length: int | None = None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = "text/plain"
        if length is None:
            response.enable_chunked_encoding()
        else:
            response.content_length = length
        try:
            await response.prepare(request)
            for piece in pieces:
                await response.write(piece)
                await asyncio.sleep(pause)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client gave up, as it should
        return response


def url_of(runner: web.BaseRunner) -> str:
    """Base URL of the first TCP address RUNNER listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            host, port = address[0], address[1]
            return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    raise RuntimeError("runner has no TCP address")

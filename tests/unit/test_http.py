"""HttpClient against real aiohttp servers on 127.0.0.1: every failure is a FetchError."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.sources.http import (
    DEFAULT_RATE,
    RECOVERY_SPREAD,
    SLOW_SHARE,
    Answer,
    HttpClient,
    StatusError,
    TransportError,
)
from tests.unit.conftest import Serve


@pytest.fixture
async def release() -> AsyncIterator[asyncio.Event]:
    """Set at teardown so handlers that hang on purpose finish before the server stops."""
    event = asyncio.Event()
    yield event
    event.set()


def app_with(
    path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.Application:
    app = web.Application()
    app.router.add_route("*", path, handler)
    return app


class TestAnswers:
    async def test_statuses_for_the_caller_are_returned(
        self, serve: Serve, http: HttpClient
    ) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(status=int(request.query["s"]), text=f"body {request.method}")

        url = await serve(app_with("/x", handler))
        for status in (200, 400, 401, 403, 404):
            assert await http.request("GET", f"{url}/x?s={status}") == Answer(status, "body GET")
        assert (await http.request("PUT", f"{url}/x?s=200")).body == "body PUT"
        assert http.requests_sent == 6

    async def test_headers_are_sent(self, serve: Serve, http: HttpClient) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=request.headers.get("X-Token", "none"))

        url = await serve(app_with("/x", handler))
        answer = await http.request("GET", f"{url}/x", {"X-Token": "abc"})
        assert answer.body == "abc"

    async def test_redirects_are_not_followed(self, serve: Serve, http: HttpClient) -> None:
        async def handler(request: web.Request) -> web.Response:
            raise web.HTTPFound("http://198.51.100.7/elsewhere")

        url = await serve(app_with("/x", handler))
        assert (await http.request("GET", f"{url}/x")).status == 302

    async def test_proxy_from_environment_is_ignored(
        self, serve: Serve, http: HttpClient, monkeypatch: pytest.MonkeyPatch, closed_port: int
    ) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text="direct")

        for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        url = await serve(app_with("/x", handler))
        assert (await http.request("GET", f"{url}/x")).body == "direct"

    async def test_body_exactly_at_the_limit_is_accepted(self, serve: Serve) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text="a" * int(request.query["n"]))

        url = await serve(app_with("/x", handler))
        client = HttpClient(max_body=1024)
        try:
            assert len((await client.request("GET", f"{url}/x?n=1024")).body) == 1024
            with pytest.raises(FetchError, match="oversized body"):
                await client.request("GET", f"{url}/x?n=1025")
        finally:
            await client.close()


class TestFailures:
    async def test_hanging_server_times_out(self, serve: Serve, release: asyncio.Event) -> None:
        async def handler(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(text="too late")

        url = await serve(app_with("/slow", handler))
        client = HttpClient(timeout=0.3)
        started = time.monotonic()
        try:
            with pytest.raises(TransportError, match=r"^GET /slow: timeout after 0.3s$"):
                await client.request("GET", f"{url}/slow")
        finally:
            await client.close()
        assert time.monotonic() - started < 3.0

    async def test_body_trickling_past_the_timeout_times_out(
        self, serve: Serve, release: asyncio.Event
    ) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            response.content_length = 100
            await response.prepare(request)
            for _ in range(100):
                if release.is_set():
                    break
                await response.write(b"a")
                await asyncio.sleep(0.05)
            return response

        url = await serve(app_with("/trickle", handler))
        client = HttpClient(timeout=0.3)
        try:
            with pytest.raises(TransportError, match="timeout"):
                await client.request("GET", f"{url}/trickle")
        finally:
            await client.close()

    async def test_connection_reset(self, serve: Serve, http: HttpClient) -> None:
        async def handler(request: web.Request) -> web.Response:
            assert request.transport is not None
            sock = request.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
            return web.Response(text="never sent")

        url = await serve(app_with("/reset", handler))
        with pytest.raises(TransportError) as info:
            await http.request("GET", f"{url}/reset")
        assert str(info.value).startswith("GET /reset: ")
        assert "\n" not in str(info.value)

    async def test_truncated_body(self, serve: Serve, http: HttpClient) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            response.content_length = 1000
            await response.prepare(request)
            await response.write(b"short")
            assert request.transport is not None
            request.transport.close()
            return response

        url = await serve(app_with("/cut", handler))
        with pytest.raises(TransportError, match=r"^GET /cut: "):
            await http.request("GET", f"{url}/cut")

    async def test_connection_refused(self, http: HttpClient, closed_port: int) -> None:
        with pytest.raises(TransportError, match=r"^GET /latest/x: cannot connect"):
            await http.request("GET", f"http://127.0.0.1:{closed_port}/latest/x")

    @pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
    async def test_throttling_and_server_errors(
        self, serve: Serve, http: HttpClient, status: int
    ) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(status=status, text="busy")

        url = await serve(app_with("/busy", handler))
        with pytest.raises(StatusError, match=f"^GET /busy: HTTP {status}$") as info:
            await http.request("GET", f"{url}/busy")
        assert info.value.status == status
        assert isinstance(info.value, FetchError)
        assert not isinstance(info.value, TransportError)

    async def test_oversized_body_announced_by_content_length(
        self, serve: Serve, http: HttpClient
    ) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=b"a" * (1024 * 1024))

        url = await serve(app_with("/big", handler))
        with pytest.raises(FetchError, match="oversized body"):
            await http.request("GET", f"{url}/big")

    async def test_oversized_streamed_body_is_not_read_to_the_end(
        self, serve: Serve, http: HttpClient
    ) -> None:
        sent = 0
        finished = False

        async def handler(request: web.Request) -> web.StreamResponse:
            nonlocal sent, finished
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            chunk = b"a" * 65536
            try:
                for _ in range(1024):  # 64 MiB, far beyond any socket buffer
                    await response.write(chunk)
                    sent += len(chunk)
                await response.write_eof()
                finished = True
            except ConnectionError:
                pass
            return response

        url = await serve(app_with("/stream", handler))
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"^GET /stream: oversized body \(> 262144 bytes\)$"):
            await http.request("GET", f"{url}/stream")
        assert time.monotonic() - started < 5.0
        await asyncio.sleep(0.2)
        assert not finished
        assert sent < 64 * 1024 * 1024

    async def test_non_utf8_body_is_metadata_error(self, serve: Serve, http: HttpClient) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=b"10.0.0.1\n\xff\xfe")

        url = await serve(app_with("/latin", handler))
        with pytest.raises(MetadataError, match=r"^GET /latin: body is not UTF-8$"):
            await http.request("GET", f"{url}/latin")

    async def test_client_recovers_after_close(self, serve: Serve, http: HttpClient) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        url = await serve(app_with("/x", handler))
        await http.request("GET", f"{url}/x")
        await http.close()
        await http.close()
        assert (await http.request("GET", f"{url}/x")).body == "ok"


class TestLimits:
    async def test_rate_limit_holds_for_concurrent_callers(self, serve: Serve) -> None:
        arrivals: list[float] = []

        async def handler(request: web.Request) -> web.Response:
            arrivals.append(time.monotonic())
            return web.Response(text="ok")

        url = await serve(app_with("/x", handler))
        rate, count = 20.0, 30
        client = HttpClient(rate=rate, concurrency=8)  # burst = max(1, rate / 10) = 2
        try:
            started = time.monotonic()
            await asyncio.gather(*(client.request("GET", f"{url}/x") for _ in range(count)))
            elapsed = time.monotonic() - started
        finally:
            await client.close()
        assert len(arrivals) == count
        # 30 requests at 20/s with a burst of 2 need at least 1.4 s; allow for timer slop.
        assert elapsed >= 1.2
        arrivals.sort()
        for i, start in enumerate(arrivals):
            in_window = sum(1 for t in arrivals[i:] if t < start + 0.5)
            assert in_window <= rate * 0.5 + 2 + 1

    async def test_concurrency_is_bounded(self, serve: Serve) -> None:
        in_flight = peak = 0

        async def handler(request: web.Request) -> web.Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1
            return web.Response(text="ok")

        url = await serve(app_with("/x", handler))
        client = HttpClient(rate=1000.0, concurrency=3)
        try:
            await asyncio.gather(*(client.request("GET", f"{url}/x") for _ in range(12)))
        finally:
            await client.close()
        assert peak == 3

    def test_invalid_settings_are_refused(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            HttpClient(timeout=0)
        with pytest.raises(ValueError, match="positive"):
            HttpClient(concurrency=0)
        with pytest.raises(ValueError, match="positive"):
            HttpClient(keepalive=0)

    def test_the_default_rate_fits_the_imds_packet_budget(self) -> None:
        # ~2 packets per request on a kept connection; IMDS allows ~1,024 per ENI.
        assert 100 < DEFAULT_RATE <= 400


class Top(random.Random):
    """Always the top of the range: the longest hold the client may choose."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def raw_server(handle: Callable[..., Awaitable[None]]) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/x"


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class TestKeptConnections:
    async def test_idle_connections_are_reused_between_requests(self, serve: Serve) -> None:
        transports: set[object] = set()

        async def handler(request: web.Request) -> web.Response:
            transports.add(request.transport)
            return web.Response(text="ok")

        url = await serve(app_with("/x", handler))
        client = HttpClient()
        try:
            for _ in range(3):
                await client.request("GET", f"{url}/x")
                await asyncio.sleep(0.1)  # idle between requests, as between resyncs
        finally:
            await client.close()
        assert len(transports) == 1
        assert client.keepalive > 60 * 1.2  # the default resync_interval's longest jitter

    async def test_a_kept_connection_the_server_closed_is_tried_again_once(self) -> None:
        connections = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Answers the first request of a connection; on the second it closes without a
            # word, as a server whose idle timeout ran out just as the request came.
            nonlocal connections
            connections += 1
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(OK)
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")
            writer.close()

        server, url = await raw_server(handle)
        client = HttpClient()
        try:
            assert (await client.request("GET", url)).body == "ok"
            assert (await client.request("GET", url)).body == "ok"
        finally:
            await client.close()
            server.close()
        assert client.stale_retries == 1
        assert connections == 2
        assert client.requests_sent == 3

    async def test_a_request_held_then_dropped_is_not_sent_again(self) -> None:
        connections = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The second request of a connection is held, then dropped: a service coming
            # back from an outage. Sending it again at once is what makes a herd.
            nonlocal connections
            connections += 1
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(OK)
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.3)
            writer.close()

        server, url = await raw_server(handle)
        client = HttpClient(timeout=1.0)
        try:
            await client.request("GET", url)
            with pytest.raises(TransportError, match="connection closed by server"):
                await client.request("GET", url)
        finally:
            await client.close()
            server.close()
        assert client.stale_retries == 0
        assert connections == 1

    async def test_a_reset_on_a_new_connection_is_not_sent_again(self, serve: Serve) -> None:
        calls = 0

        async def handler(request: web.Request) -> web.Response:
            nonlocal calls
            calls += 1
            assert request.transport is not None
            sock = request.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
            return web.Response(text="never sent")

        url = await serve(app_with("/reset", handler))
        client = HttpClient()
        try:
            with pytest.raises(TransportError):
                await client.request("GET", f"{url}/reset")
        finally:
            await client.close()
        assert calls == 1


class TestRecoverySpread:
    async def test_after_a_slow_request_the_next_one_waits_a_random_while(
        self, serve: Serve, release: asyncio.Event
    ) -> None:
        async def slow(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(text="late")

        async def fast(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = app_with("/slow", slow)
        app.router.add_route("GET", "/fast", fast)
        url = await serve(app)
        client = HttpClient(timeout=0.3, rng=Top())
        try:
            with pytest.raises(TransportError, match="timeout"):
                await client.request("GET", f"{url}/slow")
            started = time.monotonic()
            await client.request("GET", f"{url}/fast")
            held = time.monotonic() - started
            started = time.monotonic()
            await client.request("GET", f"{url}/fast")
            prompt = time.monotonic() - started
        finally:
            await client.close()
        assert held >= 0.3 * RECOVERY_SPREAD * 0.9
        assert prompt < 0.3 * RECOVERY_SPREAD / 2  # a prompt answer holds nothing back

    async def test_prompt_answers_hold_nothing_back(self, serve: Serve) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        url = await serve(app_with("/x", handler))
        client = HttpClient(timeout=2.0, rng=Top())
        try:
            started = time.monotonic()
            for _ in range(5):
                await client.request("GET", f"{url}/x")
            took = time.monotonic() - started
        finally:
            await client.close()
        assert took < 2.0 * SLOW_SHARE

    async def test_a_request_dropped_at_once_spreads_the_next_but_a_refusal_does_not(
        self, serve: Serve, closed_port: int
    ) -> None:
        async def reset(request: web.Request) -> web.Response:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(text="never sent")

        async def fast(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = app_with("/reset", reset)
        app.router.add_route("GET", "/fast", fast)
        url = await serve(app)
        client = HttpClient(timeout=0.3, rng=Top())
        try:
            with pytest.raises(TransportError, match="cannot connect"):
                await client.request("GET", f"http://127.0.0.1:{closed_port}/x")
            started = time.monotonic()
            await client.request("GET", f"{url}/fast")
            after_refusal = time.monotonic() - started
            with pytest.raises(TransportError):
                await client.request("GET", f"{url}/reset")
            started = time.monotonic()
            await client.request("GET", f"{url}/fast")
            after_drop = time.monotonic() - started
        finally:
            await client.close()
        assert after_refusal < 0.3 * RECOVERY_SPREAD / 2
        assert after_drop >= 0.3 * RECOVERY_SPREAD * 0.9

"""The one HTTP chokepoint: a single aiohttp session with timeouts, limits and a rate cap.

Every metadata request of every source goes through ``HttpClient.request``. It turns every
way a request can fail without a usable answer (no connection, timeout, reset, truncated
body, throttling, server error) into ``FetchError`` with a one-line reason, so callers never
confuse a failure with an empty answer. Statuses the caller must interpret (200, 401, 404,
...) are returned as an ``Answer``.

Connections are kept open between the background checks (``KEEPALIVE``, longer than the
default resync interval), so a daemon at rest reuses them instead of opening new ones. A
kept connection the server closed while it was idle fails at once with a disconnect or a
reset: that request, and only that one, is sent again on a new connection. aiohttp's own
retry is switched off: it would also resend a request the server held for seconds and then
dropped, which is what every client of a service that comes back from an outage sees at the
same moment. Such a request (slow: ``SLOW_SHARE`` of the timeout or more, answered or not;
or dropped by the server after it took it) makes the client wait a random share of
``RECOVERY_SPREAD`` timeouts before its next request, so clients released together do not
come back together.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import urlsplit

import aiohttp
import structlog

from nicreconciled.errors import FetchError, MetadataError

log = structlog.get_logger(__name__)

DEFAULT_MAX_BODY = 256 * 1024
DEFAULT_CONCURRENCY = 8
#: Requests per second, all NICs together: IMDS allows about 1,024 packets per second per
#: ENI, and a request on a kept connection costs two (the request and the ACK of the answer).
DEFAULT_RATE = 300.0
#: How long an idle connection is kept (aiohttp's default is 15 s): above the default
#: resync_interval at the top of its jitter (72 s), so background checks reuse connections.
KEEPALIVE = 150.0
#: A request that took this share of the timeout or more met a stalled server.
SLOW_SHARE = 0.25
#: After such a request the next one waits a random time up to this many timeouts: the
#: requests a service held for up to one timeout are then spread over more than twice that.
RECOVERY_SPREAD = 2.5
#: What a server that closed a kept connection while it was idle makes the next request on
#: it fail with (before any answer came).
_STALE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    #: The answer's ETag header, where the server sends one (GCE: what a long poll waits on).
    etag: str | None = None


class TransportError(FetchError):
    """No HTTP answer at all: cannot connect, timeout, reset, truncated body.

    Distinguished from an HTTP error status so a caller can try another endpoint: a server
    that answered 503 is reachable, one that refused the connection may not be.
    """


class RequestTimeout(TransportError):
    """No answer within the request timeout."""


class OversizedBody(FetchError):
    """An answer bigger than max_body: not metadata."""


class StatusError(FetchError):
    """The server answered with a status that means "try again later" (429, 5xx)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TokenBucket:
    """Requests per second with a small burst, shared by every caller.

    Waiters are served in arrival order (the lock is held while sleeping for a token), so a
    storm of NICs attaching at once queues up instead of exceeding the rate.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        async with self._lock:
            self._refill()
            while self._tokens < 1.0:
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1.0


def _path(url: str) -> str:
    return urlsplit(url).path or "/"


def _describe(exc: BaseException) -> str:
    """A short, single-line reason for a transport failure."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        reason = os.strerror(error.errno) if error.errno else type(error).__name__
        return f"cannot connect ({reason})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by server"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated or malformed body"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:120] if text else type(exc).__name__


@dataclass
class _Attempt:
    """What one attempt of a request learned on the way (filled by the trace hooks)."""

    reused: bool = False
    answered: bool = False


async def _on_reuse(
    _session: aiohttp.ClientSession,
    context: SimpleNamespace,
    _params: aiohttp.TraceConnectionReuseconnParams,
) -> None:
    attempt = context.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.reused = True


def _stale(exc: BaseException, attempt: _Attempt) -> bool:
    """A kept connection the server had closed: the request never reached an answer."""
    if not attempt.reused or attempt.answered:
        return False
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in _STALE_ERRNOS


class HttpClient:
    """One lazily created aiohttp session; see the module docstring.

    ``timeout`` bounds each request from the moment it is sent to the last body byte (time
    spent queued for the rate limit or a concurrency slot does not count).
    """

    def __init__(
        self,
        *,
        timeout: float = 2.0,
        rate: float = DEFAULT_RATE,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_body: int = DEFAULT_MAX_BODY,
        keepalive: float = KEEPALIVE,
        rng: random.Random | None = None,
    ) -> None:
        if timeout <= 0 or rate <= 0 or concurrency < 1 or max_body < 1 or keepalive <= 0:
            raise ValueError("timeout, rate, concurrency, max_body and keepalive must be positive")
        self.timeout = timeout
        self.max_body = max_body
        self.concurrency = concurrency
        self.keepalive = keepalive
        self.requests_sent = 0
        #: Requests sent again because their kept connection had been closed by the server.
        self.stale_retries = 0
        self._rate = rate
        self._rng = rng if rng is not None else random.Random()
        #: No request is sent before this (monotonic) time: see the module docstring.
        self._hold_until = 0.0
        self._bucket: TokenBucket | None = None
        self._slots: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_polling(cls, request_rate: float, request_timeout: float) -> HttpClient:
        """Build from PollingConfig values (request_rate, request_timeout)."""
        return cls(timeout=request_timeout, rate=request_rate)

    def _ensure(self) -> tuple[aiohttp.ClientSession, TokenBucket, asyncio.Semaphore]:
        # Created here, not in __init__: the session, the semaphore and the bucket's lock
        # must belong to the running loop.
        if (
            self._session is None
            or self._session.closed
            or self._bucket is None
            or self._slots is None
        ):
            self._bucket = TokenBucket(self._rate, self._rate / 10)
            self._slots = asyncio.Semaphore(self.concurrency)
            trace = aiohttp.TraceConfig()
            trace.on_connection_reuseconn.append(_on_reuse)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.concurrency, use_dns_cache=False, keepalive_timeout=self.keepalive
                ),
                # The daemon talks to the configured endpoint only: no proxy from the
                # environment, no netrc, no redirects, no compression games.
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
                headers={"User-Agent": "nicreconciled"},
                trace_configs=[trace],
            )
            if hasattr(self._session, "_retry_connection"):
                # aiohttp >= 3.10 resends any failed idempotent request once, at once; the
                # one case that deserves it is handled in request() (see the docstring).
                self._session._retry_connection = False
        return self._session, self._bucket, self._slots

    async def _hold(self) -> None:
        delay = self._hold_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _took(self, seconds: float, dropped: bool) -> None:
        """After a slow request, or one the server dropped after taking it (what a service
        coming back does with what it held), spread this client's next request."""
        now = time.monotonic()
        if (dropped or seconds >= self.timeout * SLOW_SHARE) and self._hold_until <= now:
            self._hold_until = now + self._rng.uniform(0.0, self.timeout * RECOVERY_SPREAD)

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
    ) -> Answer:
        """One request; its outcome is logged (debug ``metadata_request``: ok, http_error,
        timeout, garbage), which the metrics count.

        TIMEOUT: this request's own bound instead of the client's, for a request the server
        holds on purpose (a long poll, GCE's ``wait_for_change``). Its duration then says
        nothing about a stalled server, so it never spreads the client's next request; a
        long poll the server dropped after taking it still does.
        """
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        try:
            answer = await self._request(method, url, headers, timeout)
        except (MetadataError, OversizedBody):
            outcome = "garbage"  # not UTF-8, too big
            raise
        except RequestTimeout:
            outcome = "timeout"
            raise
        except FetchError:
            outcome = "http_error"  # 429, 5xx, refused, reset
            raise
        except asyncio.CancelledError:
            outcome = ""
            raise
        else:
            outcome = "ok"
            return answer
        finally:
            if outcome:
                log.debug("metadata_request", outcome=outcome, request=f"{method} {_path(url)}")

    async def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        session, bucket, slots = self._ensure()
        await self._hold()
        bound = self.timeout if timeout is None else timeout
        async with slots:
            await bucket.acquire()
            where = f"{method} {_path(url)}"
            started = time.monotonic()
            dropped = False
            try:
                async with asyncio.timeout(bound):
                    self.requests_sent += 1
                    first = _Attempt()
                    try:
                        return await self._send(
                            session, method, url, headers, where, first, timeout
                        )
                    except (aiohttp.ClientError, OSError) as exc:
                        # Only a kept connection that failed before the server could have
                        # been stalled is tried again, once, on a new connection.
                        quick = time.monotonic() - started < self.timeout * SLOW_SHARE
                        if not (quick and _stale(exc, first)):
                            raise
                    self.stale_retries += 1
                    self.requests_sent += 1
                    return await self._send(
                        session, method, url, headers, where, _Attempt(), timeout
                    )
            except (FetchError, MetadataError):
                raise
            except TimeoutError:
                raise RequestTimeout(f"{where}: timeout after {bound:g}s") from None
            except (aiohttp.ClientError, OSError) as exc:
                # A refused connection was never taken: nothing held, nothing to spread.
                dropped = not isinstance(exc, aiohttp.ClientConnectorError)
                raise TransportError(f"{where}: {_describe(exc)}") from None
            finally:
                # A held request's duration is the server's choice, not a stall (docstring).
                self._took(0.0 if timeout is not None else time.monotonic() - started, dropped)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        where: str,
        attempt: _Attempt,
        timeout: float | None = None,
    ) -> Answer:
        async with session.request(
            method,
            url,
            headers=dict(headers or {}),
            allow_redirects=False,
            trace_request_ctx=attempt,
            # The session's total is the client's timeout: a held request needs its own.
            timeout=session.timeout if timeout is None else aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            attempt.answered = True
            status = resp.status
            if status == 429 or status >= 500:
                resp.close()
                raise StatusError(f"{where}: HTTP {status}", status)
            if resp.content_length is not None and resp.content_length > self.max_body:
                resp.close()
                raise OversizedBody(
                    f"{where}: oversized body ({resp.content_length} > {self.max_body} bytes)"
                )
            data = await self._read_limited(resp, where)
            etag = resp.headers.get("ETag")
        if status != 200:
            # Not data: only a hint for logs, so do not be strict about its encoding.
            return Answer(status, data.decode("utf-8", errors="replace"))
        try:
            return Answer(status, data.decode("utf-8"), etag)
        except UnicodeDecodeError:
            raise MetadataError(f"{where}: body is not UTF-8") from None

    async def _read_limited(self, resp: aiohttp.ClientResponse, where: str) -> bytes:
        # Read at most max_body + 1 bytes: one byte more than allowed proves the body is too
        # big without ever holding more than the limit.
        chunks: list[bytes] = []
        size = 0
        while size <= self.max_body:
            chunk = await resp.content.read(self.max_body + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        resp.close()
        raise OversizedBody(f"{where}: oversized body (> {self.max_body} bytes)")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

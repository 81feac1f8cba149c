"""A metadata session token (EC2's IMDSv2, Alibaba's hardened mode): one for every request.

Both services hand out a token for ``PUT /latest/api/token`` with its life in seconds in a
header, want it in another header on every request, and refuse an expired or revoked one
(401; Alibaba also 403). Only the header names, the hints of a refused PUT and the way the
PUT is sent (EC2: through its fallback endpoint) differ; ``sources/ec2.py`` and
``sources/aliyun.py`` have the facts and their sources.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping

from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.sources.http import Answer

#: The token's path under /latest/ (both services).
TOKEN_PATH = "api/token"
#: Renew the token this long before it expires (at half its life for short TTLs).
TOKEN_REFRESH_MARGIN = 60.0
#: A token is sent in an HTTP header: printable ASCII without spaces, bounded.
_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")


class SessionToken:
    """One metadata token shared by every request: fetched once, renewed MARGIN before it
    expires, and dropped when the service refuses it (the next request fetches a new one).
    One PUT in flight at most.

    PUT sends the request with the headers it is given; HINTS explain a refusal by its status;
    ON_OBTAINED is called (under the lock) each time a token is obtained.
    """

    def __init__(
        self,
        put: Callable[[Mapping[str, str]], Awaitable[Answer]],
        ttl_header: str,
        ttl: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        hints: Mapping[int, str],
        on_obtained: Callable[[], object] = lambda: None,
    ) -> None:
        self._put = put
        self._ttl_header = ttl_header
        self.ttl = ttl
        self._margin = min(TOKEN_REFRESH_MARGIN, ttl / 2)
        self._clock = clock
        self._hints = hints
        self._on_obtained = on_obtained
        self._token: str | None = None
        self._expiry = 0.0
        self._lock = asyncio.Lock()
        #: Tokens obtained so far (renewals included).
        self.obtained = 0

    async def get(self) -> str:
        async with self._lock:
            # The life counts from before the PUT: the service's clock started no later.
            now = self._clock()
            if self._token is not None and now < self._expiry - self._margin:
                return self._token
            answer = await self._put({self._ttl_header: str(self.ttl)})
            where = f"PUT /latest/{TOKEN_PATH}"
            if answer.status != 200:
                hint = self._hints.get(answer.status, "")
                raise FetchError(f"{where}: HTTP {answer.status}{hint}")
            token = answer.body.strip()
            if not _TOKEN.fullmatch(token):
                raise MetadataError(f"{where}: malformed token")
            self._token, self._expiry = token, now + self.ttl
            self.obtained += 1
            self._on_obtained()
            return token

    def refused(self, token: str) -> None:
        """The service refused TOKEN: drop it, unless a newer one replaced it already."""
        if self._token == token:
            self._token = None

    def forget(self) -> None:
        self._token = None

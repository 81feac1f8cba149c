"""A source whose one document describes every NIC: the Source protocol's methods, once.

OCI (``opc/v2/vnics/``), GCE (``instance/network-interfaces/``) and Azure
(``metadata/instance/network``) each read one JSON document that lists every NIC. What differs
between them is how that document is requested (OCI: a SharedAnswer; GCE: one the long poll
may hand over; Azure: paced) and how a NIC is read out of it; what they do with it is the
same, and lives here:

* ``detect``: a document of the right shape within ``DETECT_TIMEOUT``; why not, in
  ``detect_error``.
* ``fetch``: the MAC's Observation in a document requested after the poll began (a NIC
  attached a moment ago is not in an older one; NICs polling together share the request).
* ``predict``: the MAC's Observation in a probed document, None when it cannot be told.
* ``probe``: the document's path is the only probe key (every flag waits on the document);
  one document answers every key.

A subclass names its ``PATH``, hands its ``SharedAnswer`` to ``__init__``, and writes
``document(newer_than=...)`` and ``_observe(mac, text)``; its log events are named after its
``name`` (``oci_fetched``, ``azure_not_detected``).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Generic, TypeVar

import structlog

from nicreconciled.errors import MetadataError
from nicreconciled.model import Observation, normalize_mac
from nicreconciled.sources.common import SharedAnswer, parse_json
from nicreconciled.sources.http import HttpClient

_log = structlog.get_logger(__name__)

_T = TypeVar("_T")

#: detect() must stay cheap: on another cloud the link-local address usually times out.
DETECT_TIMEOUT = 1.0


class OneDocumentSource(ABC, Generic[_T]):
    """The Source methods of a cloud that serves every NIC in one document. _T is what its
    SharedAnswer holds (the document's text, or an answer that carries it)."""

    #: Its key in SOURCES; also the prefix of its log events.
    name: ClassVar[str]
    #: The document's path: the probe key of every flag, the only key probe() answers.
    PATH: ClassVar[str]
    ONE_ANSWER: ClassVar[bool] = True
    detect_error: str = "not detected"

    def __init__(
        self,
        http: HttpClient,
        document: SharedAnswer[_T],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._document = document
        self._clock = clock
        self._log = _log.bind(source=self.name)

    @abstractmethod
    async def document(self, *, newer_than: float | None = None) -> str:
        """The document's text, one request shared by every NIC (with NEWER_THAN: one sent at
        or after that time)."""

    @abstractmethod
    def _observe(self, mac: str, text: str) -> Observation:
        """The Observation of MAC (normalized) in the document TEXT; MetadataError (one line,
        naming the field) for garbage anywhere in it."""

    def _check(self, text: str) -> None:
        """What detect() asks of a document: a JSON array (MetadataError if not)."""
        parse_json(self.PATH, text, list)

    async def detect(self) -> bool:
        try:
            async with asyncio.timeout(DETECT_TIMEOUT):
                self._check(await self.document())
        except Exception as exc:
            self.detect_error = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            self._log.debug(f"{self.name}_not_detected", reason=self.detect_error)
            return False
        return True

    async def fetch(self, mac: str) -> Observation:
        mac = normalize_mac(mac)
        # Only an answer to a request sent after this poll began counts (a NIC attached, a
        # change made a moment ago is not in an older one); NICs polling together share it.
        observation = self._observe(mac, await self.document(newer_than=self._clock()))
        self._log.debug(
            f"{self.name}_fetched",
            mac=observation.mac,
            complete=observation.state is not None,
            flags=[f.kind for f in observation.flags],
        )
        return observation

    def predict(self, mac: str, answers: Mapping[str, str | None]) -> Observation | None:
        """MAC's Observation in the probed document (None when it cannot be told)."""
        text = answers.get(self.PATH)
        if text is None:
            return None
        try:
            return self._observe(normalize_mac(mac), text)
        except MetadataError:
            return None

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        for key in keys:
            if key != self.PATH:
                raise ValueError(f"not a metadata probe key: {key[:80]!r}")
        text = await self.document(newer_than=self._clock()) if keys else None
        return dict.fromkeys(keys, text)

    async def close(self) -> None:
        self._document.forget()
        await self._http.close()
